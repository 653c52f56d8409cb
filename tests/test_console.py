"""What a user sees: a default `accelerate launch recipes/sft_lora.py` (or `recipes/pretrain.py`) prints no
third-party warning."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

# Lines that are warnings: Python's warnings (and the source line they quote), logging records at
# WARNING level, transformers' "[transformers]" notices and load reports, accelerate's launcher notice.
# transformers' logger prints a bare message, so its warnings are known by their words ("We strongly
# recommend passing in an `attention_mask`...", "You may ignore this warning if...", "... is deprecated").
WARNING_LINE = re.compile(
    r"(?i:warning)|\bdeprecat|strongly recommend|^\[transformers\]|LOAD REPORT|were not passed to `accelerate launch`"
)
OWN_WARNING = re.compile(r"\bWARNING hf_llm:")
# accelerate's launcher, before the recipe starts, says on a CPU without OMP_NUM_THREADS that it chose
# the thread count itself. It is the launcher's own notice about its own choice, which the recipe
# cannot see or change (README: set OMP_NUM_THREADS or --num_cpu_threads_per_process to choose).
LAUNCHER_THREADS_NOTICE = re.compile(
    r"^The following values were not passed to `accelerate launch`.*\n\t`--num_cpu_threads_per_process` was set to `\d+`[^\n]*\n"
    r"To avoid this warning[^\n]*\n",
    re.MULTILINE,
)


# The default runs, shortened: the same recipe, data, model and settings, fewer steps. Pretraining's
# smaller blocks make some block start or end at an end-of-text (GPT-2's pad id too) within two steps,
# as the full run's blocks do: what transformers' padding check looks at.
SHORT_DEFAULT_RUNS = {
    "sft_lora": ["--max_steps", "2", "--max_eval_samples", "4", "--sample_max_new_tokens", "2"],
    "pretrain": ["--max_steps", "2", "--max_train_samples", "300", "--max_eval_samples", "30", "--block_size", "64",
                 "--sample_max_new_tokens", "2"],
}


@pytest.mark.parametrize("recipe", list(SHORT_DEFAULT_RUNS))
def test_default_launch_prints_no_third_party_warning(tmp_path, recipe):
    # A user's machine after the README's one-time `accelerate config default`, in a fresh HF_HOME.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONWARNINGS", None)
    accelerate = [sys.executable, "-m", "accelerate.commands.accelerate_cli"]
    subprocess.run([*accelerate, "config", "default"], env=env, check=True, capture_output=True, timeout=120)
    result = subprocess.run(
        [*accelerate, "launch", f"recipes/{recipe}.py", "--output_dir", str(tmp_path / recipe), *SHORT_DEFAULT_RUNS[recipe]],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    output = LAUNCHER_THREADS_NOTICE.sub("", output, count=1)
    lines = [line for chunk in output.splitlines() for line in chunk.split("\r")]
    third_party = [line for line in lines if WARNING_LINE.search(line) and not OWN_WARNING.search(line)]
    assert not third_party, "\n".join(third_party)
    if recipe == "sft_lora":
        # Our own warnings still show (the embedded instructions have rows longer than the default length).
        assert any(OWN_WARNING.search(line) for line in lines), output[-2000:]
