"""Adapters in the recipes: the same LoRA settings through PEFT or through hf_llm.lora."""

from contextlib import contextmanager, nullcontext

from .setup import RecipeError


def check_targets_exist(model, targets):
    """Every LoRA target must name at least one Linear module, else a clear error listing the real ones."""
    from torch import nn

    linear_names = sorted({name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name, _ in model.named_modules())]
    if missing:
        raise RecipeError(
            f"LoRA target module(s) {missing} do not exist in {type(model).__name__}. "
            f"Linear layers it has: {linear_names}. Fix --lora_target_modules."
        )


def apply_lora(model, lora_args, task_type: str):
    """Returns (model, peft_config): with the PEFT backend the trainer wraps the model itself
    (peft_config set); with hf_llm.lora the adapter is injected here (peft_config None)."""
    if not lora_args.use_lora:
        return model, None
    check_targets_exist(model, lora_args.lora_target_modules)
    if lora_args.lora_backend == "peft":
        from peft import LoraConfig

        return model, LoraConfig(
            r=lora_args.lora_r,
            lora_alpha=lora_args.lora_alpha,
            lora_dropout=lora_args.lora_dropout,
            target_modules=list(lora_args.lora_target_modules),
            modules_to_save=lora_args.lora_modules_to_save,
            task_type=task_type,
        )
    if lora_args.lora_backend == "hf_llm":
        from .. import lora

        lora.inject_lora(
            model,
            target_modules=list(lora_args.lora_target_modules),
            r=lora_args.lora_r,
            alpha=lora_args.lora_alpha,
            dropout=lora_args.lora_dropout,
            modules_to_save=lora_args.lora_modules_to_save,
        )
        return model, None
    raise RecipeError(f"--lora_backend must be 'peft' or 'hf_llm', got {lora_args.lora_backend!r}.")


@contextmanager
def adapter_disabled(model, lora_args):
    """Run the base model: the adapter switched off (PEFT or hf_llm.lora)."""
    if not lora_args.use_lora:
        with nullcontext():
            yield False
        return
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield True
        return
    from .. import lora

    with lora.disable_adapters(model):
        yield True


def save_extra(model, tokenizer, output_dir, lora_args, merge: bool, task_type: str = "CAUSAL_LM"):
    """Main process, after trainer.save_model: hf_llm.lora adapters (with any modules to save) in
    PEFT's format, and the merged model."""
    from pathlib import Path

    output_dir = Path(output_dir)
    if lora_args.use_lora and lora_args.lora_backend == "hf_llm":
        from .. import lora

        lora.save_adapter(model, output_dir, task_type=task_type)
        tokenizer.save_pretrained(output_dir)
    if merge and lora_args.use_lora:
        import copy

        merged = copy.deepcopy(model)
        if hasattr(merged, "merge_and_unload"):
            merged = merged.merge_and_unload()
        else:
            from .. import lora

            merged = lora.merge_and_unload_lora(merged)
        merged.save_pretrained(output_dir / "merged")
        tokenizer.save_pretrained(output_dir / "merged")
