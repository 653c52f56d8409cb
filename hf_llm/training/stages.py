"""One table of a chain of runs (SFT, reward model, DPO, RL, evaluation): each stage's held-out figures next to
their value before that stage, read from what the runs left in their output folders.

    python -m hf_llm.training.stages outputs/sft_lora outputs/reward_modeling outputs/dpo outputs/rl outputs/evaluate
"""

import json
import sys
from pathlib import Path

from .errors import RecipeError
from .output_dir import read_run_file


def stage_rows(folder) -> list[tuple[str, str, float | None, float, int | None]]:
    """(stage, figure, before, after, seconds) for each headline figure of the finished run in `folder`, or for
    each figure of an evaluation (`eval_results.json`, from recipes/evaluate.py: no before-value)."""
    folder = Path(folder)
    if (folder / "eval_results.json").is_file() and not (folder / "all_results.json").is_file():
        figures = json.loads((folder / "eval_results.json").read_text())
        return [(f"evaluate ({folder.name})", name.removeprefix("eval_"), None, value, None) for name, value in figures.items()]
    run = read_run_file(folder)
    if run is None or not run.get("completed") or not (folder / "all_results.json").is_file():
        raise RecipeError(f"{folder} holds no finished run: run its recipe first (or check the path).")
    metrics = json.loads((folder / "all_results.json").read_text())
    rows = []
    for name, before in run.get("headline", {}).items():
        if isinstance(metrics.get(name), (int, float)):
            rows.append((run["recipe"], name.removeprefix("eval_"), metrics.get(before) if before else None,
                         metrics[name], run.get("seconds")))
    return rows


def stage_table(folders) -> str:
    """The table of `stage_rows` over `folders`, in order, as Markdown."""
    lines = ["| stage | held-out figure | before the stage | after the stage | wall time |", "|---|---|---|---|---|"]
    for folder in folders:
        for i, (stage, figure, before, after, seconds) in enumerate(stage_rows(folder)):
            was = "" if before is None else f"{before:.4f}"
            took = "" if seconds is None or i else f"{seconds // 60} min {seconds % 60:02d} s"  # once per stage
            lines.append(f"| {stage if not i else ''} | {figure} | {was} | {after:.4f} | {took} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    folders = sys.argv[1:] if argv is None else argv
    if not folders:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        print(stage_table(folders))
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
