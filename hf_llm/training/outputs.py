"""What a finished run leaves in its output folder: metrics, loss curve, model card, and the Hub push."""

import json
import os
import re
import shutil
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
    if _is_adapter_stage(base_model):
        return f"the adapter in `{Path(base_model).name}` merged into its own base (bundled in `base/`)"
    if _is_local(base_model):
        return f"a local checkpoint, `{Path(base_model).name}`"
    return base_model


def _is_adapter_stage(base_model: str | None) -> bool:
    """An earlier stage's adapter folder, which the run started from merged into its base."""
    return _is_local(base_model) and Path(base_model, "adapter_config.json").is_file()


def _point_adapter_at(output_dir, base_copy: Path):
    adapter_config = Path(output_dir) / "adapter_config.json"
    config = json.loads(adapter_config.read_text())
    config["base_model_name_or_path"] = str(base_copy.resolve())
    adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def bundle_merged_start(output_dir, start_model) -> Path:
    """Save `start_model` (an earlier stage's adapter merged into its base, the model this run's adapter
    trained on) as `output_dir/base/` and name it in adapter_config.json, as `bundle_packaged_base` does
    for the packaged base: the base exists nowhere else on disk."""
    copy = Path(output_dir) / BASE_FOLDER
    start_model.save_pretrained(copy)
    _point_adapter_at(output_dir, copy)
    return copy


# Where a run on the packaged base keeps its copy of that base, beside the adapter.
BASE_FOLDER = "base"
# The files that make the packaged base a model folder. Its card, metrics and loss plot stay behind,
# and its tokenizer is the run's own, saved at the output folder's root.
BASE_MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors")
# The classes a copy of the packaged base offers as remote code: the reward recipe loads the base as a
# sequence classifier, while a saved language model's auto_map would name only its own class.
REMOTE_CODE_FILES = ("configuration_gpt.py", "modeling_gpt.py", "speed_paths.py")  # what save_pretrained copies
BASE_AUTO_MAP = {
    "AutoConfig": "configuration_gpt.GPTConfig",
    "AutoModel": "modeling_gpt.GPTModel",
    "AutoModelForCausalLM": "modeling_gpt.GPTForCausalLM",
    "AutoModelForSequenceClassification": "modeling_gpt.GPTForSequenceClassification",
}


def bundle_packaged_base(output_dir, base_model: str | None) -> Path | None:
    """Copy the packaged base model into `output_dir/base/` and name that copy in adapter_config.json;
    returns the copy, or None when the adapter's base is not the packaged one.

    PEFT records the base as the path it was loaded from: for the packaged base, a folder inside this
    installation of hf_llm, which moves with every install and means nothing elsewhere. With its own
    copy (5 MB, the weights file as shipped, our model as remote code) the output folder is whole: the
    adapter loads onto its base with plain transformers and PEFT, from any directory, and the copy goes
    to the Hub with the adapter. adapter_config.json names the copy by absolute path, as PEFT names any
    local base: PEFT resolves the name against the working directory, not the adapter's folder, so a
    relative name would load only from inside the output folder (and could pick up an unrelated
    `base/`). The card's loading code does not rely on it: it loads `base/` beside the adapter.
    """
    if not _is_packaged_default(base_model):
        return None
    from .arguments import DEFAULT_BASE_MODEL

    from ..models import gpt

    copy = Path(output_dir) / BASE_FOLDER
    copy.mkdir(exist_ok=True)
    for pattern in BASE_MODEL_FILES:
        for source in sorted(Path(DEFAULT_BASE_MODEL).glob(pattern)):
            shutil.copyfile(source, copy / source.name)
    # The remote code, from this package (the files save_pretrained copies), and the auto_map naming it.
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(Path(gpt.__file__).parent / name, copy / name)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "auto_map": BASE_AUTO_MAP}, indent=2, sort_keys=True) + "\n")
    _point_adapter_at(output_dir, copy)
    return copy


