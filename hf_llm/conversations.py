"""Conversational rows for supervised fine-tuning: a `messages` column, a list of {"role", "content"} per row,
as TRL's SFTTrainer takes it (the tokenizer's chat template renders each conversation). `to_messages` checks
such rows, or turns Alpaca instruction rows into one user and one assistant message; bad data raises
`DataFormatError`, naming the source, row, field and fix, as the rest of the data layer does."""

from __future__ import annotations

from collections.abc import Mapping

from datasets import Dataset

from .data import _columns_and_source, _describe, _error, _strings, _table

__all__ = ["ROLES", "is_conversational", "to_messages", "user_message"]

ROLES = ("system", "user", "assistant")


def is_conversational(ds) -> bool:
    """Whether a Dataset (or list of dict rows) has the `messages` column of conversational data."""
    return "messages" in _columns_and_source(ds, "is_conversational")[0]


def to_messages(ds) -> Dataset:
    """Map rows to the single column "messages": conversational rows are checked and kept (only "role" and
    "content" of each message); Alpaca rows ("instruction", "output", optional "input") become a user
    message (the instruction, then the input after a blank line) and the assistant's answer. Every message
    needs a role among `ROLES` and text content; every conversation needs an assistant message with text,
    which is what it teaches. Anything else is a DataFormatError."""
    columns, source = _columns_and_source(ds, "to_messages")
    if "messages" in columns:
        rows = ds["messages"] if isinstance(ds, Dataset) else [row.get("messages") for row in ds]
        return Dataset.from_dict({"messages": [_checked(source, i, row) for i, row in enumerate(rows)]})
    if not {"instruction", "output"} <= set(columns):
        raise _error(source, f"to_messages cannot use the columns {columns}. It accepts: conversational (messages); "
                     "alpaca (instruction, output)", "give the rows a 'messages' list of {role, content}, or instruction/output fields")
    table = _table(ds, ["instruction", "input", "output"], source)
    instructions = _strings(source, "instruction", table.column("instruction"), non_empty=True, what="instruction").to_pylist()
    inputs = _strings(source, "input", table.column("input"), required=False, what="input").to_pylist()
    outputs = _strings(source, "output", table.column("output"), non_empty=True, what="response").to_pylist()
    if not outputs:
        raise _error(source, "no rows", "give at least one row")
    return Dataset.from_dict({"messages": [
        [user_message(instruction, input_), {"role": "assistant", "content": output}]
        for instruction, input_, output in zip(instructions, inputs, outputs)
    ]})


def user_message(instruction: str, input: str = "") -> dict[str, str]:  # noqa: A002 - Alpaca's name
    """An instruction row as the user's message: the instruction, then its input (if any) after a blank line."""
    return {"role": "user", "content": f"{instruction}\n\n{input}" if input else instruction}


def _checked(source: str, row: int, messages) -> list[dict[str, str]]:
    field = "messages"
    if not isinstance(messages, (list, tuple)) or not messages:
        raise _error(source, f"expected a non-empty list of messages, found {_describe(messages)}",
                     'write [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]', row, field)
    kept = []
    for j, message in enumerate(messages):
        where = f"{field}[{j}]"
        if not isinstance(message, Mapping):
            raise _error(source, f"expected a message object, found {_describe(message)}", 'write {"role": ..., "content": ...}', row, where)
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise _error(source, f"the role is {_describe(role)}", f"use one of {', '.join(ROLES)}", row, f"{where}.role")
        if not isinstance(content, str):
            raise _error(source, f"expected text content, found {_describe(content)}", "store the message's content as a string", row, f"{where}.content")
        kept.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in kept):
        raise _error(source, "the conversation has no assistant message with text, so nothing to learn",
                     "add the assistant's answer, or remove the row", row, field)
    return kept
