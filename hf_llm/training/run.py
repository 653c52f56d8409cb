"""`RecipeRun`, which owns everything around a recipe's training: output folder, resume, run record,
metrics and state, loss plot, model card, the one push, and the closing summary."""

import copy
import logging
import sys
import time
from pathlib import Path

import transformers
from transformers import TrainerCallback

from .callbacks import perplexity
from .errors import RecipeError
from .evaluation import dataset_name, recipe_data_kind, run_settings
from .hub_checks import check_push_possible
from .output_dir import mark_run, prepare_output_dir
from .loading import is_adapter_folder
from .outputs import bundle_merged_start, bundle_packaged_base, how_to_load, known_secrets, push_folder, redact, write_loss_curve, write_model_card

logger = logging.getLogger("hf_llm")

# The TrainingArguments a model card lists (with the recipe's own groups).
TRAINING_KEYS = (
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2",
    "max_grad_norm", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "seed", "bf16", "fp16", "gradient_checkpointing", "max_length", "completion_only_loss",
)
LORA_KEYS = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save")


class RecipeRun(TrainerCallback):
    """Everything around one training run, so a recipe reads "load data, tokenizer, model; train; finish".

    Created first, it sets up logging and the seed (before the model is built, so its initialisation
    is reproducible), decides whether `output_dir` may be used (new, resumed, or refused: nothing is
    written yet) and takes the Hub push out of the Trainer's hands. As the trainer's callback it marks
    the run unfinished when training begins. `finish` saves the result and everything around it, marks
    the run complete and pushes once.
    """

    def __init__(self, recipe: str, training_args, run_args, data_args):
        from transformers import set_seed

        self.recipe = recipe
        self.run_args = run_args
        self.data_args = data_args  # named on the card, and recorded so that recipes/evaluate.py rebuilds the held-out split
        self.started = time.monotonic()
        _setup_logging(training_args)
        set_seed(training_args.seed)
        # The main process decides first (and with --overwrite_output_dir empties the folder); the others then
        # find what it left, instead of removing the same files at the same time.
        with training_args.main_process_first(local=False, desc="output folder"):
            self.resume_from = prepare_output_dir(
                training_args.output_dir, run_args.overwrite_output_dir, training_args.resume_from_checkpoint, recipe
            )
        self.push = {
            "push": bool(training_args.push_to_hub),
            "repo_id": training_args.hub_model_id or Path(training_args.output_dir).name,
            "token": training_args.hub_token,
            "private": training_args.hub_private_repo,
        }
        training_args.push_to_hub = False
        training_args.hub_token = None  # never kept in saved arguments or checkpoints
        if self.push["push"]:
            check_push_possible(self.push["token"])

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            mark_run(args.output_dir, self.recipe, completed=False)

    def train(self, trainer) -> dict:
        """Train (resuming where the output folder says to); returns the training metrics."""
        trainer.add_callback(self)
        return trainer.train(resume_from_checkpoint=self.resume_from).metrics

    @staticmethod
    def before_training(trainer, names) -> dict:
        """The held-out figures `names` (without their eval_ prefix) of the evaluation at step 0, as
        eval_initial_<name>: what `--eval_on_start` measured before the first update (kept in the trainer's
        log history, so a resumed run still has them).

        Evaluated inside `train`, not by a `trainer.evaluate()` before it: that call marks the model as
        prepared by accelerate, which then leaves it unwrapped by DDP for training, and each process would
        train on its own batches without their gradients being averaged."""
        start = next((entry for entry in trainer.state.log_history if entry.get("step") == 0 and
                      any(key.startswith("eval_") for key in entry)), {})
        return {f"eval_initial_{name}": start[f"eval_{name}"] for name in names if f"eval_{name}" in start}

    def finish(self, trainer, metrics: dict, *, task: str, title: str, summary: str, base_model: str | None,
               tags: list[str], hyperparameters: dict | None = None, headline: dict[str, str | None] | None = None,
               try_it: str | None = None, lm_loss: bool = True, evaluation: dict | None = None):
        """Save the trained model or adapter (every process: FSDP and DeepSpeed gather shards there), then
        on the main process: the merged model (`--merge_adapter`), metrics and trainer state, the loss
        plot, the model card; mark the run complete; push once; print the run's summary.

        `task` is "causal_lm" (the eval loss is also reported as perplexity, if `lm_loss`: it is the
        next-token loss) or "reward". `headline` maps
        the summary's held-out figures to the metric holding their value before training (or None);
        `try_it` is the command that tries the result. The run record keeps what recipes/evaluate.py needs to
        rebuild the held-out figures: the data flags, the seed, and `evaluation`, the settings (named as
        evaluate.py's flags) the recipe's figures used.
        """
        output_dir = Path(trainer.args.output_dir)
        trainer.save_model(str(output_dir))
        if not trainer.is_world_process_zero():
            return
        is_adapter = hasattr(trainer.model, "peft_config")
        merged = is_adapter and self.run_args.merge_adapter
        if merged:
            _save_merged(trainer.model, trainer.processing_class, output_dir / "merged")
        if is_adapter and bundle_packaged_base(output_dir, base_model) is None and is_adapter_folder(base_model or ""):
            bundle_merged_start(output_dir, _unwrapped_start(trainer.model))
        if task == "causal_lm" and lm_loss and "eval_loss" in metrics:
            metrics.setdefault("eval_perplexity", perplexity(metrics["eval_loss"]))
        trainer.save_metrics("all", metrics, combined=False)
        trainer.save_state()
        if self.run_args.plot_loss:
            write_loss_curve(trainer.state.log_history, output_dir / "loss_curve.png", title=f"{self.recipe} loss")
        write_model_card(
            output_dir,
            title=title,
            summary=summary,
            base_model=base_model,
            datasets=[dataset_name(self.data_args, recipe_data_kind(self.recipe))],
            hyperparameters={**_pick(trainer.args.to_dict(), TRAINING_KEYS), **(hyperparameters or {})},
            results={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            tags=tags,
            task=task,
            is_adapter=is_adapter,
            how_to_load=how_to_load(output_dir, base_model, task=task, is_adapter=is_adapter, merged=merged,
                                    pushed_as=self.push["repo_id"] if self.push["push"] else None),
            model_name=self.push["repo_id"],
        )
        _scrub_secrets(output_dir)
        # The figures and their before-values, as the summary shows them: what the stage table of a pipeline reads.
        mark_run(output_dir, self.recipe, completed=True, headline=headline or {}, seconds=round(time.monotonic() - self.started),
                 evaluation=run_settings(self.data_args, trainer.args.seed, **(evaluation or {})))
        push_error = self._push(output_dir) if self.push["push"] else None
        print(self.summary(output_dir, metrics, headline or {}, try_it), flush=True)
        if push_error:
            raise RecipeError(push_error)

    def _push(self, output_dir: Path) -> str | None:
        """Upload the finished folder once; a failure is recorded in the run file and returned as a message
        (the local output is complete either way)."""
        repo_id = self.push["repo_id"]
        try:
            push_folder(output_dir, repo_id, token=self.push["token"], private=self.push["private"])
        except Exception as err:  # noqa: BLE001 - any failure of the upload ends the same way
            reason = redact_text(f"{type(err).__name__}: {err}", self.push["token"])
            mark_run(output_dir, self.recipe, completed=True, pushed=False, push_error=reason)
            return (f"the run finished and {output_dir} is complete, but pushing it to the Hub as {repo_id} failed "
                    f"({reason}). Push it later with `hf upload {repo_id} {output_dir}`.")
        mark_run(output_dir, self.recipe, completed=True, pushed=True)
        logger.info("pushed %s to the Hub as %s", output_dir, repo_id)
        return None

    def summary(self, output_dir: Path, metrics: dict, headline: dict[str, str | None], try_it: str | None) -> str:
        """The lines a finished run ends with: where the result is, its held-out figures (with their value
        before training), how long it took, and how to try it."""
        minutes, seconds = divmod(round(time.monotonic() - self.started), 60)
        lines = [f"== {self.recipe} finished in {minutes} min {seconds:02d} s ==", f"output:   {output_dir.resolve()}"]
        for name, before in headline.items():
            if isinstance(metrics.get(name), (int, float)):
                was = f" (before training: {metrics[before]:.4f})" if before and isinstance(metrics.get(before), (int, float)) else ""
                lines.append(f"held-out: {name} {metrics[name]:.4f}{was}")
        card = output_dir.resolve() / "README.md"
        lines.append(f"try it:   {try_it or f'the How to load section of {card}'}")
        return "\n".join(lines)


def lora_hyperparameters(model_args) -> dict:
    """The LoRA settings of a run, for its model card (none when it trained every weight)."""
    return _pick(vars(model_args), LORA_KEYS) if model_args.use_peft else {"use_peft": False}


def _pick(values: dict, keys) -> dict:
    return redact({k: values[k] for k in keys if k in values})


def _unwrapped_start(peft_model):
    """The model a PEFT adapter was added to, without the adapter: a copy with the LoRA layers taken out."""
    return copy.deepcopy(peft_model).unload()


def _save_merged(model, tokenizer, folder: Path):
    """The base model with the adapter merged in, next to the adapter (the adapter itself stays as trained)."""
    import copy

    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _setup_logging(training_args):
    # Only the main process logs below errors: the others would repeat each line.
    level = logging.INFO if training_args.should_log else logging.ERROR
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, stream=sys.stdout)
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(logging.WARNING if training_args.should_log else logging.ERROR)


def redact_text(text: str, *secrets: str | None) -> str:
    """`text` with every secret from the environment, and the given `secrets`, replaced."""
    for secret in [*known_secrets(), *filter(None, secrets)]:
        text = text.replace(secret, "<redacted>")
    return text


def _scrub_secrets(output_dir: Path):
    """Last line of defence: no text file of the output may contain a secret from the environment."""
    secrets = known_secrets()
    if not secrets:
        return
    for path in output_dir.rglob("*"):
        if not path.is_file() or path.suffix not in {".json", ".md", ".txt", ".yaml", ".yml", ".jsonl", ".py"}:
            continue
        text = path.read_text(errors="ignore")
        if any(s in text for s in secrets):
            path.write_text(redact_text(text))