def how_to_load(output_dir, base_model: str | None, *, task: str, is_adapter: bool, pushed_as: str | None = None,
                merged: bool = False) -> str:
    """The model card's loading code for a finished run in `output_dir`, pushed to the Hub as `pushed_as`
    (or not pushed: None).

    A pushed run's code loads from the Hub and names no local path (the card goes up with the run); an
    unpushed run's code names `output_dir` by its absolute path, so it runs from any working directory.
    It needs transformers (and PEFT for an adapter), not hf_llm: the folders carry our model as
    remote code, hence `trust_remote_code=True`.

    `task` is "causal_lm" or "reward". A full model loads by itself. An adapter loads with PEFT onto
    its base: a Hub base is named in adapter_config.json, so PEFT's Auto class finds it; the packaged
    base is the copy in `base/` (`bundle_packaged_base`); another local base is loaded from its path,
    a placeholder once pushed (the path means nothing on another machine). With `merged`, the code also
    loads `merged/`, the full model with the adapter folded in (`--merge_adapter`).

    Files in subfolders are read from a local folder: from the Hub, transformers' `subfolder=` would
    meet the adapter_config.json at the repository's root and load the base it names instead.
    """
    reward = task == "reward"
    auto = "AutoModelForSequenceClassification" if reward else "AutoModelForCausalLM"
    labels = ", num_labels=1" if reward else ""
    bundled = is_adapter and (_is_packaged_default(base_model) or _is_adapter_stage(base_model))
    merged = merged and is_adapter  # only an adapter run has a merged copy
    transformers_names = set() if reward else {"AutoTokenizer"}
    imports, lines = [], []
    tokenizer_first = False
    if pushed_as is None:
        lines.append(f"folder = {_quoted(Path(output_dir).resolve())}")
        where = "folder"
    elif bundled or merged:
        imports.append("from huggingface_hub import snapshot_download")
        lines.append(f"folder = snapshot_download({_quoted(pushed_as)})  # a local copy of the repository")
        where = "folder"
    else:
        where = _quoted(pushed_as)

    if not is_adapter:
        transformers_names.add(auto)
        lines.append(f"model = {auto}.from_pretrained({where}, trust_remote_code=True)")
    elif not _is_local(base_model):
        peft_auto = f"AutoPeft{auto.removeprefix('Auto')}"
        imports.append(f"from peft import {peft_auto}")
        lines.append(f"model = {peft_auto}.from_pretrained({where}{labels}, trust_remote_code=True)")
    else:
        transformers_names.add(auto)
        imports.append("from peft import PeftModel")
        if bundled and _is_adapter_stage(base_model):
            lines.append("# The base model, the adapter it started from merged in, travels with the adapter in base/.")
            base = f'f"{{folder}}/{BASE_FOLDER}"'
        elif bundled:
            lines.append("# The base model, stdlib-gpt (shipped with hf_llm), travels with the adapter in base/.")
            base = f'f"{{folder}}/{BASE_FOLDER}"'
        elif pushed_as is None:
            base = _quoted(Path(base_model).expanduser().resolve())
        else:
            name = Path(base_model).name
            lines.append(f"# The base model was a local checkpoint ({name}): load it from where you keep it.")
            base = _quoted(f"path/to/{name}")
        lines.append(f"base = {auto}.from_pretrained({base}{labels}, trust_remote_code=True)")
        tokenizer_first = _adds_tokens(output_dir) and not reward
        if tokenizer_first:
            # PEFT's Auto classes resize the base to the adapter's tokenizer themselves; PeftModel does not.
            lines.append(f"tokenizer = AutoTokenizer.from_pretrained({where}, trust_remote_code=True)")
            lines.append("base.resize_token_embeddings(len(tokenizer))  # the chat template's tokens: the adapter holds their rows")
        lines.append(f"model = PeftModel.from_pretrained(base, {where})")
    if not reward and not tokenizer_first:
        # trust_remote_code: a character-level tokenizer is hf_llm code, carried by the folder.
        lines.append(f"tokenizer = AutoTokenizer.from_pretrained({where}, trust_remote_code=True)")
    if merged:
        transformers_names.add(auto)
        lines.append("")
        lines.append("# merged/ holds the base model with the adapter folded in: a full model, no PEFT needed.")
        lines.append(f'merged = {auto}.from_pretrained(f"{{folder}}/merged", trust_remote_code=True)')
    if transformers_names:
        imports.append(f"from transformers import {', '.join(sorted(transformers_names))}")
    return "\n".join(sorted(imports)) + "\n\n" + "\n".join(lines)


def _adds_tokens(output_dir) -> bool:
    """Whether the adapter in `output_dir` trains tokens its run added to the vocabulary (a chat template's)."""
    try:
        return bool(json.loads((Path(output_dir) / "adapter_config.json").read_text()).get("trainable_token_indices"))
    except (OSError, ValueError):
        return False


def _quoted(text) -> str:
    """`text` as a Python string literal (double-quoted, escaped; JSON's escapes are Python's)."""
    return json.dumps(str(text))


PIPELINE_TAGS = {"causal_lm": "text-generation", "reward": "text-classification"}


def card_eval_results(results: dict, task: str, dataset: str) -> list:
    """The held-out figures among `results` (`eval_*` numbers, timings left out) as huggingface_hub
    `EvalResult`s, the model card's `model-index`, for `task` ("causal_lm" or "reward") on `dataset`."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(task_type=PIPELINE_TAGS[task], dataset_type=dataset, dataset_name=dataset, metric_type=name,
                   metric_value=value)
        for name, value in sorted(results.items())
        if name.startswith("eval_") and isinstance(value, (int, float))
        and not any(part in name for part in ("runtime", "per_second", "num_tokens"))  # timings are no results
    ]


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
    from huggingface_hub import ModelCard, ModelCardData

    pipeline_tag = PIPELINE_TAGS[task]
    eval_results = card_eval_results(results, task, datasets[0]) if datasets else []
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
