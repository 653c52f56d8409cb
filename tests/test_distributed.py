"""Two processes on the CPU (gloo) through `accelerate launch`, as CPU-only users run it: DDP (`--multi_gpu`)
and FSDP 2 (`recipes/accelerate_configs/fsdp.yaml`). Per-step losses are read from the Trainer's own
checkpoint files (`checkpoint-N/trainer_state.json`)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT

RECIPES = REPO_ROOT / "recipes"
FSDP_CONFIG = RECIPES / "accelerate_configs" / "fsdp.yaml"
LAUNCH_RECIPE = REPO_ROOT / "tests" / "launch_recipe.py"
QUIET = ["--logging_steps", "1", "--disable_tqdm", "true", "--report_to", "none"]

# DDP and FSDP 2 run the same float32 arithmetic on the same batches; they differ only in how gradients
# are reduced (all-reduce vs reduce-scatter) and how the clipping norm is summed (whole tensors vs
# shards), which changes float32 rounding in the last bits. Measured here: losses within 2e-7 relative,
# weights within 5e-6. A missing or wrong gradient reduction is far outside both: each step here moves the
# loss by 2e-2 to 8e-2 and Adam moves a weight by up to the learning rate (3e-3, 5e-3) per step.
LOSS_RTOL = 1e-5
WEIGHTS_ATOL = 1e-4


def launch(args, *, port: int, config: Path | None = None, timeout=600, cwd: Path = REPO_ROOT, input: str | None = None):  # noqa: A002
    """`accelerate launch` with two processes: DDP (`--multi_gpu`), or the given config file, from `cwd`, with
    `input` on standard input; this checkout's hf_llm first on the path. Mixed precision is off: FSDP's bf16
    needs a GPU here, and equal arithmetic is what lets DDP and FSDP runs be compared."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    how = ["--config_file", str(config)] if config else ["--multi_gpu"]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *args,
    ]
    return subprocess.run(command, cwd=cwd, env=env, input=input, capture_output=True, text=True, timeout=timeout)


def assert_succeeded(result):
    output = result.stdout + result.stderr
    # Show the first error: the launcher's own report, at the end, names only the exit signal.
    errors = [i for i in (output.find("Traceback"), output.find("terminate called")) if i >= 0]
    start = max(min(errors) - 1000, 0) if errors else max(len(output) - 4000, 0)
    assert result.returncode == 0, output[start : start + 6000]


def step_losses(checkpoint: Path) -> dict[int, float]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def assert_fsdp_checkpoint(checkpoint: Path):
    # Only the Trainer's FSDP path writes these; a launch that fell back to DDP writes optimizer.pt instead.
    assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "optimizer.bin").is_file()
    assert not (checkpoint / "optimizer.pt").exists()


def assert_same_tensors(left: dict, right: dict):
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=0, atol=WEIGHTS_ATOL, msg=lambda text: f"{key}: {text}")


