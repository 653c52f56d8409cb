"""LoRA adapters in the recipes, through PEFT: the config TRL builds from the flags, checked against the model."""

from contextlib import contextmanager

from .errors import RecipeError


def check_targets_exist(model, targets):
    """Every LoRA target must name at least one module, else a clear error listing the Linear ones."""
    from torch import nn

    linear_names = sorted({name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name, _ in model.named_modules())]
    if missing:
        raise RecipeError(
            f"LoRA target module(s) {missing} do not exist in {type(model).__name__}. "
            f"Linear layers it has: {linear_names}. Fix --lora_target_modules."
        )


def peft_config_for(model, model_args, trainable_tokens: list[int] | None = None):
    """TRL's `get_peft_config(model_args)` (None without `--use_peft`), after checking its targets exist in `model`.

    `trainable_tokens` (ids of tokens added for this run, e.g. a chat template's) also trains those rows of
    the token embedding, and so of the tied LM head (PEFT's `trainable_token_indices`)."""
    from trl import get_peft_config

    if not model_args.use_peft:
        return None
    check_targets_exist(model, model_args.lora_target_modules or [])
    config = get_peft_config(model_args)
    if trainable_tokens:
        config.trainable_token_indices = list(trainable_tokens)
    return config


@contextmanager
def adapter_disabled(model):
    """Run the base model: the adapter switched off. Yields whether there was an adapter to switch off."""
    if not hasattr(model, "disable_adapter"):
        yield False
        return
    with model.disable_adapter():
        yield True
