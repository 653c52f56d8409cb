"""The recipes end to end: embedded defaults and the shared data, a few steps each, and what they leave behind."""

import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO_ROOT

RECIPES = REPO_ROOT / "recipes"
FAST = ["--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]


def run_recipe(name: str, *args: str):
    """Run recipes/<name>.py in this process, as `python recipes/<name>.py ARGS` would."""
    argv = sys.argv
    sys.argv = [str(RECIPES / f"{name}.py"), *args]
    try:
        runpy.run_path(str(RECIPES / f"{name}.py"), run_name="__main__")
    finally:
        sys.argv = argv


def record_trainers(monkeypatch, trainer_class) -> list:
    """Every `trainer_class` (or subclass) built from now on, once built: what a recipe run here trains on."""
    built, init = [], trainer_class.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(trainer_class, "__init__", recording)
    return built


def outputs(folder: Path) -> dict:
    metrics = json.loads((folder / "all_results.json").read_text())
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    return {"metrics": metrics, "losses": losses}


def assert_standard_outputs(folder: Path, adapter: bool):
    for name in ["all_results.json", "trainer_state.json", "loss_curve.png", "README.md", "hf_llm_run.json", "tokenizer_config.json"]:
        assert (folder / name).is_file(), name
    if adapter:
        assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    else:
        assert (folder / "model.safetensors").is_file() and (folder / "modeling_gpt.py").is_file()
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "tags:" in card and "hf_llm" in card and "## How to load" in card
    # The held-out results are the card's model-index, as the Hub reads it.
    from huggingface_hub import ModelCard

    results = {r.metric_type: r.metric_value for r in ModelCard.load(folder / "README.md").data.eval_results}
    metrics = json.loads((folder / "all_results.json").read_text())
    assert results and results["eval_loss"] == pytest.approx(metrics["eval_loss"])
    assert not any("runtime" in name or "per_second" in name for name in results)
    assert json.loads((folder / "hf_llm_run.json").read_text())["completed"] is True
    assert (folder / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def card_snippet(folder: Path) -> str:
    """The model card's "How to load" code."""
    card = (folder / "README.md").read_text()
    return card.split("## How to load\n\n```python\n")[1].split("```")[0]


def run_card_snippet(folder: Path, pushed_as: str | None = None) -> dict:
    """Run the model card's "How to load" code from another working directory; returns its variables.

    An unpushed run's code must name the folder by its absolute path. A pushed run's code must name no
    local path; the Hub is played by the folder: the repo id stands for it, and `snapshot_download`
    of the repo id returns it.
    """
    import os
    import tempfile

    import huggingface_hub

    code = card_snippet(folder)
    if pushed_as is None:
        assert json.dumps(str(folder.resolve())) in code, code
    else:
        assert str(folder.resolve()) not in code and str(folder.parent) not in code, code
        assert json.dumps(pushed_as) in code, code
        code = code.replace(json.dumps(pushed_as), json.dumps(str(folder)))
    real_download, cwd = huggingface_hub.snapshot_download, os.getcwd()

    def snapshot_download(repo_id, **kwargs):
        assert repo_id == str(folder), repo_id
        return str(folder)

    namespace = {}
    with tempfile.TemporaryDirectory() as elsewhere:
        os.chdir(elsewhere)
        huggingface_hub.snapshot_download = snapshot_download
        try:
            exec(code, namespace)
        finally:
            huggingface_hub.snapshot_download = real_download
            os.chdir(cwd)
    return namespace


def assert_adapter_card_loads_the_saved_adapter(folder: Path, pushed_as: str | None = None):
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file

    model = run_card_snippet(folder, pushed_as)["model"]
    assert isinstance(model, PeftModel)
    loaded, saved = get_peft_model_state_dict(model), load_file(folder / "adapter_model.safetensors")
    assert loaded.keys() == saved.keys()
    for key in saved:
        assert torch.equal(loaded[key], saved[key]), key


def test_pretrain_embedded_default(tmp_path):
    out = tmp_path / "pretrain"
    run_recipe(
        "pretrain", "--output_dir", str(out), "--max_steps", "12", "--max_train_samples", "300",
        "--max_eval_samples", "30", "--n_layer", "1", "--n_embd", "32", "--bpe_vocab_size", "400",
        "--learning_rate", "3e-3", "--warmup_steps", "0", "--sample_max_new_tokens", "8", "--eval_strategy", "steps", "--eval_steps", "6", *FAST,
    )
    assert_standard_outputs(out, adapter=False)
    result = outputs(out)
    assert result["losses"][-1] < result["losses"][0] - 0.3
    assert "eval_loss" in result["metrics"] and result["metrics"]["eval_perplexity"] > 1
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["prompt"] == "def " for s in samples)
    from hf_llm import GPTForCausalLM
    from transformers import AutoTokenizer

    model = GPTForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(out))


