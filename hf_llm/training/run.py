"""The parts of a recipe run that every recipe shares: parsing, the guarded trainers, finishing."""

import dataclasses
import logging
import os
import sys
from pathlib import Path

import transformers
from transformers import Trainer

from .callbacks import LossGuardMixin, perplexity
from .outputs import known_secrets, push_folder, redact, write_json, write_loss_curve, write_model_card
from .setup import RecipeError, mark_run

logger = logging.getLogger("hf_llm")


def parse_recipe_args(dataclass_types, defaults: dict, argv=None):
    """Parse `--config file.yaml` plus flags into the given dataclasses, after applying the recipe's defaults.

    Precedence: flags > YAML > recipe defaults > dataclass defaults. Unknown YAML keys or flags are
    errors that name the key.
    """
    from trl import TrlParser

    parser = TrlParser(dataclass_types)
    parser.set_defaults(**defaults)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as err:
        hint = " Remove or fix the key (see `--help` for the accepted flags)." if "unknown" in str(err).lower() or "remaining" in str(err).lower() else ""
        raise RecipeError(f"{err}{hint}") from None


def setup_logging(training_args):
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, stream=sys.stdout)
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity_warning()


def begin_run(training_args, run_args, recipe: str):
    """What every training recipe does first: logging, the seed (before the model is built, so its
    initialisation is reproducible), the output-folder check (an unfinished run of the same `recipe`
    is resumed), and taking over the Hub push. Returns (checkpoint to resume from or None, push settings)."""
    from transformers import set_seed

    from .setup import prepare_output_dir

    setup_logging(training_args)
    set_seed(training_args.seed)
    resume = prepare_output_dir(
        training_args.output_dir, run_args.overwrite_output_dir, training_args.resume_from_checkpoint, recipe
    )
    return resume, take_push_settings(training_args)


def guarded(trainer_class, *mixins):
    """`trainer_class` with the non-finite-loss guard (and any further `mixins`) mixed in."""
    return type(f"Guarded{trainer_class.__name__}", (LossGuardMixin, *mixins, trainer_class), {})


GuardedTrainer = guarded(Trainer)


def take_push_settings(training_args) -> dict:
    """Take the Hub push out of the Trainer's hands: hf_llm pushes the finished folder once, at the end."""
    push = {
        "push": bool(training_args.push_to_hub),
        "repo_id": training_args.hub_model_id or Path(training_args.output_dir).name,
        "token": training_args.hub_token,
        "private": training_args.hub_private_repo,
    }
    training_args.push_to_hub = False
    training_args.hub_token = None  # never kept in saved arguments or checkpoints
    return push


def hyperparameters(*groups, keys=None) -> dict:
    """Flat dict of the settings that shaped a run, from argument dataclasses (secrets redacted)."""
    out = {}
    for group in groups:
        values = group.to_dict() if hasattr(group, "to_dict") else dataclasses.asdict(group)
        for k, v in values.items():
            if keys is None or k in keys:
                out[k] = v
    return redact(out)


TRAINING_KEYS = {
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2",
    "max_grad_norm", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "seed", "bf16", "fp16", "gradient_checkpointing", "max_length", "completion_only_loss",
}


def finish_run(
    trainer,
    *,
    recipe: str,
    output_dir,
    push: dict,
    metrics: dict,
    card: dict,
    save_model=None,
    trainer_saves: bool = True,
    language_model: bool = True,
):
    """Write metrics.json, loss_curve.png, the model card and mark the run complete; then push.

    For a `language_model` (next-token loss) the eval loss is also reported as perplexity.

    The final weights (model or PEFT adapter) and tokenizer are saved by `trainer.save_model()`,
    which every process must call (FSDP and DeepSpeed gather shards there); `save_model`, if
    given, then runs on the main process only, for what the Trainer does not save (with
    `trainer_saves=False` it saves everything itself). Only the main
    process writes the rest.
    """
    output_dir = Path(output_dir)
    if trainer.args.world_size > 1:
        # Every rank reports a digest of its trained weights: equal digests show the replicas stayed in sync.
        print(f"rank {trainer.args.process_index}: trained-weights sha256 {weights_digest(trainer.model)}", flush=True)
    if trainer_saves:
        trainer.save_model(str(output_dir))
    if not trainer.is_world_process_zero():
        return
    if save_model is not None:
        save_model(output_dir)
    if language_model and "eval_loss" in metrics:
        metrics.setdefault("eval_perplexity", perplexity(metrics["eval_loss"]))
    write_json(metrics, output_dir / "metrics.json")
    write_json({"log_history": trainer.state.log_history}, output_dir / "log_history.json")
    write_loss_curve(trainer.state.log_history, output_dir / "loss_curve.png", title=f"{recipe} loss")
    write_model_card(output_dir, results={k: v for k, v in metrics.items() if isinstance(v, (int, float))}, **card)
    _scrub_secrets(output_dir)
    mark_run(output_dir, recipe, completed=True, metrics=metrics)
    if push["push"]:
        push_folder(output_dir, push["repo_id"], token=push["token"], private=push["private"])
        logger.info("pushed %s to the Hub as %s", output_dir, push["repo_id"])


def weights_digest(model) -> str:
    """sha256 over the trainable parameters (names and values), to compare replicas."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


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
            for s in secrets:
                text = text.replace(s, "<redacted>")
            path.write_text(text)


def main_process_first_env() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def recipe_main(main, dataclass_types, defaults: dict, argv=None) -> int:
    """Parse the recipe's arguments and run `main`; bad input ends with one clear message and exit code 2."""
    from ..data import DataFormatError
    from .callbacks import NonFiniteLossError

    try:
        groups = parse_recipe_args(dataclass_types, defaults, argv)
        main(*groups)
    except (RecipeError, DataFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(3) from None
    return 0
