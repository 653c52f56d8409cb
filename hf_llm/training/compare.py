"""Answers with and without the adapter, side by side (the tutorial's before/after)."""

import json
from pathlib import Path

from .adapters import adapter_disabled
from .generation import greedy_continuation


def compare_answers(model, tokenizer, prompts, output_dir, max_new_tokens: int = 64, write: bool = True) -> list[dict]:
    """Greedy answers to `prompts` from the fine-tuned model and from its base; written to answers.jsonl
    if `write`. Under multi-process training every process calls it (a sharded model's forward needs
    all of them) and only the main one writes."""
    model.eval()
    rows = []
    for prompt in prompts:
        row = {"prompt": prompt, "fine_tuned": greedy_continuation(model, tokenizer, prompt, max_new_tokens)}
        with adapter_disabled(model) as disabled:
            if disabled:
                row["base"] = greedy_continuation(model, tokenizer, prompt, max_new_tokens)
        rows.append(row)
    if not write:
        return rows
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "answers.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return rows
