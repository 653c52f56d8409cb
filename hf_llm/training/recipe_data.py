"""The recipes' data: a user's data set (Hub name, file or folder) mapped to the recipe's schema, or the
embedded standard-library data when none is given (always a DatasetDict with "train" and "test"); the
length policy for rows longer than the context; and the fixed-length blocks pretraining trains on."""

import logging

from datasets import Dataset, DatasetDict

from .. import data as data_layer
from .. import stdlib_data
from ..conversations import is_conversational, to_messages
from .chat import chat_prompt, prompt_completion_view
from .errors import RecipeError
from .hub_checks import check_hub_name
from .loading import check_vocab_agreement

logger = logging.getLogger("hf_llm")


def _load_and_split(data_args, seed: int, builder, split_single_text: bool = False) -> DatasetDict:
    check_hub_name(data_args.dataset_name, "dataset", "--dataset_name")
    raw = data_layer.load_raw_dataset(
        data_args.dataset_name, split=data_args.dataset_split, **({"name": data_args.dataset_config} if data_args.dataset_config else {})
    )
    mapped = builder(raw)
    if split_single_text and len(mapped) == 1:
        # One document (a book, say): hold out its last characters, as the tutorials split "The Verdict".
        text = mapped[0]["text"]
        cut = int(len(text) * (1 - data_args.eval_split_fraction))
        splits = DatasetDict({"train": Dataset.from_dict({"text": [text[:cut]]}), "test": Dataset.from_dict({"text": [text[cut:]]})})
    else:
        splits = split_train_test(mapped, data_args.eval_split_fraction, seed)
    return _limit(splits, data_args)