def char_pretrain_args(out: Path, shared_data: Path) -> list[str]:
    """A 15-step character-level pretraining run on The Verdict, small enough for a test."""
    return [
        "--output_dir", str(out), "--tokenizer_name_or_path", "char",
        "--dataset_name", str(shared_data / "raw" / "the-verdict.txt"),
        "--n_layer", "2", "--n_embd", "32", "--n_positions", "64", "--block_size", "64",
        "--max_steps", "15", "--learning_rate", "5e-3", *FAST,
    ]


def test_pretrain_char_level_tokenizer(tmp_path, shared_data):
    out = tmp_path / "char"
    run_recipe("pretrain", *char_pretrain_args(out, shared_data), "--sample_prompts", "I had", "--sample_max_new_tokens", "10")
    assert_standard_outputs(out, adapter=False)
    result = outputs(out)
    assert result["losses"][-1] < result["losses"][0] - 0.5
    vocab = json.loads((out / "vocab.json").read_text())
    assert "<|endoftext|>" in vocab and len(vocab) < 80


def test_char_vocabulary_covers_characters_only_the_held_out_text_has(tmp_path):
    text = "the cat sat on the mat. " * 400 + "QXZ!"  # the last characters land in the evaluation split only
    (tmp_path / "text.txt").write_text(text)
    out = tmp_path / "char"
    run_recipe("pretrain", "--output_dir", str(out), "--tokenizer_name_or_path", "char", "--dataset_name", str(tmp_path / "text.txt"),
               "--n_layer", "1", "--n_embd", "16", "--n_positions", "32", "--block_size", "32", "--max_steps", "2",
               "--sample_prompts", "the ", *FAST)
    vocab = json.loads((out / "vocab.json").read_text())
    assert {"Q", "X", "Z", "!"} <= set(vocab)
    assert "eval_loss" in outputs(out)["metrics"]


def test_sample_prompt_the_tokenizer_cannot_encode_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "text.txt").write_text("the cat sat on the mat. " * 400)
    with pytest.raises(SystemExit) as err:
        run_recipe("pretrain", "--output_dir", str(tmp_path / "out"), "--tokenizer_name_or_path", "char",
                   "--dataset_name", str(tmp_path / "text.txt"), "--n_layer", "1", "--n_embd", "16", "--n_positions", "32",
                   "--block_size", "32", "--max_steps", "2", *FAST)  # the default sample prompt, "def ", has a 'd'
    assert err.value.code == 2 and "--sample_prompts 'def '" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pretrain_verdict_config_runs(tmp_path, shared_data):
    """The book's Verdict set-up (124M, GPT-2 tokenizer, context 256) for a few steps."""
    out = tmp_path / "verdict"
    run_recipe(
        "pretrain", "--config", str(RECIPES / "configs" / "pretrain_verdict.yaml"),
        "--tokenizer_name_or_path", str(shared_data / "gpt2-tokenizer"),
        "--dataset_name", str(shared_data / "raw" / "the-verdict.txt"),
        "--output_dir", str(out), "--max_steps", "8", "--eval_strategy", "no", "--sample_prompts", "Every effort moves you",
        "--sample_max_new_tokens", "3", *FAST,
    )
    result = outputs(out)
    assert result["losses"][0] > 9.0  # untrained: about ln(50257) = 10.8
    assert result["losses"][-1] < result["losses"][0] - 0.3
    assert result["metrics"]["train_blocks"] == 18 and result["metrics"]["eval_blocks"] == 2


