"""Loading models and tokenizers for the recipes, and guarding the output folder."""

import json
import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from ..models.gpt import GPT2_PRESETS, GPTConfig, GPTForCausalLM, GPTForSequenceClassification

logger = logging.getLogger("hf_llm")

RUN_FILE = "hf_llm_run.json"  # written at the start of a run, marked complete at its end
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class RecipeError(ValueError):
    """A recipe was given arguments or inputs it cannot run with; the message says what to change."""


# --- output folder ------------------------------------------------------------------------------


def prepare_output_dir(output_dir, overwrite: bool, resume_from_checkpoint: str | None, recipe: str | None = None) -> str | None:
    """Decide what to do with `output_dir` before anything is written; returns the checkpoint to resume.

    - missing or empty: a new run;
    - holding checkpoints of an unfinished run of the same `recipe`: resume from the last one (as
      transformers' examples do);
    - holding a finished run, another recipe's run or other files: refused, unless `overwrite` (then
      it is emptied).
    Nothing is created here: the folder appears only when training starts.
    """
    path = Path(output_dir)
    if resume_from_checkpoint:
        if not Path(resume_from_checkpoint).is_dir():
            raise RecipeError(f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint folder.")
        return str(resume_from_checkpoint)
    if not path.exists() or not any(path.iterdir()):
        return None
    if overwrite:
        logger.warning("--overwrite_output_dir: removing the previous contents of %s", path)
        shutil.rmtree(path)
        return None
    run = _read_run_file(path)
    checkpoints = sorted(
        (p for p in path.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and _checkpoint_complete(p)),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    other_recipe = run is not None and recipe is not None and run.get("recipe") not in (None, recipe)
    if checkpoints and run is not None and not run.get("completed") and not other_recipe:
        logger.warning("Resuming the unfinished run in %s from %s", path, checkpoints[-1])
        return str(checkpoints[-1])
    if other_recipe:
        state = "a finished" if run.get("completed") else "an unfinished"
        what = f"{state} run of the {run['recipe']} recipe (this is {recipe})"
    else:
        what = "a finished run" if run and run.get("completed") else "files of another run"
    raise RecipeError(
        f"output_dir {path} already holds {what}. Choose a new --output_dir, pass --overwrite_output_dir to "
        f"replace it, or --resume_from_checkpoint to continue from one of its checkpoints."
    )


def _checkpoint_complete(folder: Path) -> bool:
    # Trainer writes trainer_state.json last: a checkpoint killed mid-write lacks it and is skipped.
    return (folder / "trainer_state.json").is_file()


def _read_run_file(path: Path) -> dict | None:
    try:
        return json.loads((path / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def mark_run(output_dir, recipe: str, completed: bool, **extra):
    """Record in output_dir which recipe owns it and whether it finished."""
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    data = {**(_read_run_file(path) or {}), "recipe": recipe, "completed": completed, **extra}
    (path / RUN_FILE).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# --- checkpoints --------------------------------------------------------------------------------


def check_weights_are_safe(name_or_path: str, allow_pickle: bool) -> bool:
    """Refuse pickle weights unless allowed; returns whether safetensors are required (use_safetensors)."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        return not allow_pickle  # a Hub name: transformers resolves files; insist on safetensors by default
    has_safetensors = any(folder.glob("*.safetensors"))
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.name != "training_args.bin")
    if pickles and not has_safetensors and not allow_pickle:
        raise RecipeError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}). Loading a pickle can run arbitrary code, so "
            f"hf_llm reads safetensors only. If you trust the file, pass --allow_pickle_checkpoints (it is then read "
            f"with torch.load(weights_only=True)), or convert it to safetensors."
        )
    return not allow_pickle or has_safetensors


# --- models -------------------------------------------------------------------------------------


def is_preset(name: str | None) -> bool:
    """'scratch' or a size preset (gpt2-124m, ...). The Hub's names ('gpt2', 'gpt2-medium') mean its trained weights."""
    return name is not None and (name == "scratch" or name in GPT2_PRESETS) and not Path(name).exists()


# The sizes of 'scratch' (the embedded default base model), where no flag sets them.
SCRATCH_SIZES = dict(n_layer=4, n_embd=128, n_head=4, n_positions=256, dropout=0.0)


def scratch_config(model_args, vocab_size: int, bos_eos_id: int | None) -> GPTConfig:
    """A GPTConfig for training from scratch: a preset or 'scratch', overridden by the size flags."""
    is_scratch = model_args.model_name_or_path == "scratch"
    sizes = {}
    for name in ("n_layer", "n_embd", "n_head", "n_positions"):
        value = getattr(model_args, name)
        if value is None and is_scratch:
            value = SCRATCH_SIZES[name]
        if value is not None:
            sizes[name] = value
    dropout = model_args.dropout if model_args.dropout is not None or not is_scratch else SCRATCH_SIZES["dropout"]
    if dropout is not None:
        sizes.update(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    special = {"bos_token_id": bos_eos_id, "eos_token_id": bos_eos_id}
    common = dict(vocab_size=vocab_size, tie_word_embeddings=model_args.tie_word_embeddings, **special, **sizes)
    try:
        if model_args.model_name_or_path == "scratch":
            return GPTConfig(**common)
        return GPTConfig.from_preset(model_args.model_name_or_path, **common)
    except ValueError as err:
        raise RecipeError(f"{err} (set by --n_layer/--n_embd/--n_head/--n_positions)") from None


def reset_to_pytorch_init(model: nn.Module) -> nn.Module:
    """Re-initialise with PyTorch's own layer defaults (Linear: Kaiming-uniform; Embedding: N(0, 1);
    LayerNorm: ones/zeros), as the from-scratch book's GPTModel is initialised."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
            module.reset_parameters()
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


def load_model(model_args, task: str = "causal-lm", tokenizer=None, num_labels: int = 1, trust_remote_code: bool = False) -> nn.Module:
    """The model a recipe trains: from a checkpoint (ours or stock GPT-2), or new from a preset.

    `task` is "causal-lm" or "sequence-classification" (a `score` head on the last non-padding token).
    """
    cls = GPTForCausalLM if task == "causal-lm" else GPTForSequenceClassification
    name = model_args.model_name_or_path
    pad_id = None if tokenizer is None else tokenizer.pad_token_id
    if is_preset(name):
        if tokenizer is None:
            raise RecipeError("Training from scratch needs a tokenizer: pass --tokenizer_name_or_path.")
        config = scratch_config(model_args, vocab_size=len(tokenizer), bos_eos_id=tokenizer.eos_token_id)
        if task != "causal-lm":
            config.num_labels, config.pad_token_id = num_labels, pad_id
        if model_args.attn_implementation:
            config._attn_implementation = model_args.attn_implementation
        model = cls(config)
        if model_args.init_scheme == "pytorch":
            reset_to_pytorch_init(model)
        elif model_args.init_scheme != "gpt2":
            raise RecipeError(f"--init_scheme must be 'gpt2' or 'pytorch', got {model_args.init_scheme!r}.")
        return model

    use_safetensors = check_weights_are_safe(name, model_args.allow_pickle_checkpoints)
    kwargs = dict(trust_remote_code=trust_remote_code, use_safetensors=use_safetensors or None)
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.dtype:
        kwargs["dtype"] = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    if task != "causal-lm":
        kwargs.update(num_labels=num_labels, pad_token_id=pad_id)
    model = from_pretrained_or_refuse(cls, name, **kwargs)
    if task != "causal-lm" and pad_id is not None:
        model.config.pad_token_id = pad_id
    return model


def refuse_missing_folder(name_or_path: str, flag: str) -> None:
    """A name that can only be a local path (not a Hub name, owner/name) must exist."""
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if looks_local and not Path(name_or_path).expanduser().exists():
        raise RecipeError(f"{flag} {name_or_path}: no such folder. Check the path (a Hub name has the form owner/name).")


def from_pretrained_or_refuse(cls, name_or_path: str, **kwargs):
    """`cls.from_pretrained`, with a missing folder or an unknown Hub name refused as a RecipeError."""
    refuse_missing_folder(name_or_path, "--model_name_or_path")
    try:
        return cls.from_pretrained(name_or_path, **kwargs)
    except OSError as err:  # transformers' message says what it looked for and where
        raise RecipeError(f"--model_name_or_path {name_or_path}: {err}") from None


def check_vocab_agreement(model, tokenizer):
    """Every id the tokenizer can produce must have an embedding row."""
    if len(tokenizer) > model.config.vocab_size:
        raise RecipeError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}: "
            f"ids >= {model.config.vocab_size} would have no embedding. Use the model's own tokenizer, or call "
            f"model.resize_token_embeddings(len(tokenizer)) (for a from-scratch run, build the model from this tokenizer)."
        )


def resolve_tokenizer(model_args, texts=None, bpe_vocab_size: int = 4096):
    """The run's tokenizer: loaded (--tokenizer_name_or_path, else the model's own), or built on `texts`
    ('char': character-level; 'bpe': byte-level BPE of `bpe_vocab_size` tokens). Padding uses end-of-text."""
    from ..tokenizers import build_char_tokenizer, load_tokenizer, train_bpe_tokenizer

    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if name in ("char", "bpe"):
        if texts is None:
            raise RecipeError(f"--tokenizer_name_or_path {name} builds a tokenizer from the training texts; this recipe has none.")
        tokenizer = build_char_tokenizer(texts) if name == "char" else train_bpe_tokenizer(texts, vocab_size=bpe_vocab_size)
    elif is_preset(name) or name is None:
        raise RecipeError(
            "A model trained from scratch needs a tokenizer: pass --tokenizer_name_or_path with a tokenizer folder or "
            "Hub name, or 'char' / 'bpe' to build one from the training texts."
        )
    else:
        flag = "--tokenizer_name_or_path" if model_args.tokenizer_name_or_path else "--model_name_or_path"
        refuse_missing_folder(name, flag)
        try:
            tokenizer = load_tokenizer(name)
        except OSError as err:  # not found locally or on the Hub: transformers' message says where it looked
            if isinstance(err, FileNotFoundError):
                raise
            raise RecipeError(f"{flag} {name}: {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
