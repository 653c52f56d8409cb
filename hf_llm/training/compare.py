"""Answers with and without the adapter, side by side (the tutorial's before/after)."""

import json
from pathlib import Path

from .adapters import adapter_disabled
from .generation import greedy_continuation


def compare_answers(model, tokenizer, prompts, output_dir, max_new_tokens: int = 64) -> list[dict]:
    """Greedy answers to `prompts` from the fine-tuned model and from its base; written to answers.jsonl."""
    model.eval()
    rows = []
    for prompt in prompts:
        row = {"prompt": prompt, "fine_tuned": greedy_continuation(model, tokenizer, prompt, max_new_tokens)}
        with adapter_disabled(model) as disabled:
            if disabled:
                row["base"] = greedy_continuation(model, tokenizer, prompt, max_new_tokens)
        rows.append(row)
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "answers.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return rows
