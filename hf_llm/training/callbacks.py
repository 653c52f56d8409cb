"""What the recipes add to the Trainer: the non-finite-loss guard, exact pair metrics for reward models, samples at each evaluation."""

import json
import math
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from .errors import RecipeError
from .evaluation import load_metric
from .generation import greedy_continuation
from .output_dir import last_complete_checkpoint


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; raised before the optimizer step, so no weight is touched."""


class LossGuardMixin:
    """Mix into a Trainer class: stop at the first non-finite loss, naming the step.

    The check runs before `backward` and the optimizer step, so the weights, and every checkpoint
    already written, stay as they were.
    """

    def compute_loss(self, model, inputs, *args, **kwargs):
        result = super().compute_loss(model, inputs, *args, **kwargs)
        loss = result[0] if isinstance(result, tuple) else result
        if model.training and not torch.isfinite(loss.detach()).all():
            step = self.state.global_step + 1
            last = last_complete_checkpoint(self.args.output_dir)
            raise NonFiniteLossError(
                f"Non-finite loss ({loss.detach().float().mean().item()}) at training step {step}. Training stopped "
                f"before updating the weights; "
                + (f"the last good checkpoint is {last}. " if last else "no checkpoint was written yet. ")
                + "Lower the learning rate, enable gradient clipping (--max_grad_norm 1.0), or check the data."
            )
        return result


class ExactPairMetricsMixin:
    """Mix into TRL's RewardTrainer: log accuracy and margin over all pairs since the last log.

    TRL logs the mean of its per-batch values, so a short last batch weighs as much as a full one
    (5 pairs at batch 4 scored 2/4 and 1/1 give 0.75, not 0.6). Here the pairs' scores are kept,
    gathered across processes without the copies that pad the last evaluation batch, and go through
    the `pairwise_accuracy` metric, as `hf_llm.training.evaluation.pairwise_accuracy` does (ties count
    as wrong). TRL also names these metrics `eval_*` whatever the evaluation's `metric_key_prefix`;
    here they take its prefix (`evaluate(metric_key_prefix="eval_initial")` gives `eval_initial_accuracy`).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        with torch.no_grad():
            chosen, rejected = torch.chunk(outputs.logits.detach().float().squeeze(-1), chunks=2)
            pairs = self.accelerator.gather_for_metrics(torch.stack([chosen, rejected], dim=-1)).cpu().double()
        mode = "train" if model.training else "eval"
        self.__dict__.setdefault("_pair_scores", {}).setdefault(mode, []).extend(pairs.tolist())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, start_time=None):
        mode = "train" if self.model.training else "eval"
        pairs = self.__dict__.get("_pair_scores", {}).pop(mode, None)
        if pairs:
            chosen, rejected = zip(*pairs)
            figures = load_metric("pairwise_accuracy").compute(chosen_scores=chosen, rejected_scores=rejected)
            self._metrics[mode]["accuracy"] = [figures["accuracy"]]
            self._metrics[mode]["margin"] = [figures["margin"]]
        prefix = next((key.removesuffix("_loss") for key in logs if key.endswith("_loss")), "eval")
        if mode == "eval" and prefix != "eval":
            logs.update({f"{prefix}_{key}": sum(values) / len(values) for key, values in self._metrics[mode].items() if values})
            self._metrics[mode].clear()
            return Trainer.log(self, logs, start_time)  # TRL's log would add them again as eval_*
        return super().log(logs, start_time)


class SampleGenerationCallback(TrainerCallback):
    """Continue fixed prompts greedily at each evaluation; print the samples and append them to samples.jsonl."""

    def __init__(self, tokenizer, prompts: list[str], max_new_tokens: int = 64):
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        for prompt in self.prompts:  # fail now, not at the first evaluation mid-run
            try:
                tokenizer(prompt)
            except ValueError as err:
                raise RecipeError(f"--sample_prompts {prompt!r} cannot be tokenized: {err} Pass prompts written with the corpus's characters.") from None
        self.max_new_tokens = max_new_tokens

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if model is None or not self.prompts:
            return
        # Every process generates (a sharded model's forward needs all of them), the main one writes.
        was_training = model.training
        model.eval()
        samples = [(prompt, greedy_continuation(model, self.tokenizer, prompt, self.max_new_tokens)) for prompt in self.prompts]
        model.train(was_training)
        if not state.is_world_process_zero:
            return
        with open(Path(args.output_dir) / "samples.jsonl", "a") as handle:
            for prompt, completion in samples:
                handle.write(json.dumps({"step": state.global_step, "prompt": prompt, "completion": completion}) + "\n")
                print(f"\n[step {state.global_step}] {prompt!r} -> {completion!r}")


def guarded(trainer_class, *mixins):
    """`trainer_class` with the non-finite-loss guard (and any further `mixins`) mixed in."""
    return type(f"Guarded{trainer_class.__name__}", (LossGuardMixin, *mixins, trainer_class), {})


def perplexity(loss: float | None) -> float | None:
    """exp(loss), capped to stay finite in JSON."""
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 50.0))
