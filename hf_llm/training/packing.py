"""Turning a corpus into fixed-length training blocks: the sliding-window loader of the tutorials."""

from datasets import Dataset

from .setup import RecipeError


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
    """A Dataset of `input_ids`/`labels` blocks built from `texts`; a clear error if the texts are too short."""
    if len(texts) == 0:
        raise RecipeError(f"The {split_name} texts are empty (is --max_train_samples / --max_eval_samples 0?). Give it some data.")
    stream = token_stream(texts, tokenizer, tokenizer.eos_token_id)
    blocks = sliding_blocks(stream, block_size, stride)
    if not blocks:
        raise RecipeError(
            f"The {split_name} texts give {len(stream)} tokens, fewer than one block of {block_size}. "
            f"Use more data or a smaller --block_size."
        )
    return Dataset.from_dict({"input_ids": blocks, "labels": [list(b) for b in blocks]})
