"""Bad input refused before the first step with a fix and nothing written; pickles refused; no secrets leak;
runs killed with SIGKILL resume to the same weights."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_recipes import RECIPES, run_recipe

from conftest import REPO_ROOT

TINY_PRETRAIN = ["--n_layer", "1", "--n_embd", "32", "--bpe_vocab_size", "300", "--max_train_samples", "100",
                 "--max_eval_samples", "10", "--sample_prompts", "def ", "--sample_max_new_tokens", "2",
                 "--disable_tqdm", "true", "--logging_steps", "1"]


def refused(capsys, name, *args) -> str:
    with pytest.raises(SystemExit) as err:
        run_recipe(name, *args)
    assert err.value.code == 2
    return capsys.readouterr().err


# --- bad input ----------------------------------------------------------------------------------


def test_missing_data_file(tmp_path, capsys):
    message = refused(capsys, "sft_lora", "--output_dir", str(tmp_path / "out"), "--dataset_name", str(tmp_path / "nope.json"))
    assert "nope.json" in message
    assert not (tmp_path / "out").exists()


def test_empty_data_file(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    message = refused(capsys, "sft_lora", "--output_dir", str(tmp_path / "out"), "--dataset_name", str(tmp_path / "empty.jsonl"))
    assert "empty" in message.lower()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "recipe, args, words",
    [
        ("sft_lora", ["--model_name_or_path", "./no/such/model"], ["./no/such/model", "no such folder"]),
        ("generate", ["--model_name_or_path", "/no/such/model"], ["/no/such/model", "no such folder"]),
        ("pretrain", ["--stride", "-1", *TINY_PRETRAIN], ["--stride", "-1"]),
        ("pretrain", ["--stride", "0", *TINY_PRETRAIN], ["--stride", "0"]),
        ("pretrain", ["--block_size", "60000", "--n_positions", "60000", *TINY_PRETRAIN], ["fewer than one block", "--block_size"]),
        ("pretrain", [*TINY_PRETRAIN, "--max_eval_samples", "0"], ["evaluation texts are empty", "--max_eval_samples"]),
        ("sft_lora", ["--max_eval_samples", "0"], ["test split has no rows", "--max_eval_samples"]),
        ("generate", ["--prompt", "def ", "--input", "x"], ["--input", "--instruction"]),
    ],
    ids=["missing-model-folder", "generate-missing-model", "negative-stride", "zero-stride", "texts-shorter-than-a-block",
         "empty-eval-texts", "empty-eval-rows", "input-without-instruction"],
)
def test_bad_model_path_and_packing_settings_are_refused(tmp_path, capsys, recipe, args, words):
    output = [] if recipe == "generate" else ["--output_dir", str(tmp_path / "out")]
    message = refused(capsys, recipe, *output, *args)
    for word in words:
        assert word in message, message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "row, words",
    [
        ({"instruction": "Say hi", "input": ""}, ["row 1", "output"]),
        ({"instruction": "Say hi", "input": "", "output": 42}, ["row 1", "output"]),
        ({"instruction": "Say hi", "input": "", "output": ""}, ["row 1", "output"]),
    ],
    ids=["missing-field", "wrong-type", "empty-response"],
)
def test_bad_row_is_named(tmp_path, capsys, row, words):
    rows = [{"instruction": "Add", "input": "1 and 2", "output": "3"}, row]
    (tmp_path / "data.json").write_text(json.dumps(rows))
    message = refused(capsys, "sft_lora", "--output_dir", str(tmp_path / "out"), "--dataset_name", str(tmp_path / "data.json"))
    for word in words:
        assert word in message
    assert not (tmp_path / "out").exists()


def test_text_that_is_not_utf8(tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    message = refused(capsys, "pretrain", "--output_dir", str(tmp_path / "out"), "--dataset_name", str(tmp_path / "latin1.txt"))
    assert "UTF-8" in message or "utf-8" in message
    assert not (tmp_path / "out").exists()


def test_too_long_rows_refused_by_flag(tmp_path, capsys):
    rows = [{"instruction": "Repeat", "input": "", "output": "word " * 400}, {"instruction": "Hi", "input": "", "output": "Hello"}]
    (tmp_path / "long.json").write_text(json.dumps(rows))
    message = refused(capsys, "sft_lora", "--output_dir", str(tmp_path / "out"), "--dataset_name", str(tmp_path / "long.json"),
                      "--too_long", "refuse")
    assert "rows [0]" in message and "too_long truncate" in message
    assert not (tmp_path / "out").exists()


def test_tokenizer_and_model_vocab_disagree(tmp_path, capsys, shared_data):
    message = refused(capsys, "sft_lora", "--output_dir", str(tmp_path / "out"), "--tokenizer_name_or_path", str(shared_data / "gpt2-tokenizer"))
    assert "50257" in message and "resize_token_embeddings" in message
    assert not (tmp_path / "out").exists()


def test_bad_model_size_config(tmp_path, capsys):
    message = refused(capsys, "pretrain", "--output_dir", str(tmp_path / "out"), "--n_embd", "100", "--n_head", "3")
    assert "divisible by n_head" in message
    assert not (tmp_path / "out").exists()


def test_lora_target_that_does_not_exist(tmp_path, capsys):
    message = refused(capsys, "sft_lora", "--output_dir", str(tmp_path / "out"), "--lora_target_modules", "q_proj")
    assert "q_proj" in message and "c_attn" in message
    assert not (tmp_path / "out").exists()


def test_output_dir_of_another_run_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's files")
    message = refused(capsys, "pretrain", "--output_dir", str(out), "--max_steps", "1", *TINY_PRETRAIN)
    assert "overwrite_output_dir" in message
    assert (out / "notes.txt").read_text() == "someone else's files"
    run_recipe("pretrain", "--output_dir", str(out), "--max_steps", "1", "--overwrite_output_dir", "true", "--save_strategy", "no", *TINY_PRETRAIN)
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").exists()
    # Finished now: running again without the flag is refused too.
    assert "finished run" in refused(capsys, "pretrain", "--output_dir", str(out), "--max_steps", "1", *TINY_PRETRAIN)


def test_unfinished_run_of_another_recipe_is_refused_not_resumed(tmp_path, capsys):
    from hf_llm.training.output_dir import RUN_FILE

    out = tmp_path / "out"
    (out / "checkpoint-5").mkdir(parents=True)
    (out / "checkpoint-5" / "trainer_state.json").write_text("{}")
    marker = json.dumps({"completed": False, "recipe": "pretrain"})
    (out / RUN_FILE).write_text(marker)
    message = refused(capsys, "sft_lora", "--output_dir", str(out), "--max_steps", "1")
    assert "unfinished run of the pretrain recipe" in message and "overwrite_output_dir" in message
    assert (out / RUN_FILE).read_text() == marker and sorted(p.name for p in out.iterdir()) == ["checkpoint-5", RUN_FILE]


def test_non_finite_loss_stops_naming_the_step_and_keeps_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        run_recipe("pretrain", "--output_dir", str(out), "--max_steps", "6", "--learning_rate", "1e12", "--warmup_steps", "0",
                   "--lr_scheduler_type", "constant", "--max_grad_norm", "0", "--save_strategy", "steps", "--save_steps", "1",
                   "--eval_strategy", "no", *TINY_PRETRAIN)
    assert err.value.code == 3
    message = capsys.readouterr().err
    assert "Non-finite loss" in message and "training step" in message
    step = int(message.split("training step ")[1].split()[0].rstrip(".,"))
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints and f"checkpoint-{step - 1}" in message
    assert load_file(out / f"checkpoint-{step - 1}" / "model.safetensors")  # the last good checkpoint loads


# --- security -----------------------------------------------------------------------------------


def test_pickle_checkpoint_refused_unless_allowed(tmp_path, capsys):
    from hf_llm import GPTConfig, GPTForCausalLM

    model = GPTForCausalLM(GPTConfig(vocab_size=101, n_positions=64, n_embd=32, n_layer=1, n_head=4, bos_token_id=100, eos_token_id=100))
    folder = tmp_path / "pickled"
    model.save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    from hf_llm.training.arguments import ModelArguments
    from hf_llm.training import RecipeError, load_model

    with pytest.raises(RecipeError, match="allow_pickle_checkpoints"):
        load_model(ModelArguments(model_name_or_path=str(folder)))
    loaded = load_model(ModelArguments(model_name_or_path=str(folder), allow_pickle_checkpoints=True))
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)


def test_trust_remote_code_is_never_turned_on_by_default():
    from hf_llm.training.arguments import TrustArguments

    assert TrustArguments().trust_remote_code is False
    import ast

    # No call anywhere in the library or the recipes passes trust_remote_code=True.
    for path in [*(REPO_ROOT / "hf_llm").rglob("*.py"), *RECIPES.glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), path


def test_no_secret_in_any_output_or_push(tmp_path, monkeypatch):
    fake = "hf_FAKEtokenFAKEtokenFAKEtoken1234"
    monkeypatch.setenv("HF_TOKEN", fake)
    uploaded = {}

    def fake_create_repo(self, repo_id, **kwargs):
        uploaded["repo_id"] = repo_id
        assert kwargs.get("exist_ok") is True

    def fake_upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        import fnmatch

        files = {}
        for path in Path(folder_path).rglob("*"):
            rel = path.relative_to(folder_path).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(rel, pattern) for pattern in ignore_patterns or []):
                files[rel] = path.read_bytes()
        uploaded["files"] = files
        uploaded["token"] = self.token
        return "https://example.invalid/commit"

    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "whoami", lambda self, *args, **kwargs: {"name": "someone"})  # the pre-flight check
    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    out = tmp_path / "pushed"
    run_recipe("sft_lora", "--output_dir", str(out), "--max_steps", "2", "--max_eval_samples", "4", "--sample_max_new_tokens", "2",
               "--push_to_hub", "true", "--hub_model_id", "someone/stdlib-sft", "--hub_token", fake,
               "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1", "--disable_tqdm", "true",
               "--report_to", "tensorboard")
    assert uploaded["repo_id"] == "someone/stdlib-sft"
    files = uploaded["files"]
    # Exactly the finished adapter, tokenizer, card and run records go up; no checkpoints, logs or pickles.
    expected = {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer_config.json", "tokenizer.json",
                "all_results.json", "trainer_state.json", "loss_curve.png", "answers.jsonl", "hf_llm_run.json"}
    assert expected <= set(files), set(files)
    assert not any(name.startswith(("checkpoint-", "runs/")) or name.endswith((".bin", ".pt")) for name in files), set(files)
    assert "someone/stdlib-sft" in files["README.md"].decode()
    assert any((out / "runs").rglob("events.out.tfevents*"))  # --report_to tensorboard wrote logs locally
    # The token reaches the Hub client and nothing else: no uploaded or local file contains it.
    assert uploaded["token"] == fake
    for path in out.rglob("*"):
        if path.is_file():
            assert fake.encode() not in path.read_bytes(), path


# --- kill and resume ----------------------------------------------------------------------------


def _weights(folder, name="model.safetensors") -> dict:
    return load_file(Path(folder) / name)


RESUME_ARGS = {
    "pretrain": ["--eval_strategy", "no", "--dropout", "0.1", *TINY_PRETRAIN],
    "sft_lora": ["--max_eval_samples", "4", "--sample_max_new_tokens", "2", "--per_device_train_batch_size", "4",
                 "--disable_tqdm", "true", "--logging_steps", "1"],
}


def _run(recipe, out, wait_for=None, extra=()):
    args = [sys.executable, str(RECIPES / f"{recipe}.py"), "--output_dir", str(out), "--max_steps", "8", "--save_strategy", "steps",
            "--save_steps", "2", "--seed", "7", *RESUME_ARGS[recipe], *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if wait_for is None:
        subprocess.run(args, cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=300)
        return
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (Path(out) / wait_for / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before the checkpoint to kill after"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize(
    "recipe, extra, weights",
    [
        ("pretrain", [], "model.safetensors"),
        ("sft_lora", [], "adapter_model.safetensors"),
    ],
    ids=["pretrain", "sft_lora"],
)
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, recipe, extra, weights):
    reference = tmp_path / "reference"
    _run(recipe, reference, extra=extra)
    killed = tmp_path / "killed"
    _run(recipe, killed, wait_for="checkpoint-4", extra=extra)
    assert not (killed / weights).exists()  # it really died mid-run
    # A checkpoint whose write was interrupted (no trainer_state.json) is skipped.
    partial = killed / "checkpoint-99"
    partial.mkdir(exist_ok=True)
    (partial / "model.safetensors").write_bytes(b"truncated")
    _run(recipe, killed, extra=extra)  # detects the last complete checkpoint and resumes
    state = json.loads((killed / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    a, b = _weights(reference, weights), _weights(killed, weights)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_resume_skips_checkpoints_whose_trainer_state_is_missing_or_cut_short(tmp_path):
    """A run killed while the Trainer wrote a checkpoint's trainer_state.json (the file exists, its text is cut
    short) resumes from the checkpoint before, as one killed before that file was begun does."""
    from hf_llm.training.output_dir import last_complete_checkpoint

    for step, state in [(2, json.dumps({"global_step": 2})), (4, '{"global_step": 4, "log_hi'), (6, "")]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-8").mkdir()  # killed before trainer_state.json was begun
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text(json.dumps({"global_step": 6}))
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")


# --- rows longer than the context ---------------------------------------------------------------


def _length_setup(limit):
    from types import SimpleNamespace

    from datasets import Dataset, DatasetDict

    from hf_llm.tokenization import load_tokenizer
    from hf_llm.training import DEFAULT_BASE_MODEL

    tokenizer = load_tokenizer(DEFAULT_BASE_MODEL)
    model = SimpleNamespace(config=SimpleNamespace(n_positions=limit))
    return tokenizer, model, Dataset, DatasetDict


def _n_tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_sft_too_long_drop_removes_rows_and_truncate_drops_only_rows_with_no_room_for_the_response():
    from hf_llm.training import enforce_length_limit

    tokenizer, model, Dataset, DatasetDict = _length_setup(limit=24)
    eos = tokenizer.eos_token
    rows = {
        "prompt": ["x = 1\n", "def f(a, b):\n    return a + b\n" * 3, "y = 2\n"],
        "completion": ["print(x)" + eos, "f(1, 2)" + eos, "z = [y for y in range(100)] + [y * y for y in range(10)]" + eos],
    }
    data = DatasetDict(train=Dataset.from_dict(rows))
    lengths = [_n_tokens(tokenizer, p + c) for p, c in zip(rows["prompt"], rows["completion"])]
    assert lengths[0] <= 24 < min(lengths[1:]) and _n_tokens(tokenizer, rows["prompt"][1]) >= 24 > _n_tokens(tokenizer, rows["prompt"][2])

    dropped, limit = enforce_length_limit(data, tokenizer, model, None, "drop", [("prompt", "completion")], truncatable_after="prompt")
    assert limit == 24 and dropped["train"]["prompt"] == rows["prompt"][:1]
    # Truncation keeps the start: row 1's prompt alone fills the limit, so nothing of its response would be learnt.
    truncated, _ = enforce_length_limit(data, tokenizer, model, None, "truncate", [("prompt", "completion")], truncatable_after="prompt")
    assert truncated["train"]["prompt"] == [rows["prompt"][0], rows["prompt"][2]]


def test_reward_length_check_counts_the_eos_the_trainer_appends_and_drops_whole_pairs():
    from hf_llm.training import RecipeError, enforce_length_limit

    tokenizer, model, Dataset, DatasetDict = _length_setup(limit=64)
    prompt, short, long = "Which is better?\n", "yes", "no, " * 30
    exact = prompt + "a" * 200
    ids = tokenizer(exact, add_special_tokens=False)["input_ids"][:64]
    exact_answer = tokenizer.decode(ids)[len(prompt):]  # prompt + this is exactly 64 tokens, 65 with EOS
    assert _n_tokens(tokenizer, prompt + exact_answer) == 64
    data = DatasetDict(train=Dataset.from_dict({"prompt": [prompt] * 3, "chosen": [short, exact_answer, short], "rejected": [short, short, long]}))
    pair = [("prompt", "chosen"), ("prompt", "rejected")]
    with pytest.raises(RecipeError, match=r"2 train rows .* rows \[1, 2\]"):
        enforce_length_limit(data, tokenizer, model, None, "refuse", pair, eos_appended_by_trainer=tokenizer.eos_token)
    kept, _ = enforce_length_limit(data, tokenizer, model, None, "drop", pair, eos_appended_by_trainer=tokenizer.eos_token)
    assert kept["train"]["chosen"] == [short]
    with pytest.raises(RecipeError, match="truncate is not available"):
        enforce_length_limit(data, tokenizer, model, None, "truncate", pair, eos_appended_by_trainer=tokenizer.eos_token)



# --- the Hub, asked once before the work ----------------------------------------------------------


def _hub_unreachable(monkeypatch) -> list:
    """Online mode, but every request of huggingface_hub's HTTP client fails to connect; returns the list of
    attempted URLs."""
    from huggingface_hub.utils._http import get_session

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    attempts = []
    client_class = type(get_session())
    transport_errors = __import__(client_class.__module__.split(".")[0])

    def refuse(self, request, *args, **kwargs):
        attempts.append(str(request.url))
        raise transport_errors.ConnectError("no route to host", request=request)

    monkeypatch.setattr(client_class, "send", refuse)
    return attempts


def test_unreachable_dataset_name_fails_after_one_attempt(tmp_path, monkeypatch, capsys):
    attempts = _hub_unreachable(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        run_recipe("sft_lora", "--output_dir", str(out), "--dataset_name", "someone/no-such-data", "--max_steps", "1")
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "--dataset_name someone/no-such-data" in message and "cannot be reached" in message and "local path" in message
    assert len(attempts) == 1 and "no-such-data" in attempts[0], attempts
    assert not out.exists()


def test_push_without_network_is_refused_before_training(tmp_path, monkeypatch, capsys):
    attempts = _hub_unreachable(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        run_recipe("sft_lora", "--output_dir", str(out), "--max_steps", "1", "--push_to_hub", "true", "--hub_token", "hf_x" * 5)
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "--push_to_hub" in message and "cannot be reached" in message and "hf_x" not in message
    assert len(attempts) == 1
    assert not out.exists()  # refused before anything was written: no run state to contradict


def test_failed_push_at_the_end_is_reported_and_recorded(tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    from hf_llm.training.output_dir import RUN_FILE

    monkeypatch.setattr(HfApi, "whoami", lambda self, *args, **kwargs: {"name": "someone"})
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *args, **kwargs: None)

    def upload_fails(self, **kwargs):
        raise ConnectionError("connection reset")

    monkeypatch.setattr(HfApi, "upload_folder", upload_fails)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        run_recipe("sft_lora", "--output_dir", str(out), "--max_steps", "1", "--max_eval_samples", "4",
                   "--sample_max_new_tokens", "2", "--save_strategy", "no", "--push_to_hub", "true",
                   "--hub_model_id", "someone/sft")
    assert err.value.code == 2
    printed = capsys.readouterr()
    assert "pushing it to the Hub as someone/sft failed" in printed.err and "hf upload someone/sft" in printed.err
    assert "== sft_lora finished" in printed.out  # the summary still came
    state = json.loads((out / RUN_FILE).read_text())
    assert state["completed"] is True and state["pushed"] is False and "connection reset" in state["push_error"]
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