def assert_same_adapter(a: Path, b: Path):
    assert_same_tensors(load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors"))


def assert_same_model(a: Path, b: Path):
    # Compared as loaded: FSDP's gathered state dict no longer shares the tied embedding's storage, so its
    # file also holds lm_head.weight (a copy), which loading ties again.
    from hf_llm import GPTForCausalLM

    assert_same_tensors(GPTForCausalLM.from_pretrained(a).state_dict(), GPTForCausalLM.from_pretrained(b).state_dict())


# ---------------------------------------------------------------- pretraining: DDP, FSDP, FSDP resumed

def pretrain_args(out: Path, config: Path) -> list[str]:
    """Six steps of the embedded default at a learning rate where each step visibly moves the loss, a checkpoint every 3."""
    return [
        str(RECIPES / "pretrain.py"), "--config", str(config), "--output_dir", str(out),
        "--max_steps", "6", "--max_train_samples", "300", "--n_layer", "2", "--n_embd", "32", "--bpe_vocab_size", "400",
        "--learning_rate", "3e-3", "--warmup_steps", "0", "--eval_strategy", "no", "--max_eval_samples", "30",
        "--save_strategy", "steps", "--save_steps", "3", *QUIET,
    ]


@pytest.fixture(scope="module")
def pretrain_config(tmp_path_factory) -> Path:
    # Sample prompts at each evaluation: every process generates under FSDP (the main one writes).
    path = tmp_path_factory.mktemp("config") / "pretrain.yaml"
    path.write_text("sample_prompts: ['def ']\nsample_max_new_tokens: 4\n")
    return path


@pytest.fixture(scope="module")
def ddp_pretrain(tmp_path_factory, pretrain_config):
    out = tmp_path_factory.mktemp("ddp_pretrain") / "out"
    return out, launch(pretrain_args(out, pretrain_config), port=29521)


@pytest.fixture(scope="module")
def fsdp_pretrain(tmp_path_factory, pretrain_config):
    out = tmp_path_factory.mktemp("fsdp_pretrain") / "out"
    return out, launch([str(LAUNCH_RECIPE), *pretrain_args(out, pretrain_config)], port=29522, config=FSDP_CONFIG)


def test_pretrain_fsdp_ends_like_ddp(ddp_pretrain, fsdp_pretrain):
    (ddp_out, ddp), (fsdp_out, fsdp) = ddp_pretrain, fsdp_pretrain
    assert_succeeded(ddp)
    assert_succeeded(fsdp)
    assert_fsdp_checkpoint(fsdp_out / "checkpoint-6")
    ddp_losses, fsdp_losses = step_losses(ddp_out / "checkpoint-6"), step_losses(fsdp_out / "checkpoint-6")
    assert list(ddp_losses) == list(range(1, 7))
    assert ddp_losses[6] < ddp_losses[1] - 0.1  # training moves the loss: equal losses are not equal by default
    assert fsdp_losses == pytest.approx(ddp_losses, rel=LOSS_RTOL)
    # The final model, gathered from the shards by FSDP, is the model DDP trained.
    assert_same_model(ddp_out, fsdp_out)


def test_fsdp_checkpoint_resumes_like_an_uninterrupted_run(tmp_path, fsdp_pretrain, pretrain_config):
    uninterrupted_out, uninterrupted = fsdp_pretrain
    assert_succeeded(uninterrupted)
    out = tmp_path / "out"
    stopped = launch([str(LAUNCH_RECIPE), "--stop-after-step", "3", *pretrain_args(out, pretrain_config)], port=29523, config=FSDP_CONFIG)
    assert stopped.returncode != 0 and "stopped by the test after step 3" in stopped.stdout + stopped.stderr
    assert_fsdp_checkpoint(out / "checkpoint-3")
    assert not (out / "checkpoint-6").exists()

    # Re-running into the same output_dir resumes the unfinished run from its last checkpoint.
    resumed = launch([str(LAUNCH_RECIPE), *pretrain_args(out, pretrain_config)], port=29524, config=FSDP_CONFIG)
    assert_succeeded(resumed)
    assert "Resuming the unfinished run" in resumed.stdout + resumed.stderr
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    losses, expected = step_losses(out / "checkpoint-6"), step_losses(uninterrupted_out / "checkpoint-6")
    assert losses == pytest.approx(expected, rel=LOSS_RTOL)
    assert_same_model(uninterrupted_out, out)


def test_fsdp_pretrained_model_loads_as_its_card_says(fsdp_pretrain):
    from test_recipes import run_card_snippet

    out, result = fsdp_pretrain
    assert_succeeded(result)
    config = json.loads((out / "config.json").read_text())
    # Checked before loading: loading torch's copied FSDP sources would register torch's operators a second time.
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_gpt.GPTForCausalLM"
    assert (out / "modeling_gpt.py").is_file() and not list(out.glob("_fsdp_*.py"))
    assert type(run_card_snippet(out)["model"]).__name__ == "GPTForCausalLM"


# ---------------------------------------------------------------- SFT with LoRA: DDP, FSDP

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
    # The main process speaks for both: no line of the run is printed twice (once per process).
    lines = [line.strip() for chunk in (result.stdout + result.stderr).splitlines() for line in chunk.split("\r")]
    repeated = {line for line in lines if line and lines.count(line) > 1}
    assert not repeated, sorted(repeated)
    # Outputs were written once, by rank 0: one answers file with one line per prompt, one final state.
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    assert len((out / "answers.jsonl").read_text().splitlines()) == 3
    files = sorted(p.name for p in Path(out).iterdir())
    assert not any(name.startswith("rank") for name in files)


def test_dpo_ddp_two_processes_from_the_sft_stage(ddp_sft, tmp_path):
    """dpo.py under `accelerate launch --multi_gpu --num_processes 2`, starting from the DDP SFT run's adapter."""
    sft_out, sft_result = ddp_sft
    assert_succeeded(sft_result)
    out = tmp_path / "dpo"
    result = launch([str(LAUNCH_RECIPE), "--print-weights-digest", str(RECIPES / "dpo.py"), "--model_name_or_path", str(sft_out),
                     "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
                     "--max_eval_samples", "8", "--save_strategy", "no", *QUIET], port=29531)
    assert_succeeded(result)
    digests = dict(re.findall(r"rank (\d): weights at train end sha256 ([0-9a-f]{64})", result.stdout + result.stderr))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    metrics = json.loads((out / "all_results.json").read_text())
    assert metrics["eval_initial_rewards/margins"] == 0 and "eval_preference_accuracy" in metrics
    assert (out / "adapter_model.safetensors").is_file() and (out / "base" / "config.json").is_file()


@pytest.fixture(scope="module")
def fsdp_sft(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_sft") / "out"
    # A short collective timeout: should the ranks disagree on a collective, the launch ends in a minute, not half an hour.
    return out, launch([str(LAUNCH_RECIPE), *sft_args(out), "--ddp_timeout", "60"], port=29526, config=FSDP_CONFIG, timeout=300)


def test_sft_lora_fsdp_trains_like_ddp(ddp_sft, fsdp_sft):
    # Read from the last checkpoint, which the Trainer writes before the recipe's end (see the next test).
    (ddp_out, ddp), (fsdp_out, _) = ddp_sft, fsdp_sft
    assert_succeeded(ddp)
    checkpoint = fsdp_out / "checkpoint-4"
    assert_fsdp_checkpoint(checkpoint)
    ddp_losses, fsdp_losses = step_losses(ddp_out / "checkpoint-4"), step_losses(checkpoint)
    assert list(ddp_losses) == [1, 2, 3, 4]
    assert fsdp_losses == pytest.approx(ddp_losses, rel=LOSS_RTOL)
    assert_same_adapter(ddp_out / "checkpoint-4", checkpoint)


def test_sft_lora_fsdp_run_finishes(ddp_sft, fsdp_sft):
    (ddp_out, _), (fsdp_out, fsdp) = ddp_sft, fsdp_sft
    assert_succeeded(fsdp)
    assert_same_adapter(ddp_out, fsdp_out)
    assert len((fsdp_out / "answers.jsonl").read_text().splitlines()) == 3


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