def run_summary(printed: str) -> dict:
    """The end-of-run summary's lines, read back: output folder, held-out figures (with before-values), command."""
    block = printed[printed.rindex("== "):]
    figures = {m[0]: (float(m[1]), float(m[2]) if m[2] else None)
               for m in re.findall(r"held-out: (\w+) ([\d.]+)(?: \(before training: ([\d.]+)\))?", block)}
    return {"header": block.splitlines()[0], "output": re.search(r"output:\s+(\S+)", block)[1], "figures": figures,
            "try": re.search(r"try it:\s+(.+)", block)[1]}


def test_sft_lora_embedded_default(tmp_path, capsys):
    out = tmp_path / "sft"
    run_recipe("sft_lora", "--output_dir", str(out), "--max_steps", "8", "--max_eval_samples", "16", "--sample_max_new_tokens", "8", *FAST)
    assert_standard_outputs(out, adapter=True)
    result = outputs(out)
    # The run ends with its summary: where, the held-out loss with its before-value, how to try it.
    summary = run_summary(capsys.readouterr().out)
    assert re.fullmatch(r"== sft_lora finished in \d+ min \d\d s ==", summary["header"])
    assert Path(summary["output"]) == out.resolve()
    loss, before = summary["figures"]["eval_loss"]
    assert loss == pytest.approx(result["metrics"]["eval_loss"], abs=1e-4)
    assert before == pytest.approx(result["metrics"]["eval_base_loss"], abs=1e-4)
    assert summary["try"].startswith(f"python recipes/generate.py --model_name_or_path {out}")
    metrics = result["metrics"]
    assert "eval_loss" in metrics and "eval_base_loss" in metrics
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and all({"prompt", "fine_tuned", "base"} <= set(a) for a in answers)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 32 and config["target_modules"] == ["c_attn"]
    # The card names the packaged base model, not this machine's path, and its snippet loads the adapter.
    card = (out / "README.md").read_text()
    assert "base_model:" not in card and "stdlib-gpt, the small GPT that ships with hf_llm" in card
    assert_adapter_card_loads_the_saved_adapter(out)


def test_sft_lora_on_shared_instruction_data(tmp_path, shared_data):
    out = tmp_path / "sft"
    run_recipe(
        "sft_lora", "--output_dir", str(out), "--dataset_name", str(shared_data / "raw" / "instruction-data.json"),
        "--max_steps", "10", "--max_train_samples", "80", "--max_eval_samples", "16", "--learning_rate", "3e-3",
        "--sample_max_new_tokens", "4", "--merge_adapter", "true", *FAST,
    )
    assert_standard_outputs(out, adapter=True)
    # --merge_adapter: a full model with the adapter folded in, loadable without PEFT.
    from hf_llm import GPTForCausalLM

    import torch
    from peft import PeftModel

    from hf_llm.training import DEFAULT_BASE_MODEL

    merged = GPTForCausalLM.from_pretrained(out / "merged").eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    adapted = PeftModel.from_pretrained(GPTForCausalLM.from_pretrained(DEFAULT_BASE_MODEL), out).eval()
    ids = torch.randint(0, 4000, (1, 20))
    with torch.no_grad():
        assert (merged(ids).logits - adapted(ids).logits).abs().max() < 1e-4
    # The card says how to load merged/ too.
    card_merged = run_card_snippet(out)["merged"].eval()
    with torch.no_grad():
        assert (card_merged(ids).logits - merged(ids).logits).abs().max() < 1e-5
    result = outputs(out)
    assert min(result["losses"][-3:]) < max(result["losses"][:3])
    assert result["metrics"]["eval_loss"] < result["metrics"]["eval_base_loss"]


def test_reward_modeling_embedded_default(tmp_path, capsys):
    out = tmp_path / "rm"
    run_recipe("reward_modeling", "--output_dir", str(out), "--max_steps", "8", "--max_eval_samples", "16", *FAST)
    assert_standard_outputs(out, adapter=True)
    metrics = outputs(out)["metrics"]
    accuracy, before = run_summary(capsys.readouterr().out)["figures"]["eval_accuracy"]
    assert (accuracy, before) == (pytest.approx(metrics["eval_accuracy"], abs=1e-4), pytest.approx(metrics["eval_initial_accuracy"], abs=1e-4))
    assert "eval_accuracy" in metrics and 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert "eval_perplexity" not in metrics  # a pairwise loss has none
    assert 0.0 <= metrics["eval_initial_accuracy"] <= 1.0  # before training, under its own name
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 1 and config["modules_to_save"] == ["score"] or "score" in str(config["modules_to_save"])
    assert_adapter_card_loads_the_saved_adapter(out)


