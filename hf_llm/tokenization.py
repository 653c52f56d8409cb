"""Tokenizers for hf_llm: GPT-2's byte-level BPE, BPE trained on your own text, and characters.

All of them are transformers tokenizers, so they save with `save_pretrained` and load back with
`AutoTokenizer.from_pretrained`:

- [`load_gpt2_tokenizer`] reads GPT-2's `vocab.json` + `merges.txt` (or a saved tokenizer) from a
  local folder, without the Hub;
- [`train_bpe_tokenizer`] trains a GPT-2-style byte-level BPE with the `tokenizers` library;
- [`build_char_tokenizer`] builds a [`CharTokenizer`] from a corpus;
- [`load_tokenizer`] picks the right loader for a folder or Hub name;
- [`add_chat_template`] gives any of them the ChatML chat template (and its model the new rows).

Importing this module registers [`CharTokenizer`] with `AutoTokenizer` (see
[`register_char_tokenizer`]), so a saved character tokenizer loads without `trust_remote_code`.
"""

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    GPT2Tokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from .tokenization_char import END_OF_TEXT, CharTokenizer

# GPT-2's context length; the Hub's gpt2 tokenizer_config.json says the same.
GPT2_MODEL_MAX_LENGTH = 1024
GPT2_RAW_FILES = ("vocab.json", "merges.txt")
# Any of these marks a folder written by `save_pretrained` (or a Hub snapshot of one).
SAVED_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


class _CharTokenizerRegistryKey(PretrainedConfig):
    """Key under which [`CharTokenizer`] is registered with `AutoTokenizer`.

    `AutoTokenizer.register` files a tokenizer under a config class; v5 resolves the
    `tokenizer_class` named in tokenizer_config.json through that registry. Keying it on the
    GPT config instead would make CharTokenizer the default tokenizer of every hf_llm checkpoint,
    so it gets a config class of its own that no checkpoint uses.
    """

    model_type = "hf_llm_char_tokenizer"


def register_char_tokenizer() -> None:
    """Let `AutoTokenizer` resolve `"tokenizer_class": "CharTokenizer"` to [`CharTokenizer`].

    Idempotent; runs when this module is imported.
    """
    AutoTokenizer.register(_CharTokenizerRegistryKey, tokenizer_class=CharTokenizer, exist_ok=True)


register_char_tokenizer()


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # GPT-2 has no pad token; padding with eos is the usual choice (the attention mask hides it).
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _is_saved_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in SAVED_TOKENIZER_FILES)


def _has_raw_gpt2_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in GPT2_RAW_FILES)


def load_gpt2_tokenizer(path: str | os.PathLike, model_max_length: int = GPT2_MODEL_MAX_LENGTH) -> GPT2Tokenizer:
    """Load GPT-2's byte-level BPE tokenizer from a local folder, never from the Hub.

    In transformers v5 `GPT2Tokenizer` is backed by the `tokenizers` library (`GPT2TokenizerFast`
    is an alias of it), so this is the fast tokenizer.

    Args:
        path: a folder holding either GPT-2's original `vocab.json` and `merges.txt`, or a tokenizer
            saved with `save_pretrained` (`tokenizer.json` / `tokenizer_config.json`).
        model_max_length: longest input in tokens, used when the folder holds only the raw files
            (a saved tokenizer keeps its own). Defaults to GPT-2's context, 1024.

    Returns:
        The tokenizer, with `pad_token` set to the eos token `<|endoftext|>` when it has none.

    Raises:
        FileNotFoundError: if `path` is not a folder or holds neither set of files.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"GPT-2 tokenizer folder {str(folder)!r} does not exist; expected a folder with "
            f"{' + '.join(GPT2_RAW_FILES)} or a saved tokenizer ({' / '.join(SAVED_TOKENIZER_FILES)})."
        )
    if _is_saved_tokenizer(folder):
        tokenizer = GPT2Tokenizer.from_pretrained(str(folder), local_files_only=True)
    elif _has_raw_gpt2_files(folder):
        tokenizer = GPT2Tokenizer.from_pretrained(
            str(folder), local_files_only=True, model_max_length=model_max_length
        )
    else:
        missing = [name for name in GPT2_RAW_FILES if not (folder / name).is_file()]
        raise FileNotFoundError(
            f"No GPT-2 tokenizer in {str(folder)!r}: expected {' + '.join(GPT2_RAW_FILES)} (missing: "
            f"{', '.join(missing)}) or a saved tokenizer ({' / '.join(SAVED_TOKENIZER_FILES)})."
        )
    return _ensure_pad_token(tokenizer)


def train_bpe_tokenizer(
    texts: str | Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    special_tokens: Iterable[str] = (END_OF_TEXT,),
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer the way GPT-2's was built.

    The pipeline is GPT-2's: byte-level pre-tokenization (GPT-2's split regex, no prefix space),
    a byte-level decoder and post-processor, and all 256 byte symbols in the initial alphabet, so
    any text, including characters never seen in training, encodes and decodes back exactly.
    Training is deterministic: the same texts and settings give the same vocabulary and merges.

    Args:
        texts: the training corpus, one string or several.
        vocab_size: size of the final vocabulary, special tokens and the 256 byte symbols included.
        min_frequency: a pair is merged only if it occurs at least this often.
        special_tokens: tokens added first (ids 0, 1, ...); the first one is used as eos, bos and
            pad, as GPT-2 does with `<|endoftext|>`.

    Returns:
        A `PreTrainedTokenizerFast` (v5: `TokenizersBackend`) that round-trips through
        `save_pretrained` + `AutoTokenizer.from_pretrained`.
    """
    special_tokens = list(special_tokens)
    if not special_tokens:
        raise ValueError("train_bpe_tokenizer needs at least one special token to use as end of text.")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special_tokens):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs {len(alphabet)} byte symbols plus "
            f"{len(special_tokens)} special token(s)."
        )
    if isinstance(texts, str):
        texts = [texts]

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # As in GPT-2's tokenizer.json: offsets keep the spaces that belong to each token.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)

    end_of_text = special_tokens[0]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=end_of_text,
        bos_token=end_of_text,
        pad_token=end_of_text,
        clean_up_tokenization_spaces=False,
    )


