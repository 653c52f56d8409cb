"""What a finished run leaves in its output folder: metrics, loss curve, model card, and the Hub push."""

import json
import math
import os
import re
from pathlib import Path

# Keys of saved arguments that may hold secrets; their values are never written anywhere.
SECRET_KEYS = re.compile(r"(?:^|_)(?:token|secret|password|api_key|apikey|credentials?|auth)$", re.IGNORECASE)
# Files and folders of an output_dir that do not belong on the Hub.
PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", "runs/**", "*.bin", "*.pt", "*.pkl", ".*", "**/.*"]


def redact(value):
    """A copy of a (nested) mapping with every secret-looking key's value replaced by '<redacted>'."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if SECRET_KEYS.search(str(k)) and v else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def known_secrets() -> list[str]:
    """Secret values present in the environment (Hub tokens and the like), to keep out of every output."""
    return [v for k, v in os.environ.items() if SECRET_KEYS.search(k) and v and len(v) >= 8]


def loss_history(log_history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, train loss) and (step, eval loss) pairs from a Trainer's `state.log_history`."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    return train, evals


def write_loss_curve(log_history: list[dict], path, title: str = "Loss") -> Path | None:
    """Plot train and eval loss against the step, as the tutorials do; None when nothing was logged."""
    train, evals = loss_history(log_history)
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", linestyle="-.", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_json(data: dict, path) -> Path:
    """Write JSON (secrets redacted, non-finite numbers as strings so the file stays valid JSON)."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    Path(path).write_text(json.dumps(clean(redact(data)), indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def _is_local(base_model: str | None) -> bool:
    return bool(base_model) and Path(base_model).expanduser().exists()


def _is_packaged_default(base_model: str | None) -> bool:
    from .arguments import DEFAULT_BASE_MODEL

    return _is_local(base_model) and Path(base_model).resolve() == Path(DEFAULT_BASE_MODEL).resolve()


def describe_base_model(base_model: str | None) -> str:
    """How a model card names the base model: a Hub id as is; a local folder as what it is, since its
    path means nothing on another machine."""
    if not base_model:
        return "none (trained from scratch)"
    if _is_packaged_default(base_model):
        return "stdlib-gpt, the small GPT that ships with hf_llm (`hf_llm.training.DEFAULT_BASE_MODEL`)"
    if _is_local(base_model):
        return f"a local checkpoint, `{Path(base_model).name}`"
    return base_model


def how_to_load(repo_id: str, base_model: str | None, *, task: str, is_adapter: bool) -> str:
    """The model card's loading snippet for a finished run pushed as `repo_id`.

    `task` is "causal_lm" or "reward". A full model loads by itself (as remote code). An adapter loads
    with PEFT onto its base: a Hub base is named in the adapter's config, so PEFT's Auto classes find
    it; the packaged default base is loaded from hf_llm; another local base must be loaded from
    wherever the user keeps it.
    """
    reward = task == "reward"
    auto = "AutoModelForSequenceClassification" if reward else "AutoModelForCausalLM"
    extra = ", num_labels=1" if reward else ""
    tokenizer = "" if reward else f'\ntokenizer = AutoTokenizer.from_pretrained("{repo_id}"{", trust_remote_code=True" if not is_adapter else ""})'
    tokenizer_import = "" if reward else "\nfrom transformers import AutoTokenizer"
    if not is_adapter:
        return (
            f"from transformers import {auto}{', AutoTokenizer' if not reward else ''}\n\n"
            f'model = {auto}.from_pretrained("{repo_id}", trust_remote_code=True){tokenizer}'
        )
    if not _is_local(base_model):
        return (
            f"from peft import AutoPeft{auto.removeprefix('Auto')}{tokenizer_import}\n\n"
            f'model = AutoPeft{auto.removeprefix("Auto")}.from_pretrained("{repo_id}"{extra}, trust_remote_code=True){tokenizer}'
        )
    ours = "GPTForSequenceClassification" if reward else "GPTForCausalLM"
    if _is_packaged_default(base_model):
        base_lines = (
            f"from hf_llm import {ours}\nfrom hf_llm.training import DEFAULT_BASE_MODEL\n\n"
            f"base = {ours}.from_pretrained(DEFAULT_BASE_MODEL{extra})"
        )
    else:
        base_lines = (
            f"from hf_llm import {ours}\n\n"
            f"# The base model was a local checkpoint ({Path(base_model).name}): load it from where you keep it.\n"
            f'base = {ours}.from_pretrained("path/to/{Path(base_model).name}"{extra})'
        )
    return f"from peft import PeftModel{tokenizer_import}\n{base_lines}\nmodel = PeftModel.from_pretrained(base, \"{repo_id}\"){tokenizer}"


PIPELINE_TAGS = {"causal_lm": "text-generation", "reward": "text-classification"}


def write_model_card(
    output_dir,
    *,
    title: str,
    summary: str,
    base_model: str | None,
    datasets: list[str],
    hyperparameters: dict,
    results: dict,
    tags: list[str],
    task: str,
    is_adapter: bool,
    how_to_load: str,
    model_name: str,
) -> Path:
    """Write `README.md`, a Hub model card (huggingface_hub's `ModelCard`): metadata with the held-out
    results as `model-index`, then what the model is, how to load it and how it was made."""
    import torch
    import transformers
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    pipeline_tag = PIPELINE_TAGS[task]
    eval_results = [
        EvalResult(task_type=pipeline_tag, dataset_type=datasets[0], dataset_name=datasets[0], metric_type=name,
                   metric_value=value)
        for name, value in sorted(results.items())
        if name.startswith("eval_") and isinstance(value, (int, float)) and datasets
        and not any(part in name for part in ("runtime", "per_second", "num_tokens"))  # timings are no results
    ]
    data = ModelCardData(
        library_name="peft" if is_adapter else "transformers",
        base_model=base_model if base_model and not _is_local(base_model) else None,  # the Hub takes a repo id, not a path
        datasets=datasets or None,
        tags=["hf_llm", "gpt2", *tags],
        pipeline_tag=pipeline_tag,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    versions = f"transformers {transformers.__version__}, torch {torch.__version__}"
    try:
        import peft
        import trl

        versions += f", peft {peft.__version__}, trl {trl.__version__}"
    except ImportError:
        pass
    result_rows = "\n".join(
        f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(results.items())
    )
    hyper_rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(redact(hyperparameters).items()) if v is not None)
    body = f"""# {title}

{summary}

- Base model: {describe_base_model(base_model)}
- Data: {", ".join(datasets) if datasets else "-"}

## How to load

```python
{how_to_load.strip()}
```

## Evaluation

| metric | value |
|---|---|
{result_rows or "| - | - |"}

## Training hyperparameters

| name | value |
|---|---|
{hyper_rows}

## Framework versions

hf_llm, {versions}
"""
    path = Path(output_dir) / "README.md"
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}").save(path)
    return path


def push_folder(folder, repo_id: str, token: str | None = None, private: bool | None = None, commit_message: str = "Upload with hf_llm"):
    """Upload a finished output folder to the Hub: model or adapter, tokenizer, card, remote-code files,
    metrics and loss curve; checkpoints, TensorBoard logs and pickles stay local."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, ignore_patterns=PUSH_IGNORE
    )