def split_train_test(ds: Dataset, test_fraction: float = 0.1, seed: int = 42) -> DatasetDict:
    """Hold out round(len * test_fraction) rows (at least one, and at least one left to train on) as "test",
    with `Dataset.train_test_split`: the same rows on every run and machine for a given seed.

    Raises:
        ValueError: test_fraction not strictly between 0 and 1.
        DataFormatError: fewer than two rows.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}.")
    if len(ds) < 2:
        raise data_layer.DataFormatError(
            f"{ds.info.dataset_name or 'the data set'}: {len(ds)} row(s) cannot be split into train and test. "
            f"Fix: give at least two rows, or pass a separate evaluation set."
        )
    return ds.train_test_split(test_size=min(max(1, round(len(ds) * test_fraction)), len(ds) - 1), seed=seed)


def _limit(splits: DatasetDict, data_args) -> DatasetDict:
    out = {}
    for name, cap in (("train", data_args.max_train_samples), ("test", data_args.max_eval_samples)):
        ds: Dataset = splits[name]
        out[name] = ds.select(range(min(cap, len(ds)))) if cap is not None else ds
    return DatasetDict(out)


def load_text_corpus(data_args, seed: int = 42) -> DatasetDict:
    """Texts for pretraining ("text" column)."""
    if data_args.dataset_name is None:
        return _limit(stdlib_data.stdlib_corpus(), data_args)
    return _load_and_split(
        data_args,
        seed,
        lambda raw: data_layer.to_text(raw, text_field=data_args.text_field, repository_name=data_args.repository_name),
        split_single_text=True,
    )


def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and tokenizer.chat_template is not None


def instruction_template(data_args, tokenizer=None):
    """The template instruction rows are prompted with: for a model whose tokenizer has a chat template (one
    fine-tuned on conversations), that template (`chat_prompt`: the instruction as the user's message), since
    the model was trained on it and chat.py talks to it with it; else --prompt_template (unset: Alpaca's).
    --prompt_template with a chat template is refused: one of them would be ignored."""
    if not has_chat_template(tokenizer):
        return data_args.prompt_template
    if data_args.prompt_template:
        raise RecipeError("--prompt_template formats prompts for an instruction-tuned model, but this model's tokenizer has a "
                          "chat template, which its prompts are rendered with. Drop --prompt_template, or start from a model "
                          "without a chat template.")
    return chat_prompt(tokenizer)


def load_sft_data(data_args, seed: int = 42, tokenizer=None) -> DatasetDict:
    """Rows for supervised fine-tuning: prompt/completion pairs, without end-of-text (TRL's SFTTrainer appends
    its tokenizer's EOS to each completion); or conversations ("messages") for data that has them, and for
    instruction rows with `--as_messages`, which the tokenizer's chat template renders. Instructions are
    prompted with `instruction_template(data_args, tokenizer)`: pass the `tokenizer` to prompt them in its chat
    template, if it has one (rl.py's prompts)."""
    template = instruction_template(data_args, tokenizer)
    if data_args.as_messages and data_args.prompt_template:
        raise RecipeError("--as_messages trains instructions as conversations, in the chat template; --prompt_template "
                          "applies to the prompt/completion format instead. Pass one of them.")
    if data_args.dataset_name is None:
        splits = stdlib_data.stdlib_instructions()
        convert = to_messages if data_args.as_messages else lambda rows: data_layer.to_prompt_completion(rows, template=template)
        return _limit(DatasetDict({k: convert(v) for k, v in splits.items()}), data_args)
    def to_sft_rows(raw):
        if is_conversational(raw) or data_args.as_messages:
            logger.info("%s: conversations (messages), each rendered with the tokenizer's chat template.", data_args.dataset_name)
            return to_messages(raw)
        mapped = data_layer.to_prompt_completion(raw, template=template)  # refuses rows of any other schema
        if data_layer.detect_schema(raw) == "prompt_completion":
            logger.info("%s: prompt/completion rows, trained on as written (the prompt template is not applied).",
                        data_args.dataset_name)
        else:
            logger.info("%s: instruction rows, each prompt built with the %s.", data_args.dataset_name, "chat template"
                        if has_chat_template(tokenizer) else "--prompt_template given" if template else "Alpaca prompt template")
        return mapped

    return _load_and_split(data_args, seed, to_sft_rows)


def load_rl_prompts(data_args, seed: int = 42, tokenizer=None) -> DatasetDict:
    """rl.py's prompts, each with its reference answer ("completion"): the SFT data, split as SFT splits it.
    Instructions are asked as `load_sft_data` prompts them; a conversation ("messages") is rendered with the
    tokenizer's chat template up to its last assistant message, which is the reference answer. Conversations
    given to a model without a chat template are refused: nothing says how to ask them."""
    data = load_sft_data(data_args, seed=seed, tokenizer=tokenizer)
    if "messages" not in data["train"].column_names:
        return data
    if not has_chat_template(tokenizer):
        given = data_args.dataset_name or "the embedded instructions"
        why = "--as_messages turns its instructions into conversations" if data_args.as_messages else "it holds conversations"
        raise RecipeError(
            f"{given}: {why}, but the policy's tokenizer has no chat template to ask them in. Start from an SFT run "
            f"on conversations (sft_lora.py --dataset_name ... on messages data, or --as_messages true), whose "
            f"tokenizer has one, or give instruction or prompt/completion rows."
        )
    return DatasetDict({name: prompt_completion_view(split, tokenizer) for name, split in data.items()})


def load_preference_data(data_args, seed: int = 42, tokenizer=None) -> DatasetDict:
    """prompt/chosen/rejected triples for reward modelling and DPO. Instructions (and webgpt questions) are
    prompted with `instruction_template(data_args, tokenizer)`: in the starting model's chat template when its
    `tokenizer` has one; prompts given as such stay as written."""
    template = instruction_template(data_args, tokenizer)
    if has_chat_template(tokenizer):
        logger.info("Preference prompts: each instruction as the user's message in the model's chat template.")
    if data_args.dataset_name is None:
        splits = stdlib_data.stdlib_preferences()
        mapped = {k: data_layer.to_preference(v, template=template) for k, v in splits.items()}
        return _limit(DatasetDict(mapped), data_args)
    return _load_and_split(data_args, seed, lambda raw: data_layer.to_preference(raw, template=template))


# --- rows longer than the context ---------------------------------------------------------------


def check_block_size(block_size: int, model) -> int:
    """Blocks must fit the model's context."""
    if block_size > model.config.n_positions:
        raise RecipeError(
            f"--block_size {block_size} is longer than the model's context (n_positions={model.config.n_positions}). "
            f"Use --block_size {model.config.n_positions} or less."
        )
    return block_size


def enforce_length_limit(
    data,
    tokenizer,
    model,
    max_length: int | None,
    too_long: str,
    sequences,
    *,
    eos_appended_by_trainer: str | None = None,
    truncatable_after: str | None = None,
):
    """Apply `too_long` to rows longer than the context, as the trainer will see them.

    `sequences` lists the fields the trainer joins into each token sequence of a row, e.g.
    `[("prompt", "completion")]`, or `[("prompt", "chosen"), ("prompt", "rejected")]` for a pair; a row
    is too long if any of its sequences is. Sequences are tokenized as the trainer does (special tokens
    included), with the end-of-text the trainer appends to each one that lacks it: `eos_appended_by_trainer`,
    by default the tokenizer's, which TRL's SFTTrainer appends to the completion and RewardTrainer to chosen
    and rejected ("" counts none).
    `truncatable_after` names the field the trainer's truncation (which keeps the start) must leave
    room after, as SFT needs some of the completion to learn from; None means the trainer cannot
    truncate (it drops), so 'truncate' is refused.

    - 'refuse': a RecipeError naming the rows;
    - 'drop': those rows are removed here, with a warning;
    - 'truncate': the trainer cuts them to the limit, with a warning; rows whose `truncatable_after`
      field alone fills the limit would have nothing left to learn from and are removed here.

    Returns (data, the length limit the trainer must use: the smaller of max_length and n_positions).
    """
    if too_long not in ("truncate", "drop", "refuse"):
        raise RecipeError(f"--too_long must be 'truncate', 'drop' or 'refuse', got {too_long!r}.")
    if too_long == "truncate" and truncatable_after is None:
        raise RecipeError(
            "--too_long truncate is not available here: the trainer does not truncate these rows (a pair cut "
            "short would compare partial answers). Use --too_long drop or refuse."
        )
    limit = min(max_length or model.config.n_positions, model.config.n_positions)

    eos = tokenizer.eos_token if eos_appended_by_trainer is None else eos_appended_by_trainer

    def length(texts, end=""):
        texts = [t if not end or t.endswith(end) else t + end for t in texts]
        return [len(ids) for ids in tokenizer(texts)["input_ids"]]

    def joined(ds, fields):
        if fields == ("messages",):  # a conversation is as long as its rendering by the chat template
            return [tokenizer.apply_chat_template(m, tokenize=False) for m in ds["messages"]]
        return ["".join(parts) for parts in zip(*(ds[f] for f in fields))]

    result = {}
    for split, ds in data.items():
        if len(ds) == 0:
            raise RecipeError(f"The {split} split has no rows (is --max_train_samples / --max_eval_samples 0?). Give it some data.")
        longest = [0] * len(ds)
        for fields in sequences:
            lengths = length(joined(ds, tuple(fields)), eos)
            longest = [max(a, b) for a, b in zip(longest, lengths)]
        long_rows = [i for i, n in enumerate(longest) if n > limit]
        result[split] = ds
        if not long_rows:
            continue
        if too_long == "refuse":
            raise RecipeError(
                f"{len(long_rows)} {split} rows are longer than {limit} tokens (the limit: max_length / the model's "
                f"n_positions={model.config.n_positions}), e.g. rows {long_rows[:5]} with {[longest[i] for i in long_rows[:5]]} "
                f"tokens. Shorten them, or pass --too_long {'truncate (or drop)' if truncatable_after else 'drop'}."
            )
        drop = set(long_rows) if too_long == "drop" else set()
        if too_long == "truncate":
            heads = length([_head(ds[i][truncatable_after], tokenizer) for i in long_rows])
            drop = {i for i, n in zip(long_rows, heads) if n >= limit}
            if len(long_rows) > len(drop):
                logger.warning(
                    "%d of %d %s rows exceed %d tokens and will be truncated to it.", len(long_rows) - len(drop), len(ds), split, limit
                )
        if drop:
            why = "" if too_long == "drop" else f" (their {truncatable_after} alone fills the limit)"
            logger.warning("%d of %d %s rows exceed %d tokens and are dropped%s.", len(drop), len(ds), split, limit, why)
            result[split] = ds.select([i for i in range(len(ds)) if i not in drop])
            if len(result[split]) == 0:
                raise RecipeError(f"Every {split} row is longer than {limit} tokens: raise --max_length or use shorter data.")
    return type(data)(result), limit


def _head(field, tokenizer) -> str:
    """What comes before the first thing to learn from: the field itself (a prompt), or in a conversation the
    messages before the first assistant message, with the assistant's turn opened."""
    if isinstance(field, str):
        return field
    first = next(i for i, message in enumerate(field) if message["role"] == "assistant")
    return tokenizer.apply_chat_template(field[:first], tokenize=False, add_generation_prompt=True) if first else ""


# --- fixed-length blocks for pretraining: the sliding-window loader of the tutorials ---------------

def token_stream(texts, tokenizer, eos_token_id: int | None) -> list[int]:
    """Tokenize every text and join them into one stream, with end-of-text between documents."""
    stream: list[int] = []
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    for ids in encoded:
        stream.extend(ids)
        if eos_token_id is not None:
            stream.append(eos_token_id)
    return stream


def sliding_blocks(stream: list[int], block_size: int, stride: int | None = None) -> list[list[int]]:
    """Windows of `block_size` tokens starting every `stride` tokens (stride = block_size: no overlap).

    Each window trains the model to predict its tokens 2..block_size from the ones before (the
    labels are the inputs, shifted inside the model). A tail shorter than a block is dropped.
    """
    if block_size < 2:
        raise RecipeError(f"--block_size must be at least 2, got {block_size}.")
    stride = block_size if stride is None else stride
    if stride < 1:
        raise RecipeError(f"--stride must be a positive number of tokens (or unset, for block_size), got {stride}.")
    return [stream[start : start + block_size] for start in range(0, len(stream) - block_size + 1, stride)]


def blocks_dataset(texts, tokenizer, block_size: int, stride: int | None = None, split_name: str = "train") -> Dataset:
    """A Dataset of `input_ids`/`attention_mask`/`labels` blocks built from `texts`; a clear error if the texts
    are too short. Blocks are never padded: the all-ones mask says so, where end-of-text (GPT-2's pad id too)
    between texts would otherwise look like padding to transformers' padding check."""
    if len(texts) == 0:
        raise RecipeError(f"The {split_name} texts are empty (is --max_train_samples / --max_eval_samples 0?). Give it some data.")
    stream = token_stream(texts, tokenizer, tokenizer.eos_token_id)
    blocks = sliding_blocks(stream, block_size, stride)
    if not blocks:
        raise RecipeError(
            f"The {split_name} texts give {len(stream)} tokens, fewer than one block of {block_size}. "
            f"Use more data or a smaller --block_size."
        )
    ones = [[1] * len(block) for block in blocks]
    return Dataset.from_dict({"input_ids": blocks, "attention_mask": ones, "labels": [list(b) for b in blocks]})


# The token sequences a preference pair becomes in the trainers: prompt + chosen, prompt + rejected.
PAIR_SEQUENCES = [("prompt", "chosen"), ("prompt", "rejected")]


def fit_to_model(data, tokenizer, model, training_args, too_long: str, sequences, *, truncatable_after: str | None = None):
    """The checks between data, tokenizer and model before a trainer sees them: every token id has an
    embedding row, and rows longer than the context are handled by `too_long` (`enforce_length_limit`).
    Conversations ("messages") are measured as the chat template renders them, without an end-of-text (TRL
    appends none to them), and can be truncated after their first assistant turn begins, whatever
    `sequences` says. Sets `training_args.max_length` to the limit the trainer must use; returns the data."""
    check_vocab_agreement(model, tokenizer)
    data, training_args.max_length = enforce_length_limit(
        data, tokenizer, model, training_args.max_length, too_long, **measured_as_trained(data, sequences, truncatable_after)
    )
    return data


def fit_prompts(data, tokenizer, model, room: int, too_long: str):
    """RL prompts whose answer is still to come: a prompt must leave `room` tokens' worth of context for it,
    measured alone (no end-of-text); longer ones are dropped or refused (`too_long`). Returns the data."""
    return enforce_length_limit(data, tokenizer, model, room, too_long, [("prompt",)], eos_appended_by_trainer="")[0]


def measured_as_trained(data, sequences, truncatable_after: str | None) -> dict:
    """`enforce_length_limit`'s keywords for `data` as the trainer will see it: `sequences` and
    `truncatable_after` as given, or for conversations ("messages") the chat template's rendering, with no
    end-of-text (TRL appends none to them), truncatable where the others are."""
    if "messages" not in next(iter(data.values())).column_names:
        return dict(sequences=sequences, truncatable_after=truncatable_after)
    return dict(sequences=[("messages",)], truncatable_after="messages" if truncatable_after else None,
                eos_appended_by_trainer="")