def test_reward_adapter_folder_reproduces_the_trained_model(tmp_path):
    """The saved adapter (LoRA + the score head trained in full) loads with PEFT onto the base model and
    scores exactly as the merged model does."""
    import torch
    from peft import PeftModel

    from hf_llm import GPTForSequenceClassification
    from hf_llm.training import DEFAULT_BASE_MODEL

    out = tmp_path / "rm"
    run_recipe(
        "reward_modeling", "--output_dir", str(out), "--max_steps", "4", "--max_eval_samples", "8",
        "--learning_rate", "3e-3", "--merge_adapter", "true", *FAST,
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    merged = GPTForSequenceClassification.from_pretrained(out / "merged").eval()
    base = GPTForSequenceClassification.from_pretrained(
        DEFAULT_BASE_MODEL, num_labels=1, pad_token_id=merged.config.pad_token_id
    )
    untrained_score = base.score.weight.detach().clone()
    adapted = PeftModel.from_pretrained(base, out).eval()
    assert not torch.allclose(merged.score.weight, untrained_score)
    ids = torch.randint(1, 4000, (2, 20))
    with torch.no_grad():
        assert (merged(ids).logits - adapted(ids).logits).abs().max() < 1e-4


def test_reward_modeling_on_shared_preferences(tmp_path, shared_data):
    out = tmp_path / "rm_shared"
    run_recipe(
        "reward_modeling", "--output_dir", str(out),
        "--dataset_name", str(shared_data / "raw" / "instruction-data-with-preference.json"),
        "--max_steps", "12", "--max_train_samples", "96", "--max_eval_samples", "32", "--learning_rate", "3e-3", *FAST,
    )
    assert_standard_outputs(out, adapter=True)
    result = outputs(out)
    assert min(result["losses"][-3:]) < max(result["losses"][:3])


def test_generate_default_and_from_stdin(capsys, monkeypatch):
    run_recipe("generate", "--prompt", "def add(a, b):", "--max_new_tokens", "12")
    first = capsys.readouterr().out
    assert first.startswith("def add(a, b):") and len(first) > len("def add(a, b):")
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("import os\n"))
    run_recipe("generate", "--prompt", "-", "--max_new_tokens", "5", "--num_beams", "3", "--no_repeat_ngram_size", "2")
    assert capsys.readouterr().out.startswith("import os")


