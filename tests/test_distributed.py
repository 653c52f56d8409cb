"""Two processes on the CPU (gloo) through `accelerate launch --multi_gpu`, as CPU-only users run it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

RECIPES = REPO_ROOT / "recipes"
LAUNCH_RECIPE = REPO_ROOT / "tests" / "launch_recipe.py"
QUIET = ["--logging_steps", "1", "--disable_tqdm", "true", "--report_to", "none"]


def launch(args, *, port: int, config: Path | None = None, timeout=600):
    """`accelerate launch` with two processes: DDP (`--multi_gpu`), or the given config file; fp32."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    how = ["--config_file", str(config)] if config else ["--multi_gpu"]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *args,
    ]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def assert_succeeded(result):
    output = result.stdout + result.stderr
    # Show the first error: the launcher's own report, at the end, names only the exit signal.
    errors = [i for i in (output.find("Traceback"), output.find("terminate called")) if i >= 0]
    start = max(min(errors) - 1000, 0) if errors else max(len(output) - 4000, 0)
    assert result.returncode == 0, output[start : start + 6000]


# ---------------------------------------------------------------- SFT with LoRA

def sft_args(out: Path) -> list[str]:
    """Four steps with a checkpoint at the end; no warm-up, so every step's update shows in the next loss."""
    return [
        str(RECIPES / "sft_lora.py"), "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "4",
        "--learning_rate", "5e-3", "--warmup_steps", "0", "--max_eval_samples", "8", "--sample_max_new_tokens", "4",
        "--save_strategy", "steps", "--save_steps", "4", *QUIET,
    ]


@pytest.fixture(scope="module")
def ddp_sft(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_sft") / "out"
    return out, launch([str(LAUNCH_RECIPE), "--print-weights-digest", *sft_args(out)], port=29525)


def test_sft_lora_ddp_two_processes(ddp_sft):
    out, result = ddp_sft
    assert_succeeded(result)
    # Each rank prints a digest of its trained weights (tests/launch_recipe.py): the replicas stayed in sync.
    digests = dict(re.findall(r"rank (\d): weights at train end sha256 ([0-9a-f]{64})", result.stdout + result.stderr))
    assert set(digests) == {"0", "1"}, result.stdout[-2000:]
    assert digests["0"] == digests["1"]
    # Outputs were written once, by rank 0: one answers file with one line per prompt, one final state.
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    assert len((out / "answers.jsonl").read_text().splitlines()) == 3
    files = sorted(p.name for p in Path(out).iterdir())
    assert not any(name.startswith("rank") for name in files)


# ---------------------------------------------------------------- faults and metrics across processes

def test_a_failing_rank_ends_the_launch_without_hanging(tmp_path):
    import time

    out = tmp_path / "fault"
    start = time.time()
    result = launch([str(REPO_ROOT / "tests" / "ddp_fault_script.py"), str(out)], port=29527, timeout=300)
    assert result.returncode != 0
    assert time.time() - start < 240
    assert "injected failure on rank 1" in result.stdout + result.stderr
    # The checkpoint written before the failure is intact and loads.
    from hf_llm import GPTForCausalLM

    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "trainer_state.json").is_file()
    GPTForCausalLM.from_pretrained(checkpoint)


def test_reward_pair_metrics_count_each_pair_once_across_processes(tmp_path):
    """5 pairs over 2 processes at batch 4: the last batch is padded with copies, which must not count."""
    script = REPO_ROOT / "tests" / "reward_pairs_script.py"
    result = launch([str(script), str(tmp_path / "two")], port=29528)
    assert_succeeded(result)
    two = json.loads(result.stdout.split("METRICS ")[1].splitlines()[0])
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    one = json.loads(single.stdout.split("METRICS ")[1].splitlines()[0])
    assert two["eval_accuracy"] == pytest.approx(one["eval_accuracy"]) and two["eval_margin"] == pytest.approx(one["eval_margin"], abs=1e-4)
