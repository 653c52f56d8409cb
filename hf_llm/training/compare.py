"""Answers with and without the adapter, side by side (the tutorial's before/after)."""

import json
from pathlib import Path

import torch

from .lora_setup import adapter_disabled


def compare_answers(model, tokenizer, prompts, lora_args, output_dir, max_new_tokens: int = 64) -> list[dict]:
    """Greedy answers to `prompts` from the fine-tuned model and from its base; written to answers.jsonl."""
    model.eval()
    device = next(model.parameters()).device
    limit = model.config.n_positions
    rows = []
    for prompt in prompts:
        # A prompt longer than the context loses its start, not its end: the end is where the answer begins.
        ids = tokenizer(prompt, return_tensors="pt").input_ids[:, -(limit - 1) :].to(device)
        new = max(1, min(max_new_tokens, limit - ids.shape[1]))

        def answer():
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

        row = {"prompt": prompt, "fine_tuned": answer()}
        with adapter_disabled(model, lora_args) as disabled:
            if disabled:
                row["base"] = answer()
        rows.append(row)
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "answers.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return rows
