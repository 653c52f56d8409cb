"""Two-process DDP on the CPU (gloo) through `accelerate launch --multi_gpu`, as CPU-only users run it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT


def launch(args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        *args,
    ]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_sft_lora_ddp_two_processes(tmp_path):
    out = tmp_path / "ddp"
    result = launch([
        str(REPO_ROOT / "recipes" / "sft_lora.py"), "--output_dir", str(out), "--max_steps", "4",
        "--per_device_train_batch_size", "4", "--max_eval_samples", "8", "--sample_max_new_tokens", "4",
        "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true", "--report_to", "none",
    ])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d): trained-weights sha256 ([0-9a-f]{64})", result.stdout + result.stderr))
    assert set(digests) == {"0", "1"}, result.stdout[-2000:]
    assert digests["0"] == digests["1"]
    # Outputs were written once, by rank 0: one answers file with one line per prompt, one final state.
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    assert len((out / "answers.jsonl").read_text().splitlines()) == 3
    files = sorted(p.name for p in Path(out).iterdir())
    assert not any(name.startswith("rank") for name in files)


def test_a_failing_rank_ends_the_launch_without_hanging(tmp_path):
    import time

    out = tmp_path / "fault"
    start = time.time()
    result = launch([str(REPO_ROOT / "tests" / "ddp_fault_script.py"), str(out)], timeout=300)
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
    result = launch([str(script), str(tmp_path / "two")])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    two = json.loads(result.stdout.split("METRICS ")[1].splitlines()[0])
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    one = json.loads(single.stdout.split("METRICS ")[1].splitlines()[0])
    assert two["eval_accuracy"] == pytest.approx(one["eval_accuracy"]) and two["eval_margin"] == pytest.approx(one["eval_margin"], abs=1e-4)