def test_generate_prompts_an_adapter_as_sft_trains_it(capsys, monkeypatch):
    """--instruction gives the SFT template's prompt, and a piped prompt keeps its own final newline."""
    import io

    import hf_llm.training
    from hf_llm.data import format_prompt

    seen = []
    monkeypatch.setattr(hf_llm.training, "generate_text", lambda model, tokenizer, prompt, gen_args: seen.append(prompt) or [prompt])
    run_recipe("generate", "--instruction", "Add 1 and 2.", "--input", "numbers")
    expected = format_prompt("Add 1 and 2.", "numbers")
    assert seen[-1] == expected and expected.endswith("### Response:\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(expected + "\n"))  # as `echo "$PROMPT" |` sends it
    run_recipe("generate", "--prompt", "-")
    assert seen[-1] == expected
    capsys.readouterr()


def test_generate_from_adapter_folder(tmp_path, shared_data, capsys):
    out = tmp_path / "sft_for_generate"
    run_recipe("sft_lora", "--output_dir", str(out), "--max_steps", "2", "--max_eval_samples", "4", "--sample_max_new_tokens", "2", *FAST)
    capsys.readouterr()
    run_recipe("generate", "--model_name_or_path", str(out), "--prompt", "def ", "--max_new_tokens", "6", "--do_sample", "true", "--top_k", "5")
    assert capsys.readouterr().out.startswith("def ")


# --- configs ------------------------------------------------------------------------------------

CONFIG_RECIPES = {
    "pretrain_char_spark.yaml": "pretrain",
    "pretrain_verdict.yaml": "pretrain",
    "generate_gpt2.yaml": "generate",
    "sft_lora_alpaca.yaml": "sft_lora",
    "reward_webgpt.yaml": "reward_modeling",
    "sft_instruction_data.yaml": "sft_lora",
    "dpo_instruction_preference.yaml": "dpo",
}


def test_every_config_is_covered():
    assert sorted(p.name for p in (RECIPES / "configs").glob("*.yaml")) == sorted(CONFIG_RECIPES)


@pytest.mark.parametrize("config_name", sorted(CONFIG_RECIPES))
def test_config_parses_with_its_recipe(config_name):
    recipe = runpy.run_path(str(RECIPES / f"{CONFIG_RECIPES[config_name]}.py"))
    from hf_llm.training.command_line import parse_recipe_args

    types = recipe["DATACLASS_TYPES"]
    argv = ["--config", str(RECIPES / "configs" / config_name)]
    if CONFIG_RECIPES[config_name] != "generate":
        argv += ["--output_dir", "/tmp/unused"]
    config = yaml.safe_load((RECIPES / "configs" / config_name).read_text())
    if config.get("bf16") and not torch.cuda.is_available():
        argv += ["--bf16", "false"]  # the config asks for mixed precision, which needs a GPU here
        config.pop("bf16")
    groups = parse_recipe_args(types, recipe["DEFAULTS"], argv)
    values = {}
    for group in groups:
        values.update(vars(group))
    for key, value in config.items():
        if key == "output_dir":
            continue
        parsed = values[key]
        if key == "report_to" and value == "none":
            value = []
        if isinstance(parsed, list) and not isinstance(value, list):
            value = [value]
        assert parsed == value or str(parsed) == str(value), (key, parsed, value)


def test_unknown_yaml_key_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1.0e-3\nlearnig_rate_typo: 5\n")
    with pytest.raises(SystemExit) as err:
        run_recipe("pretrain", "--config", str(bad), "--output_dir", str(tmp_path / "out"))
    assert err.value.code == 2
    assert "learnig_rate_typo" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_card_snippets_name_no_local_path_and_fit_the_kind_of_output(tmp_path, monkeypatch):
    """A pushed run's code names its Hub id and no local path (the card goes up with it); an unpushed run's
    names the output folder by absolute path, whatever the working directory; none imports hf_llm."""
    from hf_llm.training import DEFAULT_BASE_MODEL
    from hf_llm.training.outputs import describe_base_model, how_to_load

    local = tmp_path / "my-base"
    local.mkdir()
    monkeypatch.chdir(tmp_path)  # the run's paths below are relative, as the recipes' default output_dir is
    out = f'folder = "{tmp_path / "runs" / "sft"}"'
    hub = how_to_load("runs/sft", "openai-community/gpt2", task="causal_lm", is_adapter=True, pushed_as="me/sft")
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/sft"' in hub
    here = how_to_load("runs/sft", "openai-community/gpt2", task="causal_lm", is_adapter=True)
    assert out in here and "AutoPeftModelForCausalLM.from_pretrained(folder, trust_remote_code=True)" in here
    elsewhere = how_to_load("runs/rm", str(local), task="reward", is_adapter=True, pushed_as="me/rm")
    assert "path/to/my-base" in elsewhere and "num_labels=1" in elsewhere and 'from_pretrained(base, "me/rm")' in elsewhere
    elsewhere_here = how_to_load("runs/sft", "my-base", task="causal_lm", is_adapter=True)
    assert f'from_pretrained("{local}", trust_remote_code=True)' in elsewhere_here and out in elsewhere_here
    assert str(tmp_path) not in describe_base_model(str(local)) and "my-base" in describe_base_model(str(local))
    # The packaged base travels in base/ and merged/ holds the merged model: both are read from a local copy
    # of the repository (transformers' subfolder= would follow the adapter_config.json at its root).
    packaged = how_to_load("runs/sft", DEFAULT_BASE_MODEL, task="causal_lm", is_adapter=True, pushed_as="me/sft", merged=True)
    assert 'folder = snapshot_download("me/sft")' in packaged
    assert 'AutoModelForCausalLM.from_pretrained(f"{folder}/base", trust_remote_code=True)' in packaged
    assert 'AutoModelForCausalLM.from_pretrained(f"{folder}/merged", trust_remote_code=True)' in packaged
    packaged_here = how_to_load("runs/sft", DEFAULT_BASE_MODEL, task="reward", is_adapter=True)
    assert out in packaged_here and 'f"{folder}/base", num_labels=1' in packaged_here and "merged" not in packaged_here
    full_lm = how_to_load("runs/sft", "openai-community/gpt2", task="causal_lm", is_adapter=False, pushed_as="me/sft")
    assert 'AutoTokenizer.from_pretrained("me/sft", trust_remote_code=True)' in full_lm  # the folder's config is remote code
    full = how_to_load("runs/rm", "openai-community/gpt2", task="reward", is_adapter=False, pushed_as="me/rm")
    assert "AutoModelForSequenceClassification.from_pretrained(\"me/rm\"" in full and "peft" not in full
    for code in (hub, elsewhere, packaged, full_lm, full):
        assert str(tmp_path) not in code and str(Path(DEFAULT_BASE_MODEL).parent) not in code
    for code in (hub, here, elsewhere, elsewhere_here, packaged, packaged_here, full_lm, full):
        assert "import hf_llm" not in code and "from hf_llm" not in code
        compile(code, "card", "exec")


def test_reward_eval_accuracy_and_margin_count_pairs_not_batches(tmp_path):
    """5 pairs at eval batch 4: TRL averages the two batches' accuracies; the recipe's trainer counts pairs,
    and names them with the evaluation's prefix."""
    from reward_pairs_script import evaluate, pairs

    metrics, trainer, model = evaluate(str(tmp_path), metric_key_prefix="eval_initial")
    tokenizer = trainer.processing_class
    model.eval()
    with torch.no_grad():
        def score(text):
            return model(**tokenizer(text + tokenizer.eos_token, return_tensors="pt")).logits.item()

        margins = [score(r["prompt"] + r["chosen"]) - score(r["prompt"] + r["rejected"]) for r in pairs()]
    assert 0 < sum(m > 0 for m in margins) < 5  # a mix, so that the per-batch mean could differ
    assert metrics["eval_initial_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 5)
    assert metrics["eval_initial_margin"] == pytest.approx(sum(margins) / 5, abs=1e-4)
    assert "eval_accuracy" not in metrics


def test_answers_to_a_prompt_longer_than_the_context_keep_its_end(tmp_path):
    from hf_llm import GPTConfig, GPTForCausalLM
    from hf_llm.tokenization import load_tokenizer
    from hf_llm.training import compare_answers
    from hf_llm.training import DEFAULT_BASE_MODEL

    tokenizer = load_tokenizer(DEFAULT_BASE_MODEL)
    model = GPTForCausalLM(GPTConfig(n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=len(tokenizer)))
    prompt = "x = 1\n" * 40 + "### Response:\n"
    ids = tokenizer(prompt)["input_ids"]
    assert len(ids) > 32
    seen = []
    model.generate = lambda input_ids, **kwargs: seen.append(input_ids) or input_ids
    compare_answers(model, tokenizer, [prompt], tmp_path, max_new_tokens=4)
    assert seen[0][0].tolist() == ids[-31:]
    assert json.loads((tmp_path / "answers.jsonl").read_text())["prompt"] == prompt


def test_recipes_are_thin():
    """Each recipe imports from at most three hf_llm modules and leaves the run's lifecycle to RecipeRun."""
    import ast

    for path in sorted(RECIPES.glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hf_llm")}
        modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names if alias.name.startswith("hf_llm")}
        assert len(modules) <= 3, (path.name, modules)
        called = {node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                  for node in ast.walk(tree) if isinstance(node, ast.Call)}
        assert not called & {"mark_run", "save_metrics", "save_state", "push_folder", "write_model_card"}, path.name


def test_sft_data_log_says_whether_the_template_was_applied(tmp_path, caplog):
    import logging

    from hf_llm.training import DataArguments, load_sft_data

    rows = [{"prompt": f"Q{i}: ", "completion": f"A{i}"} for i in range(10)]
    (tmp_path / "pc.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(10)]
    (tmp_path / "alpaca.json").write_text(json.dumps(rows))
    with caplog.at_level(logging.INFO, logger="hf_llm"):
        data = load_sft_data(DataArguments(dataset_name=str(tmp_path / "pc.jsonl")))
        assert data["train"][0]["prompt"].startswith("Q")  # as written
        load_sft_data(DataArguments(dataset_name=str(tmp_path / "alpaca.json")))
    assert "prompt/completion rows, trained on as written (the prompt template is not applied)" in caplog.text
    assert "instruction rows, each prompt built with the Alpaca prompt template" in caplog.text


@pytest.fixture(scope="module")
def sft_output(tmp_path_factory):
    """A short run of the SFT stage: what outputs/sft_lora holds after `recipes/sft_lora.py`."""
    out = tmp_path_factory.mktemp("stages") / "sft_lora"
    run_recipe("sft_lora", "--output_dir", str(out), "--max_steps", "4", "--max_eval_samples", "8", *FAST)
    return out


def test_dpo_without_the_sft_stage_names_the_command_to_run_first(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        run_recipe("dpo", "--max_steps", "2")
    message = capsys.readouterr().err
    assert err.value.code == 2 and "outputs/sft_lora: no such folder" in message
    assert "accelerate launch recipes/sft_lora.py" in message and not (tmp_path / "outputs").exists()


def test_dpo_starts_from_the_sft_adapter_merged_into_its_base(sft_output):
    from peft import PeftModel

    from hf_llm.models.gpt import GPTForCausalLM
    from hf_llm.training import ModelArguments, load_model

    started = load_model(ModelArguments(model_name_or_path=str(sft_output)))
    base = GPTForCausalLM.from_pretrained(sft_output / "base")
    expected = PeftModel.from_pretrained(GPTForCausalLM.from_pretrained(sft_output / "base"), sft_output).merge_and_unload()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(started(ids).logits, expected(ids).logits)
        assert not torch.allclose(started(ids).logits, base(ids).logits)  # the SFT adapter is in it
    assert type(started) is GPTForCausalLM


def test_dpo_embedded_default(tmp_path, capsys, monkeypatch, sft_output):
    import math

    from trl import DPOTrainer

    trainers = record_trainers(monkeypatch, DPOTrainer)
    out = tmp_path / "dpo"
    run_recipe("dpo", "--model_name_or_path", str(sft_output), "--output_dir", str(out), "--max_steps", "6",
               "--max_eval_samples", "16", *FAST)
    assert_standard_outputs(out, adapter=True)
    # The SFT stage trained on instructions in the Alpaca template (its tokenizer has no chat template): so are the pairs.
    (trainer,) = trainers
    prompt = trainer.processing_class.decode(trainer.train_dataset[0]["prompt_ids"])
    assert trainer.processing_class.chat_template is None
    assert prompt.startswith("Below is an instruction") and prompt.endswith("### Response:\n") and "<|im_start|>" not in prompt
    metrics = outputs(out)["metrics"]
    # The reference is the base with the adapter switched off: before training the policy (LoRA B = 0) is
    # that same model, so every reward is exactly 0 and the DPO loss is log 2.
    assert metrics["eval_initial_rewards/margins"] == 0 and metrics["eval_initial_rewards/accuracies"] == 0
    assert metrics["eval_initial_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["eval_logps/chosen"] != metrics["eval_initial_logps/chosen"]  # training moved the policy
    assert 0.0 <= metrics["eval_rewards/accuracies"] <= 1.0 and "eval_perplexity" not in metrics
    summary = capsys.readouterr().out
    assert "held-out: eval_rewards/accuracies" in summary and "(before training: 0.0000)" in summary
    assert_adapter_card_loads_the_saved_adapter(out)

    # The pipeline's table: each stage's headline figures beside their value before it, from the run folders.
    from hf_llm.training.stages import main as stages_main, stage_table

    table = stage_table([sft_output, out]).splitlines()
    sft_metrics = outputs(sft_output)["metrics"]
    assert f"| sft_lora | loss | {sft_metrics['eval_base_loss']:.4f} | {sft_metrics['eval_loss']:.4f} |" in table[2]
    first_dpo_row = next(line for line in table if line.startswith("| dpo |"))
    assert " min " in first_dpo_row and table.index(first_dpo_row) > 2
    assert any(line.startswith("| ") and "| rewards/accuracies | 0.0000 | " in line for line in table)
    assert stages_main([str(tmp_path / "nothing")]) == 2 and "holds no finished run" in capsys.readouterr().err


def test_dpo_on_shared_instruction_preferences(tmp_path, shared_data, sft_output):
    out = tmp_path / "dpo_shared"
    run_recipe(
        "dpo", "--model_name_or_path", str(sft_output), "--output_dir", str(out), "--dataset_name", str(shared_data / "raw" / "instruction-data-with-preference.json"),
        "--max_steps", "4", "--max_train_samples", "40", "--max_eval_samples", "8", *FAST,
    )
    metrics = outputs(out)["metrics"]
    assert metrics["eval_initial_rewards/margins"] == 0 and "eval_rewards/margins" in metrics
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"


def test_book_chapter7_configs_chain_from_sft_to_dpo(tmp_path, shared_data):
    """sft_instruction_data.yaml, then dpo_instruction_preference.yaml on its output, on the book's own files
    (a few steps, on the packaged base instead of GPT-2 medium, which would need the Hub)."""
    from hf_llm.training import DEFAULT_BASE_MODEL

    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    short = ["--max_steps", "2", "--max_length", "256", "--max_eval_samples", "8", "--eval_strategy", "no", *FAST]
    run_recipe("sft_lora", "--config", str(RECIPES / "configs" / "sft_instruction_data.yaml"),
               "--model_name_or_path", DEFAULT_BASE_MODEL, "--output_dir", str(sft),
               "--dataset_name", str(shared_data / "raw" / "instruction-data.json"), *short)
    assert (sft / "model.safetensors").is_file() and not (sft / "adapter_config.json").exists()  # trained in full
    run_recipe("dpo", "--config", str(RECIPES / "configs" / "dpo_instruction_preference.yaml"),
               "--model_name_or_path", str(sft), "--output_dir", str(dpo),
               "--dataset_name", str(shared_data / "raw" / "instruction-data-with-preference.json"), *short)
    metrics = outputs(dpo)["metrics"]
    assert metrics["eval_initial_rewards/margins"] == 0 and metrics["eval_rewards/margins"] != 0
    adapter = json.loads((dpo / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and sorted(adapter["target_modules"]) == ["c_attn", "c_proj"]


def test_pipeline_runs_every_stage_under_accelerate_launch(tmp_path):
    """`bash recipes/pipeline.sh --max_steps 2 --max_eval_samples 4` from another folder: every stage, each
    under `accelerate launch` (one process, accelerate's defaults), from the outputs of the one before; one
    finished run per stage in ./outputs, the scripted chat talks to the most advanced, and the table ends it."""
    import os
    import subprocess

    bin_dir = str(Path(sys.executable).parent)  # this interpreter's `accelerate` and `python` come first
    env = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(["bash", str(RECIPES / "pipeline.sh"), "--max_steps", "2", "--max_eval_samples", "4"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    commands = [line[4:] for line in result.stderr.splitlines() if line.startswith(">>> ")]
    stages = ["sft_lora", "reward_modeling", "dpo", "rl", "evaluate", "evaluate", "chat"]
    assert [Path(c.split()[2]).stem for c in commands] == stages
    assert all(c.startswith("accelerate launch ") for c in commands)
    for folder in ["sft_lora", "reward_modeling", "dpo", "rl"]:
        run = json.loads((tmp_path / "outputs" / folder / "hf_llm_run.json").read_text())
        assert run["completed"] is True, folder
    for folder in ["evaluate_dpo", "evaluate_rl"]:
        assert "eval_win_rate" in json.loads((tmp_path / "outputs" / folder / "eval_results.json").read_text())
    assert "talking with outputs/dpo" in result.stderr
    table = result.stdout[result.stdout.index("| stage | held-out figure |"):].splitlines()
    assert [row.split("|")[1].strip() for row in table[2:] if not row.startswith("|  |")] == [
        "sft_lora", "reward_modeling", "dpo", "rl", "evaluate (evaluate_dpo)", "evaluate (evaluate_rl)"]