def build_char_tokenizer(texts: str | Iterable[str], **kwargs) -> CharTokenizer:
    """Build a [`CharTokenizer`] whose vocabulary is the distinct characters of `texts` plus `<|endoftext|>`.

    `kwargs` go to [`CharTokenizer.from_corpus`], e.g. `unk_token="<unk>"` to map unseen
    characters to an unknown token instead of raising.
    """
    return CharTokenizer.from_corpus(texts, **kwargs)


CHATML_START = "<|im_start|>"
CHATML_END = "<|im_end|>"

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""ChatML: each message is `<|im_start|>ROLE\\nCONTENT<|im_end|>\\n`; `add_generation_prompt` opens the
assistant's turn. The assistant's content and its `<|im_end|>` lie inside `{% generation %}` markers, so
`return_assistant_tokens_mask` (TRL's `assistant_only_loss`) trains the answers and the stop token only."""


def add_chat_template(tokenizer: PreTrainedTokenizerBase, model=None) -> list[int]:
    """Give `tokenizer` the ChatML chat template ([`CHATML_TEMPLATE`]), and `model` rows for its tokens.

    `<|im_start|>` and `<|im_end|>` are added as special tokens (never split, skipped by
    `decode(..., skip_special_tokens=True)`), the template is set as `tokenizer.chat_template` (saved
    with the tokenizer), and `<|im_end|>` becomes the end-of-sequence token, where generation stops;
    padding stays what it was. With `model`, its token embeddings are resized to the tokenizer (the
    LM head stays tied) and its configs take the new end-of-sequence token; generation also stops at
    the old one. The new rows start as the mean of the existing ones: a deterministic start that
    makes them as likely as an average token, neither favoured nor ruled out.

    Returns the ids of the tokens added (none for a tokenizer that already had them), the rows to train.
    """
    import torch

    old_eos = tokenizer.eos_token_id
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # before the eos changes, so padding keeps end-of-text
    known = set(tokenizer.get_vocab())
    new = [token for token in (CHATML_START, CHATML_END) if token not in known]
    tokenizer.add_special_tokens({"extra_special_tokens": [CHATML_START, CHATML_END]}, replace_extra_special_tokens=False)
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.eos_token = CHATML_END
    added = tokenizer.convert_tokens_to_ids(new)
    if model is not None:
        embeddings = model.get_input_embeddings()
        old_rows = embeddings.weight.shape[0]
        if len(tokenizer) > old_rows:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            with torch.no_grad():
                weight = model.get_input_embeddings().weight
                weight[old_rows:] = weight[:old_rows].mean(dim=0)
        stop = [tokenizer.eos_token_id] + ([old_eos] if old_eos is not None and old_eos != tokenizer.eos_token_id else [])
        model.config.eos_token_id = tokenizer.eos_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.eos_token_id = stop
    return added


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder or the Hub, picking the right loader.

    - a folder with a saved tokenizer (`tokenizer_config.json` or `tokenizer.json`):
      `AutoTokenizer.from_pretrained(folder, trust_remote_code=False)`; hf_llm's own
      [`CharTokenizer`] resolves because importing hf_llm registers it;
    - a folder with only GPT-2's `vocab.json` + `merges.txt`: [`load_gpt2_tokenizer`];
    - anything else is taken as a Hub name: `AutoTokenizer.from_pretrained(name_or_path)`.

    Extra `kwargs` go to `AutoTokenizer.from_pretrained` (e.g. `trust_remote_code=True` for a Hub
    repo you trust). The result gets `pad_token = eos_token` when it has no pad token.

    Raises:
        FileNotFoundError: for an existing folder that holds no tokenizer files.
    """
    folder = Path(name_or_path)
    if folder.is_dir():
        if _is_saved_tokenizer(folder):
            kwargs.setdefault("trust_remote_code", False)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
        elif _has_raw_gpt2_files(folder):
            tokenizer = load_gpt2_tokenizer(folder)
        else:
            raise FileNotFoundError(
                f"No tokenizer in {str(folder)!r}: expected a saved tokenizer "
                f"({' / '.join(SAVED_TOKENIZER_FILES)}) or GPT-2's {' + '.join(GPT2_RAW_FILES)}."
            )
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
    return _ensure_pad_token(tokenizer)


__all__ = [
    "CHATML_TEMPLATE",
    "CharTokenizer",
    "add_chat_template",
    "build_char_tokenizer",
    "load_gpt2_tokenizer",
    "load_tokenizer",
    "register_char_tokenizer",
    "train_bpe_tokenizer",
]
