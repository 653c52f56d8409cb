"""Model cards whose loading code works: run from another directory, in a process where hf_llm cannot be
imported, for an adapter on the packaged base (which travels with it in base/), a full model and a pushed
run; and the packaged base itself carries our model as remote code."""

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import max_diff
from test_recipes import FAST, assert_adapter_card_loads_the_saved_adapter, run_card_snippet, run_recipe

from hf_llm.training import DEFAULT_BASE_MODEL

# The main job, shortened: `accelerate launch recipes/sft_lora.py` with the embedded defaults.
SFT_MAIN_JOB = ["--max_steps", "2", "--max_eval_samples", "4", "--sample_max_new_tokens", "2", "--save_strategy", "no"]
IDS = [[5, 17, 42, 3, 99]]

CARD_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["hf_llm"] = None  # any `import hf_llm` now raises ImportError
    import json, torch
    try:
        import hf_llm  # noqa: F401
        raise SystemExit("hf_llm is importable: the test would prove nothing")
    except ImportError:
        pass
    folder, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    card = open(folder + "/README.md").read()
    namespace = {}
    exec(card.split("## How to load\\n\\n```python\\n")[1].split("```")[0], namespace)
    models = {name: namespace[name] for name in ("model", "merged") if name in namespace}
    if "PeftModel" in namespace:  # an adapter: PEFT's own loader must find the base adapter_config.json names
        from peft import AutoPeftModelForCausalLM
        models["auto_peft"] = AutoPeftModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    report = {"tokens": namespace["tokenizer"]("def add(a, b):")["input_ids"]}
    with torch.no_grad():
        for name, model in models.items():
            inner = model.get_base_model() if hasattr(model, "get_base_model") else model
            report[name] = {"wrapper": type(model).__name__, "class": type(inner).__name__,
                            "module": type(inner).__module__, "logits": model.eval()(ids).logits[0, -1].tolist()}
    print(json.dumps(report))
    """
)


def run_card_without_hf_llm(folder: Path, tmp_path: Path) -> dict:
    """Run `folder`'s card code in a fresh process, from an empty directory, with hf_llm not importable
    (and not on PYTHONPATH) and a fresh remote-code cache; returns what it loaded."""
    script = tmp_path / "card_without_hf_llm.py"
    script.write_text(CARD_SCRIPT)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run(
        [sys.executable, str(script), str(folder), json.dumps(IDS)], cwd=elsewhere, env=env, capture_output=True,
        text=True, timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def last_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.tensor(IDS)).logits[0, -1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_copy_of_the_packaged_base_carries_the_package_remote_code(tmp_path):
    """The base/ a run on the packaged base gets holds the remote code save_pretrained writes today (same
    files, byte for byte), offers every class a recipe loads it as, and keeps the shipped weights."""
    from hf_llm import GPTConfig, GPTForCausalLM
    from hf_llm.training.outputs import bundle_packaged_base

    GPTForCausalLM(GPTConfig(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2)).save_pretrained(tmp_path / "saved")
    out = tmp_path / "run"
    out.mkdir()
    (out / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": DEFAULT_BASE_MODEL}))
    copy = bundle_packaged_base(out, DEFAULT_BASE_MODEL)
    written = sorted(p.name for p in (tmp_path / "saved").glob("*.py"))
    assert written and sorted(p.name for p in copy.glob("*.py")) == written
    for name in written:
        assert (copy / name).read_bytes() == (tmp_path / "saved" / name).read_bytes(), name
    config = json.loads((copy / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_gpt.GPTConfig",
        "AutoModel": "modeling_gpt.GPTModel",
        "AutoModelForCausalLM": "modeling_gpt.GPTForCausalLM",
        "AutoModelForSequenceClassification": "modeling_gpt.GPTForSequenceClassification",
    }
    assert (copy / "model.safetensors").read_bytes() == (Path(DEFAULT_BASE_MODEL) / "model.safetensors").read_bytes()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(copy.resolve())
    assert not list(Path(DEFAULT_BASE_MODEL).glob("*.py"))  # the package holds one copy of its code


def test_adapter_card_on_the_packaged_base_runs_without_hf_llm_from_another_directory(tmp_path, monkeypatch):
    from peft import PeftModel

    from hf_llm import GPTForCausalLM

    launch = tmp_path / "launch"
    launch.mkdir()
    monkeypatch.chdir(launch)  # a relative output_dir, as the recipe's default is
    run_recipe("sft_lora", "--output_dir", "sft", *SFT_MAIN_JOB)
    out = launch / "sft"
    # The base travels with the adapter, weights as shipped, and adapter_config.json names that copy.
    base = out / "base"
    assert sha256(base / "model.safetensors") == sha256(Path(DEFAULT_BASE_MODEL) / "model.safetensors")
    assert {"config.json", "modeling_gpt.py"} <= {p.name for p in base.iterdir()}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    assert "merged" not in (out / "README.md").read_text()

    report = run_card_without_hf_llm(out, tmp_path)
    expected = last_logits(PeftModel.from_pretrained(GPTForCausalLM.from_pretrained(DEFAULT_BASE_MODEL), out))
    for name in ("model", "auto_peft"):
        loaded = report[name]
        assert loaded["wrapper"] == "PeftModelForCausalLM" and loaded["class"] == "GPTForCausalLM", loaded
        assert loaded["module"].startswith("transformers_modules"), loaded["module"]  # our model, as remote code
        assert max_diff(torch.tensor(loaded["logits"]), expected) < 1e-5
    from transformers import AutoTokenizer

    assert report["tokens"] == AutoTokenizer.from_pretrained(DEFAULT_BASE_MODEL)("def add(a, b):")["input_ids"]


def test_full_model_card_runs_without_hf_llm_from_another_directory(tmp_path, monkeypatch):
    from hf_llm import GPTForCausalLM

    launch = tmp_path / "launch"
    launch.mkdir()
    monkeypatch.chdir(launch)
    run_recipe(
        "pretrain", "--output_dir", "pretrain", "--max_steps", "2", "--max_train_samples", "40", "--max_eval_samples", "8",
        "--n_layer", "1", "--n_embd", "32", "--bpe_vocab_size", "300", "--sample_max_new_tokens", "2", *FAST,
    )
    out = launch / "pretrain"
    report = run_card_without_hf_llm(out, tmp_path)
    loaded = report["model"]
    assert loaded["class"] == "GPTForCausalLM" and loaded["module"].startswith("transformers_modules"), loaded
    assert max_diff(torch.tensor(loaded["logits"]), last_logits(GPTForCausalLM.from_pretrained(out))) < 1e-5
    from transformers import AutoTokenizer

    assert report["tokens"] == AutoTokenizer.from_pretrained(out)("def add(a, b):")["input_ids"]


# The uploaded adapter_config.json names the training machine's copy of the base (deleted here), as PEFT
# names any local base; PEFT's state-dict reader looks there only to see whether the vocabulary changed.
@pytest.mark.filterwarnings("ignore:Could not find a config file:UserWarning")
def test_pushed_card_loads_what_was_uploaded_and_its_merged_copy(tmp_path, monkeypatch):
    """A pushed run's card names the Hub id only; its code loads the adapter, on the base uploaded with it,
    and the merged model from what reached the Hub, after the local folder is gone."""
    from huggingface_hub import HfApi

    hub = tmp_path / "hub" / "someone" / "stdlib-sft"

    def fake_upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        assert repo_id == "someone/stdlib-sft"
        for path in Path(folder_path).rglob("*"):
            rel = path.relative_to(folder_path).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(rel, pattern) for pattern in ignore_patterns or []):
                (hub / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, hub / rel)

    monkeypatch.setattr(HfApi, "whoami", lambda self, *args, **kwargs: {"name": "someone"})  # the pre-flight check
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    out = tmp_path / "sft"
    run_recipe("sft_lora", "--output_dir", str(out), *SFT_MAIN_JOB, "--merge_adapter", "true",
               "--push_to_hub", "true", "--hub_model_id", "someone/stdlib-sft")
    from hf_llm import GPTForCausalLM

    merged_expected = last_logits(GPTForCausalLM.from_pretrained(out / "merged"))
    shutil.rmtree(out)
    card = (hub / "README.md").read_text()
    assert str(tmp_path) not in card and "merged/" in card
    assert_adapter_card_loads_the_saved_adapter(hub, pushed_as="someone/stdlib-sft")
    merged = run_card_snippet(hub, pushed_as="someone/stdlib-sft")["merged"]
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert max_diff(last_logits(merged), merged_expected) < 1e-5
