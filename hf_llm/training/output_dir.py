"""The output folder of a run: deciding, before anything is written, whether a run may use it (new,
resumed, or refused), and recording which recipe owns it and whether the run finished."""

import json
import logging
import shutil
from pathlib import Path

from transformers.trainer_utils import sort_checkpoints

from .errors import RecipeError

logger = logging.getLogger("hf_llm")

RUN_FILE = "hf_llm_run.json"  # written when training starts, marked complete when the run ends


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest `checkpoint-N` in `output_dir` whose write finished, or None.

    The Trainer writes trainer_state.json last, so a checkpoint killed mid-write lacks it, or holds it cut
    short (killed while that file was written), and is skipped.
    """
    if not Path(output_dir).is_dir():
        return None
    complete = [c for c in sort_checkpoints(str(output_dir)) if isinstance(_read_json(Path(c) / "trainer_state.json"), dict)]
    return complete[-1] if complete else None


def _read_json(path: Path):
    """The JSON value in `path`, or None where the file is missing, unreadable or cut short."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_run_file(output_dir) -> dict | None:
    return _read_json(Path(output_dir) / RUN_FILE)


def mark_run(output_dir, recipe: str, completed: bool, **extra):
    """Record in output_dir which recipe owns it and whether it finished."""
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    data = {**(read_run_file(path) or {}), "recipe": recipe, "completed": completed, **extra}
    (path / RUN_FILE).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def prepare_output_dir(output_dir, overwrite: bool, resume_from_checkpoint: str | None, recipe: str | None = None) -> str | None:
    """Decide what to do with `output_dir` before anything is written; returns the checkpoint to resume.

    - missing or empty: a new run;
    - holding checkpoints of an unfinished run of the same `recipe`: resume from the last complete one
      (as transformers' examples do);
    - holding a finished run, another recipe's run or other files: refused, unless `overwrite` (then
      it is emptied).
    Nothing is created here: the folder appears only when training starts.
    """
    path = Path(output_dir)
    if resume_from_checkpoint:
        if not Path(resume_from_checkpoint).is_dir():
            raise RecipeError(f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint folder.")
        return str(resume_from_checkpoint)
    if not path.exists() or not any(path.iterdir()):
        return None
    if overwrite:
        logger.warning("--overwrite_output_dir: removing the previous contents of %s", path)
        shutil.rmtree(path)
        return None
    run = read_run_file(path)
    checkpoint = last_complete_checkpoint(path)
    other_recipe = run is not None and recipe is not None and run.get("recipe") not in (None, recipe)
    if checkpoint and run is not None and not run.get("completed") and not other_recipe:
        logger.warning("Resuming the unfinished run in %s from %s", path, checkpoint)
        return checkpoint
    if other_recipe:
        state = "a finished" if run.get("completed") else "an unfinished"
        what = f"{state} run of the {run['recipe']} recipe (this is {recipe})"
    else:
        what = "a finished run" if run and run.get("completed") else "files of another run"
    raise RecipeError(
        f"output_dir {path} already holds {what}. Choose a new --output_dir, pass --overwrite_output_dir to "
        f"replace it, or --resume_from_checkpoint to continue from one of its checkpoints."
    )
