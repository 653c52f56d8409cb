"""Loading the model and tokenizer a recipe runs on: checkpoints (ours or stock GPT-2, safetensors
unless pickles are allowed), or a new model from a preset; and the checks that they fit together."""

import copy
import json
import logging
from pathlib import Path

import torch
from torch import nn
from trl import get_quantization_config

from ..folders import looks_like_local_path
from ..models.gpt import GPT2_PRESETS, GPTConfig, GPTForCausalLM, GPTForSequenceClassification
from .errors import RecipeError
from .hub_checks import check_hub_name

logger = logging.getLogger("hf_llm")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


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


def is_preset(name: str | None) -> bool:
    """'scratch' or a size preset (gpt2-124m, ...). The Hub's names ('gpt2', 'gpt2-medium') mean its trained weights."""
    return name is not None and (name == "scratch" or name in GPT2_PRESETS) and not Path(name).exists()


# The sizes of 'scratch' (the embedded default base model), where no flag sets them.
SCRATCH_SIZES = dict(n_layer=4, n_embd=128, n_head=4, n_positions=256, dropout=0.0)


def scratch_config(model_args, architecture, vocab_size: int, bos_eos_id: int | None) -> GPTConfig:
    """A GPTConfig for training from scratch: a preset or 'scratch', overridden by the size flags."""
    is_scratch = model_args.model_name_or_path == "scratch"
    sizes = {}
    for name in ("n_layer", "n_embd", "n_head", "n_positions"):
        value = getattr(architecture, name)
        if value is None and is_scratch:
            value = SCRATCH_SIZES[name]
        if value is not None:
            sizes[name] = value
    dropout = architecture.dropout if architecture.dropout is not None or not is_scratch else SCRATCH_SIZES["dropout"]
    if dropout is not None:
        sizes.update(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    special = {"bos_token_id": bos_eos_id, "eos_token_id": bos_eos_id}
    common = dict(vocab_size=vocab_size, tie_word_embeddings=architecture.tie_word_embeddings, **special, **sizes)
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


def load_model(
    model_args, task: str = "causal-lm", tokenizer=None, num_labels: int = 1, trust_remote_code: bool = False,
    architecture=None,
) -> nn.Module:
    """The model a recipe trains: from a checkpoint (ours or stock GPT-2), or new from a preset.

    `task` is "causal-lm" or "sequence-classification" (a `score` head on the last non-padding token).
    `architecture` (an `ArchitectureArguments`) sizes a model trained from scratch.
    """
    cls = GPTForCausalLM if task == "causal-lm" else GPTForSequenceClassification
    name = model_args.model_name_or_path
    pad_id = None if tokenizer is None else tokenizer.pad_token_id
    if is_preset(name):
        if tokenizer is None:
            raise RecipeError("Training from scratch needs a tokenizer: pass --tokenizer_name_or_path.")
        if architecture is None:
            from .arguments import ArchitectureArguments

            architecture = ArchitectureArguments()
        config = scratch_config(model_args, architecture, vocab_size=len(tokenizer), bos_eos_id=tokenizer.eos_token_id)
        if task != "causal-lm":
            config.num_labels, config.pad_token_id = num_labels, pad_id
        if model_args.attn_implementation:
            config._attn_implementation = model_args.attn_implementation
        model = cls(config)
        _use_tokenizer_special_tokens(model, tokenizer)
        if architecture.init_scheme == "pytorch":
            reset_to_pytorch_init(model)
        elif architecture.init_scheme != "gpt2":
            raise RecipeError(f"--init_scheme must be 'gpt2' or 'pytorch', got {architecture.init_scheme!r}.")
        return model

    if is_adapter_folder(name):
        return _load_merged_adapter(model_args, task, tokenizer, num_labels, trust_remote_code)
    use_safetensors = check_weights_are_safe(name, model_args.allow_pickle_checkpoints)
    kwargs = dict(trust_remote_code=trust_remote_code, use_safetensors=use_safetensors or None, revision=model_args.model_revision)
    quantization = get_quantization_config(model_args)  # --load_in_4bit / --load_in_8bit, as TRL's scripts
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.dtype:
        kwargs["dtype"] = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    if task != "causal-lm":
        kwargs.update(num_labels=num_labels, pad_token_id=pad_id)
    if task == "causal-lm":
        model = from_pretrained_or_refuse(cls, name, **kwargs)
    else:
        model = _load_classifier(cls, name, kwargs)
    if tokenizer is not None:
        _use_tokenizer_special_tokens(model, tokenizer)
    return model


def is_adapter_folder(name_or_path: str) -> bool:
    """A local folder holding a PEFT adapter (adapter_config.json) rather than full weights."""
    return Path(name_or_path, "adapter_config.json").is_file()


def reward_model_in_folder(name_or_path: str) -> tuple[bool, str] | None:
    """Whether a local folder holds a reward model, a sequence classifier with its score head (an adapter
    trained for SEQ_CLS, or a model whose config names a *ForSequenceClassification class), and what it
    holds, for messages ("a CAUSAL_LM adapter", "a GPTForCausalLM"); None where no local folder tells."""
    folder = Path(name_or_path)
    if is_adapter_folder(name_or_path):
        task_type = json.loads((folder / "adapter_config.json").read_text()).get("task_type")
        return task_type == "SEQ_CLS", f"a {task_type} adapter"
    if (folder / "config.json").is_file():
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
        is_classifier = any(name.endswith("ForSequenceClassification") for name in architectures)
        return is_classifier, f"a {', '.join(architectures) or 'model'}"
    return None


def adapter_base(adapter_folder: str) -> str:
    """The base model an adapter folder was trained on: the packaged base copied beside it (`base/`),
    else the base its adapter_config.json names."""
    bundled = Path(adapter_folder, "base")
    if (bundled / "config.json").is_file():
        return str(bundled)
    base = json.loads(Path(adapter_folder, "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise RecipeError(
            f"{adapter_folder}/adapter_config.json names no base_model_name_or_path: pass the merged model "
            f"({adapter_folder}/merged, written with --merge_adapter) as --model_name_or_path instead."
        )
    return base


def attach_adapter(model, adapter_folder: str, tokenizer=None):
    """`model` with the PEFT adapter in `adapter_folder` on it (a `PeftModel`); the embeddings first grow to
    `tokenizer`'s size where the adapter's run added tokens (a chat template's), whose rows the adapter holds."""
    from peft import PeftModel

    if Path(adapter_folder).is_dir() and not Path(adapter_folder, "adapter_model.safetensors").is_file():
        raise RecipeError(
            f"{adapter_folder} holds an adapter_config.json but no adapter_model.safetensors: the run that wrote it did not finish."
        )
    if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
        # PEFT loads the adapter's rows over these, so how they are initialised here does not matter.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return PeftModel.from_pretrained(model, adapter_folder)


def _load_merged_adapter(model_args, task, tokenizer, num_labels, trust_remote_code):
    """An earlier stage's adapter (SFT, reward model) as the starting model: its base with the adapter
    folded in, so that the next stage's adapter trains on top of it and the reference is this model.
    A language model's adapter (CAUSAL_LM, the SFT stage's) asked for as a sequence classifier (a reward
    model starting from SFT) is merged into its base as the language model it is, and the classifier is
    built on those merged weights with a new score head (`_as_classifier`)."""
    adapter = model_args.model_name_or_path
    base = adapter_base(adapter)
    base_args = copy.copy(model_args)
    base_args.model_name_or_path = base
    config = json.loads(Path(adapter, "adapter_config.json").read_text())
    onto_language_model = task != "causal-lm" and config.get("task_type") == "CAUSAL_LM"
    # A reward model's adapter brings its trained score head: the base's "new score head" notice would mislead.
    previous = logger.level
    if task != "causal-lm" and "score" in (config.get("modules_to_save") or []):
        logger.setLevel(max(previous, logging.WARNING))
    try:
        model = load_model(base_args, "causal-lm" if onto_language_model else task, tokenizer, num_labels, trust_remote_code)
    finally:
        logger.setLevel(previous)
    logger.info("Starting from the adapter in %s, merged into its base %s.", adapter, base)
    merged = attach_adapter(model, adapter, tokenizer).merge_and_unload()
    # PEFT leaves its config on the unloaded model; the next stage's adapter would then warn of "multiple adapters".
    if hasattr(merged, "peft_config"):
        del merged.peft_config
    # The merged model is on disk nowhere yet (a run saves it as base/), so it names no folder. Named after its
    # base, PEFT would find that base's vocabulary smaller than a chat template's grown one and save the whole
    # embedding into the next stage's adapter.
    merged.name_or_path = merged.config.name_or_path = ""
    return _as_classifier(merged, adapter, num_labels) if onto_language_model else merged


def _as_classifier(language_model, name: str, num_labels: int):
    """A `GPTForSequenceClassification` on `language_model`'s body (its weights, not a copy) with a new
    score head of `num_labels`, as `_load_classifier` gives for a language model's checkpoint."""
    config = copy.deepcopy(language_model.config)
    config.num_labels = num_labels
    classifier = GPTForSequenceClassification(config).to(language_model.dtype)
    classifier.transformer = language_model.transformer
    _new_score_head(name)
    return classifier


def _load_classifier(cls, name: str, kwargs: dict):
    """Load a sequence classifier, saying in one line that its score head is new when the checkpoint is a
    language model (what a reward model starts from), instead of transformers' load-report table, which
    reads like an error. Any other missing, unexpected or mismatched weight is still reported, as a warning."""
    import transformers

    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        model, info = from_pretrained_or_refuse(cls, name, output_loading_info=True, **kwargs)
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    missing = set(info["missing_keys"])
    if "score.weight" in missing:
        _new_score_head(name)
        missing.discard("score.weight")
    if missing or info["unexpected_keys"] or info["mismatched_keys"]:
        logger.warning(
            "Loading %s as %s: missing weights %s (newly initialised), unexpected weights %s (ignored), mismatched %s.",
            name, cls.__name__, sorted(missing), sorted(info["unexpected_keys"]), info["mismatched_keys"],
        )
    return model


def _new_score_head(name: str):
    logger.info("%s has no score head (it is a language model): a new one is initialised, to be trained.", name)


def _use_tokenizer_special_tokens(model, tokenizer):
    """The run's tokenizer decides end-of-text, start and padding (padding is end-of-text unless it has its
    own): write them into the model's config and generation config now. The Trainer would do the same
    before training, with a warning about tokens that "differ from the model config"."""
    for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
        token_id = getattr(tokenizer, name)
        if token_id is None:
            continue
        setattr(model.config, name, token_id)
        if getattr(model, "generation_config", None) is not None:
            setattr(model.generation_config, name, token_id)


# The default output folders of the recipes that later stages start from, and the command that fills each.
STAGE_OUTPUTS = {
    "outputs/sft_lora": "accelerate launch recipes/sft_lora.py",
    "outputs/reward_modeling": "accelerate launch recipes/reward_modeling.py",
    "outputs/dpo": "accelerate launch recipes/dpo.py",
    "outputs/rl": "accelerate launch recipes/rl.py",
}


def refuse_missing_folder(name_or_path: str, flag: str) -> None:
    """A name that can only be a local path (not a Hub name, owner/name) must exist. An earlier stage's
    default output folder that is missing names the command that writes it."""
    if Path(name_or_path).expanduser().exists():
        return
    # Checked before the owner/name test: "outputs/sft_lora" has the form of a Hub name too.
    stage = STAGE_OUTPUTS.get(Path(name_or_path).as_posix())
    if stage:
        raise RecipeError(
            f"{flag} {name_or_path}: no such folder. This stage starts from what `{stage}` writes there: "
            f"run that first (from this folder), or pass {flag} with another model."
        )
    if looks_like_local_path(name_or_path):
        raise RecipeError(f"{flag} {name_or_path}: no such folder. Check the path (a Hub name has the form owner/name).")


def from_pretrained_or_refuse(cls, name_or_path: str, **kwargs):
    """`cls.from_pretrained`, with a missing folder or an unknown Hub name refused as a RecipeError."""
    refuse_missing_folder(name_or_path, "--model_name_or_path")
    check_hub_name(name_or_path, "model", "--model_name_or_path")
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
    from ..tokenization import build_char_tokenizer, load_tokenizer, train_bpe_tokenizer

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
        check_hub_name(name, "model", flag)
        try:
            tokenizer = load_tokenizer(name)
        except OSError as err:  # not found locally or on the Hub: transformers' message says where it looked
            if isinstance(err, FileNotFoundError):
                raise
            raise RecipeError(f"{flag} {name}: {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


