"""hf_llm's evaluation metrics as `evaluate` modules, one folder each, shipped inside the package.

Each loads with `evaluate.load(str(metric_path(name)))` from this local folder, so nothing needs the
Hub. They take the numbers and strings a library function computed (summed losses, scores, texts),
not models: `hf_llm.training.evaluation` runs the models and feeds them.
"""

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
# `perplexity` also gives the response loss: the same token-weighted mean, over the response tokens only.
METRIC_NAMES = ("perplexity", "pairwise_accuracy", "win_rate", "rouge_l")


def metric_path(name: str) -> Path:
    """The folder of the metric module `name` (one of METRIC_NAMES)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"No hf_llm metric named {name!r}; the metrics are {', '.join(METRIC_NAMES)}.")
    return METRICS_DIR / name
