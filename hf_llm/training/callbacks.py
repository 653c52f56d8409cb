"""Trainer callbacks and a loss guard shared by the recipes."""

import json
import math
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback


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
            last = _last_checkpoint(self.args.output_dir)
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
    (5 pairs at batch 4 scored 2/4 and 1/1 give 0.75, not 0.6). Here pairs are counted, gathered
    across processes without the copies that pad the last evaluation batch. TRL also names these
    metrics `eval_*` whatever the evaluation's `metric_key_prefix`; here they take its prefix
    (`evaluate(metric_key_prefix="eval_initial")` gives `eval_initial_accuracy`).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        with torch.no_grad():
            chosen, rejected = torch.chunk(outputs.logits.detach().float().squeeze(-1), chunks=2)
            margins = self.accelerator.gather_for_metrics(chosen - rejected).cpu()
        mode = "train" if model.training else "eval"
        totals = self.__dict__.setdefault("_pair_totals", {}).setdefault(mode, [0, 0, 0.0])
        totals[0] += int((margins > 0).sum())
        totals[1] += margins.numel()
        totals[2] += float(margins.sum())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, start_time=None):
        mode = "train" if self.model.training else "eval"
        totals = self.__dict__.get("_pair_totals", {}).pop(mode, None)
        if totals is not None and totals[1] > 0:
            self._metrics[mode]["accuracy"] = [totals[0] / totals[1]]
            self._metrics[mode]["margin"] = [totals[2] / totals[1]]
        prefix = next((key.removesuffix("_loss") for key in logs if key.endswith("_loss")), "eval")
        if mode == "eval" and prefix != "eval":
            logs.update({f"{prefix}_{key}": sum(values) / len(values) for key, values in self._metrics[mode].items() if values})
            self._metrics[mode].clear()
            return Trainer.log(self, logs, start_time)  # TRL's log would add them again as eval_*
        return super().log(logs, start_time)


def _last_checkpoint(output_dir) -> str | None:
    folders = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    return str(folders[-1]) if folders else None


class SampleGenerationCallback(TrainerCallback):
    """Generate from fixed prompts at each evaluation, print the samples and append them to samples.jsonl."""

    def __init__(self, tokenizer, prompts: list[str], max_new_tokens: int = 64, do_sample: bool = False):
        from .setup import RecipeError

        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        for prompt in self.prompts:  # fail now, not at the first evaluation mid-run
            try:
                tokenizer(prompt)
            except ValueError as err:
                raise RecipeError(f"--sample_prompts {prompt!r} cannot be tokenized: {err} Pass prompts written with the corpus's characters.") from None
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample

    def samples(self, model) -> list[dict]:
        was_training = model.training
        model.eval()
        out = []
        device = next(model.parameters()).device
        limit = getattr(model.config, "n_positions", None)
        for prompt in self.prompts:
            ids = self.tokenizer(prompt, return_tensors="pt").input_ids.to(device)
            new_tokens = self.max_new_tokens if limit is None else max(0, min(self.max_new_tokens, limit - ids.shape[1]))
            with torch.no_grad():
                generated = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=new_tokens,
                    do_sample=self.do_sample,
                    pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id,
                )
            out.append({"prompt": prompt, "completion": self.tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)})
        if was_training:
            model.train()
        return out

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if model is None or not state.is_world_process_zero or not self.prompts:
            return
        samples = self.samples(model)
        with open(Path(args.output_dir) / "samples.jsonl", "a") as handle:
            for sample in samples:
                handle.write(json.dumps({"step": state.global_step, **sample}) + "\n")
                print(f"\n[step {state.global_step}] {sample['prompt']!r} -> {sample['completion']!r}")


def perplexity(loss: float | None) -> float | None:
    """exp(loss), capped to stay finite in JSON."""
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 50.0))
