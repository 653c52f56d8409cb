"""Evaluation: hf_llm's `evaluate` metric modules (offline, hand-computed cases), the library's figures
against independent computations, and recipes/evaluate.py reproducing each training recipe's own figures."""

import json
import logging
import math
import re
import shutil
import socket
import stat
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT
from test_recipes import FAST, run_recipe

METRICS = REPO_ROOT / "hf_llm" / "metrics"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Nothing here may reach the network: the metrics load from the package, offline."""
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def load(name: str, folder: Path = METRICS):
    import evaluate

    return evaluate.load(str(folder / name), keep_in_memory=True)


# --- the metric modules ----------------------------------------------------------------------------

def test_every_metric_loads_offline_from_a_read_only_copy_of_the_package(tmp_path):
    from hf_llm.metrics import METRIC_NAMES

    copy = tmp_path / "metrics"
    shutil.copytree(METRICS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for path in sorted(copy.rglob("*"), reverse=True):
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        assert sorted(p.name for p in METRICS.iterdir() if (p / f"{p.name}.py").is_file()) == sorted(METRIC_NAMES)
        for name in METRIC_NAMES:
            metric = load(name, copy)
            assert metric.description.strip() and metric.inputs_description.strip(), name
    finally:
        for path in sorted(copy.rglob("*")):
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_metric_modules_are_package_data():
    import tomllib

    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["hf_llm"]
    assert "metrics/*/*.py" in package_data


def test_perplexity_is_token_weighted():
    metric = load("perplexity")
    assert metric.compute(nll=[2.0, 1.0], tokens=[2, 1]) == {"loss": 1.0, "perplexity": math.e, "tokens": 3}
    # 4 nats over 1 token and 1 nat over 4 tokens: 5 / 5 = 1, not the mean of the per-example means (2.125).
    assert metric.compute(nll=[4.0, 1.0], tokens=[1, 4])["loss"] == 1.0
    assert metric.compute(nll=[800.0], tokens=[1])["perplexity"] == math.inf
    for bad in (dict(nll=[1.0], tokens=[0]), dict(nll=[1.0, 1.0], tokens=[2, -1]), dict(nll=[1.0], tokens=[1, 2])):
        with pytest.raises(ValueError):
            metric.compute(**bad)


def test_response_loss_is_the_token_weighted_loss_over_response_tokens():
    metric = load("perplexity")  # the response tokens' summed losses and counts; an empty response counts nothing
    assert metric.compute(nll=[3.0, 1.0, 0.0], tokens=[3, 1, 0])["loss"] == 1.0


def test_pairwise_accuracy_counts_ties_as_wrong():
    metric = load("pairwise_accuracy")
    result = metric.compute(chosen_scores=[1.0, 0.0, 2.0], rejected_scores=[0.0, 0.0, 3.0])
    assert result == {"accuracy": pytest.approx(1 / 3), "margin": 0.0, "pairs": 3}
    assert metric.compute(chosen_scores=[0.5, 0.25], rejected_scores=[0.0, -0.25]) == {"accuracy": 1.0, "margin": 0.5, "pairs": 2}
    with pytest.raises(ValueError, match="No pairs"):
        metric.compute(chosen_scores=[], rejected_scores=[])
    with pytest.raises(ValueError, match="NaN"):
        metric.compute(chosen_scores=[float("nan")], rejected_scores=[0.0])


def test_win_rate_counts_ties_as_half():
    metric = load("win_rate")
    result = metric.compute(rewards=[1.0, 0.0, -1.0, 2.0], reference_rewards=[0.0, 0.0, 0.0, 1.0])
    assert result == {"win_rate": 0.625, "mean_reward": 0.5, "reference_mean_reward": 0.25, "prompts": 4}
    assert metric.compute(rewards=[0.3, -2.0], reference_rewards=[0.3, -2.0])["win_rate"] == 0.5
    with pytest.raises(ValueError):
        metric.compute(rewards=[], reference_rewards=[])


def test_rouge_l():
    metric = load("rouge_l")
    # LCS 3 of 3 predicted and 4 reference tokens: P = 1, R = 3/4, F1 = 6/7; case is ignored.
    assert metric.compute(predictions=["the cat sat"], references=["The cat sat down"])["rouge_l"] == pytest.approx(6 / 7)
    # A subsequence, not a substring: "a c" is common to "a b c" and "a c d" (P = R = 2/3).
    assert metric.compute(predictions=["a b c"], references=["a c d"])["rouge_l"] == pytest.approx(2 / 3)
    assert metric.compute(predictions=["a b c"], references=["c b a"])["rouge_l"] == pytest.approx(1 / 3)  # order matters
    # Averaged over examples; an empty side scores 0, both empty 1.
    result = metric.compute(predictions=["x y", "", "", "same words"], references=["z", "z", "", "Same  words"])
    assert result["rouge_l"] == pytest.approx((0 + 0 + 1 + 1) / 4)
    with pytest.raises(ValueError):
        metric.compute(predictions=["a"], references=["a", "b"])


# --- the library against independent computations -----------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    """A small random GPT with the packaged tokenizer, and a reward model of the same shape."""
    from hf_llm import GPTConfig, GPTForCausalLM, GPTForSequenceClassification
    from hf_llm.tokenization import load_tokenizer
    from hf_llm.training import DEFAULT_BASE_MODEL

    tokenizer = load_tokenizer(DEFAULT_BASE_MODEL)
    tokenizer.pad_token = tokenizer.eos_token
    config = dict(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    lm = GPTForCausalLM(GPTConfig(**config)).eval()
    reward = GPTForSequenceClassification(GPTConfig(**config, num_labels=1, pad_token_id=tokenizer.pad_token_id)).eval()
    return lm, reward, tokenizer


PROMPTS = ["### Instruction:\nAdd 1 and 2.\n\n### Response:\n", "Q: name a colour\nA:", "x = f(2)  #"]
COMPLETIONS = ["3", " blue, or perhaps a rather deep shade of red", " doubled: x == 4"]


def independent_completion_terms(model, tokenizer, prompt, completion):
    """The completion tokens' cross-entropies, one example at a time, no padding."""
    ids = tokenizer(prompt + completion + tokenizer.eos_token, return_tensors="pt").input_ids
    start = len(tokenizer(prompt).input_ids)
    assert ids[0, :start].tolist() == tokenizer(prompt).input_ids  # the prompts end on a token boundary
    with torch.no_grad():
        logits = model(ids).logits[0]
    return F.cross_entropy(logits[start - 1 : -1], ids[0, start:], reduction="none")


def test_response_loss_is_the_mean_cross_entropy_over_completion_tokens(tiny):
    from hf_llm.training import response_loss

    model, _, tokenizer = tiny
    terms = torch.cat([independent_completion_terms(model, tokenizer, p, c) for p, c in zip(PROMPTS, COMPLETIONS)])
    model.train()  # the mode it is in is restored afterwards
    result = response_loss(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=2)
    assert model.training
    model.eval()
    assert result["tokens"] == len(terms)
    assert result["response_loss"] == pytest.approx(terms.double().mean().item(), rel=1e-6)
    # Not the mean of the per-example means (the examples have different lengths).
    per_example = [independent_completion_terms(model, tokenizer, p, c).mean().item() for p, c in zip(PROMPTS, COMPLETIONS)]
    assert abs(result["response_loss"] - sum(per_example) / 3) > 1e-3


def test_text_perplexity_of_blocks_and_of_texts(tiny):
    from hf_llm.training import text_perplexity
    from hf_llm.training.recipe_data import blocks_dataset

    model, _, tokenizer = tiny
    texts = ["def add(a, b):\n    return a + b\n" * 6, "import os\nprint(os.getcwd())\n" * 5]
    blocks = blocks_dataset(texts, tokenizer, 16, 16)["input_ids"]
    with torch.no_grad():
        losses = [model(torch.tensor([b]), labels=torch.tensor([b])).loss.item() for b in blocks]  # 15 tokens each
    result = text_perplexity(model, tokenizer, blocks, batch_size=3)
    assert result["tokens"] == 15 * len(blocks)
    assert result["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
    assert text_perplexity(model, tokenizer, texts, block_size=16) == result


def test_reward_scores_and_pairwise_accuracy(tiny):
    from hf_llm.training import pairwise_accuracy, reward_scores

    _, reward, tokenizer = tiny
    chosen, rejected = COMPLETIONS, ["no", " green", " x"]
    with torch.no_grad():
        def score(text):
            return reward(**tokenizer(text + tokenizer.eos_token, return_tensors="pt")).logits.item()

        margins = [score(p + c) - score(p + r) for p, c, r in zip(PROMPTS, chosen, rejected)]
    assert reward_scores(reward, tokenizer, PROMPTS, chosen, batch_size=2) == pytest.approx([score(p + c) for p, c in zip(PROMPTS, chosen)], abs=1e-5)
    result = pairwise_accuracy(reward, tokenizer, PROMPTS, chosen, rejected, batch_size=2)
    assert result["accuracy"] == sum(m > 0 for m in margins) / 3
    assert result["margin"] == pytest.approx(sum(margins) / 3, abs=1e-5)


def test_implicit_reward_accuracy_on_a_peft_model(tiny):
    from peft import LoraConfig, get_peft_model

    from hf_llm.training import completion_logprobs, preference_accuracy, response_loss

    model, _, tokenizer = tiny
    rejected = ["4", " none", " nothing"]
    policy = get_peft_model(model, LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM")).eval()
    try:
        # LoRA B starts at zero: the policy is its reference, every reward is 0, and a tie is no preference.
        assert preference_accuracy(policy, tokenizer, PROMPTS, COMPLETIONS, rejected, beta=0.1) == {"accuracy": 0.0, "margin": 0.0, "pairs": 3}
        assert response_loss(policy, tokenizer, PROMPTS, COMPLETIONS) == response_loss(model, tokenizer, PROMPTS, COMPLETIONS)
        torch.manual_seed(1)
        with torch.no_grad():
            for name, param in policy.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)

        def logp(prompt, completion):
            return -independent_completion_terms(policy, tokenizer, prompt, completion).double().sum().item()

        def reward(prompt, completion):
            with policy.disable_adapter():
                reference = logp(prompt, completion)
            return 0.1 * (logp(prompt, completion) - reference)

        margins = [reward(p, c) - reward(p, r) for p, c, r in zip(PROMPTS, COMPLETIONS, rejected)]
        result = preference_accuracy(policy, tokenizer, PROMPTS, COMPLETIONS, rejected, beta=0.1, batch_size=2)
        assert result["accuracy"] == sum(m > 0 for m in margins) / 3 and result["margin"] == pytest.approx(sum(margins) / 3, abs=1e-5)
        assert completion_logprobs(policy, tokenizer, PROMPTS, COMPLETIONS)[0] == pytest.approx([logp(p, c) for p, c in zip(PROMPTS, COMPLETIONS)], rel=1e-5)
    finally:
        policy.unload()


def test_win_rate_and_generated_answers(tiny):
    from hf_llm.training import generate_answers, win_rate
    from hf_llm.training.generation import greedy_continuation

    model, reward, tokenizer = tiny
    answers = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=5)
    assert answers == [greedy_continuation(model, tokenizer, p, 5) for p in PROMPTS]
    assert win_rate(reward, tokenizer, PROMPTS, answers, answers)["win_rate"] == 0.5  # the same answers tie
    result = win_rate(reward, tokenizer, PROMPTS, COMPLETIONS, answers)
    from hf_llm.training import reward_scores

    mine, theirs = reward_scores(reward, tokenizer, PROMPTS, COMPLETIONS), reward_scores(reward, tokenizer, PROMPTS, answers)
    assert result["win_rate"] == sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(mine, theirs)) / 3
    assert result["mean_reward"] == pytest.approx(sum(mine) / 3) and result["reference_mean_reward"] == pytest.approx(sum(theirs) / 3)


def test_library_refuses_bad_input_with_a_recipe_error(tiny):
    from datasets import Dataset

    from hf_llm.training import RecipeError, held_out_figures, response_loss, reward_scores

    model, reward, tokenizer = tiny
    with pytest.raises(RecipeError, match="one completion per prompt"):
        response_loss(model, tokenizer, PROMPTS, COMPLETIONS[:2])
    with pytest.raises(RecipeError, match="num_labels=1"):
        reward_scores(model, tokenizer, PROMPTS, COMPLETIONS)
    data = Dataset.from_dict({"prompt": PROMPTS, "completion": COMPLETIONS})
    with pytest.raises(RecipeError, match="Unknown figure"):
        held_out_figures(["bleu"], model, tokenizer, data)
    with pytest.raises(RecipeError, match="columns"):
        held_out_figures(["pairwise_accuracy"], reward, tokenizer, data)
    with pytest.raises(RecipeError, match="reference"):
        held_out_figures(["preference_accuracy"], model, tokenizer, data.add_column("chosen", COMPLETIONS).add_column("rejected", COMPLETIONS), beta=0.1)


# --- recipes/evaluate.py reproduces each recipe's own figures ---------------------------------------------

def evaluate_run(folder: Path, out: Path, *args: str) -> dict:
    run_recipe("evaluate", "--model_name_or_path", str(folder), "--output_dir", str(out), *args)
    return json.loads((out / "eval_results.json").read_text())


def recipe_metrics(folder: Path) -> dict:
    return json.loads((folder / "all_results.json").read_text())


def assert_same_figures(evaluated: dict, recorded: dict, names):
    for name in names:
        assert name in recorded and name in evaluated, name
        assert evaluated[name] == pytest.approx(recorded[name], rel=1e-6, abs=1e-9), name


def test_pretrain_figures_reproduced(tmp_path, caplog):
    """evaluate.py on a run's folder, with no flags, rebuilds the run's held-out data from its record (data
    flags, seed, block size; all but the defaults here); a flag given on the command line wins."""
    out = tmp_path / "pretrain"
    run_recipe("pretrain", "--output_dir", str(out), "--max_steps", "4", "--max_train_samples", "300",
               "--max_eval_samples", "30", "--block_size", "64", "--seed", "7", "--n_layer", "1", "--n_embd", "32",
               "--bpe_vocab_size", "400", "--learning_rate", "3e-3", "--warmup_steps", "0", "--sample_prompts", "def ",
               "--sample_max_new_tokens", "2", *FAST)
    recorded = recipe_metrics(out)
    with caplog.at_level(logging.INFO, logger="hf_llm"):
        evaluated = evaluate_run(out, tmp_path / "eval")
    assert set(evaluated) == {"eval_text_loss", "eval_perplexity"}
    assert_same_figures(evaluated, recorded, evaluated)
    (taken,) = [r.getMessage() for r in caplog.records if "recorded them" in r.getMessage()]
    assert {"--max_eval_samples 30", "--seed 7", "--block_size 64"} <= set(re.findall(r"--\w+ \S+", taken))
    # The trainer's own held-out loss (a mean over equal blocks) is the same figure, up to float32 sums.
    assert recorded["eval_text_loss"] == pytest.approx(recorded["eval_loss"], rel=1e-5)
    # Given flags win over the record: other blocks, another figure.
    other = evaluate_run(out, tmp_path / "eval_other", "--block_size", "32", "--max_eval_samples", "10")
    assert other["eval_text_loss"] != pytest.approx(evaluated["eval_text_loss"], rel=1e-6)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stages") / "sft_lora"
    run_recipe("sft_lora", "--output_dir", str(out), "--max_steps", "4", "--max_eval_samples", "8", "--sample_max_new_tokens", "8", *FAST)
    return out


def test_sft_figures_reproduced(sft_run, tmp_path):
    recorded = recipe_metrics(sft_run)
    evaluated = evaluate_run(sft_run, tmp_path / "eval")  # --max_eval_samples 8, --max_new_tokens 8: the run's record
    assert set(evaluated) == {"eval_response_loss", "eval_base_response_loss", "eval_rouge_l"}
    assert_same_figures(evaluated, recorded, evaluated)
    assert 0.0 <= evaluated["eval_rouge_l"] <= 1.0
    # The 8 held-out rows are one evaluation batch, whose TRL loss is the same token-weighted mean: the
    # library tokenizes as the trainer does.
    assert recorded["eval_response_loss"] == pytest.approx(recorded["eval_loss"], rel=1e-5)
    assert recorded["eval_base_response_loss"] == pytest.approx(recorded["eval_base_loss"], rel=1e-5)


def test_dpo_figures_reproduced(sft_run, tmp_path):
    out = tmp_path / "dpo"
    run_recipe("dpo", "--model_name_or_path", str(sft_run), "--output_dir", str(out), "--max_steps", "4",
               "--max_eval_samples", "8", "--learning_rate", "5e-3", *FAST)
    recorded = recipe_metrics(out)
    evaluated = evaluate_run(out, tmp_path / "eval")  # the held-out data and beta: the run's record
    assert set(evaluated) == {"eval_preference_accuracy", "eval_preference_margin"}
    assert_same_figures(evaluated, recorded, evaluated)
    # One evaluation batch: TRL's accuracy and mean margin are the same implicit-reward figures (TRL sums
    # log-probabilities of about -200 in float32, so its margins are good to a few 1e-6).
    assert recorded["eval_preference_accuracy"] == pytest.approx(recorded["eval_rewards/accuracies"])
    assert recorded["eval_preference_margin"] == pytest.approx(recorded["eval_rewards/margins"], abs=2e-5)
    assert recorded["eval_preference_margin"] != 0


def test_reward_model_from_the_sft_adapter_starts_from_its_merged_weights(sft_run, tmp_path):
    """reward_modeling.py from the SFT stage's (causal-LM) adapter: the adapter merged into its base, a new score
    head on the merged weights; the saved folder carries that start in base/, its card loads it back, and
    recipes/evaluate.py reproduces the run's pair accuracy."""
    from hf_llm import GPTForSequenceClassification
    from hf_llm.training import ModelArguments, load_model
    from test_recipes import assert_adapter_card_loads_the_saved_adapter

    out = tmp_path / "rm"
    run_recipe("reward_modeling", "--model_name_or_path", str(sft_run), "--output_dir", str(out), "--max_steps", "2",
               "--max_eval_samples", "8", "--learning_rate", "3e-3", *FAST)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["base_model_name_or_path"] == str((out / "base").resolve())
    start = GPTForSequenceClassification.from_pretrained(out / "base")
    merged_sft = load_model(ModelArguments(model_name_or_path=str(sft_run)))
    for name, weight in merged_sft.transformer.state_dict().items():
        assert torch.equal(start.transformer.state_dict()[name], weight), name
    assert_adapter_card_loads_the_saved_adapter(out)
    recorded = recipe_metrics(out)
    evaluated = evaluate_run(out, tmp_path / "eval", "--max_eval_samples", "8")
    assert set(evaluated) == {"eval_pairwise_accuracy", "eval_pairwise_margin"}
    assert_same_figures(evaluated, recorded, evaluated)


def test_reward_figures_reproduced_and_carried_by_the_model_card(tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "rm"
    run_recipe("reward_modeling", "--output_dir", str(out), "--max_steps", "4", "--max_eval_samples", "16", *FAST)
    recorded = recipe_metrics(out)
    evaluation = tmp_path / "eval"
    evaluated = evaluate_run(out, evaluation, "--max_eval_samples", "16", "--model_card", "true")
    assert set(evaluated) == {"eval_pairwise_accuracy", "eval_pairwise_margin"}
    assert_same_figures(evaluated, recorded, evaluated)
    # The trainer's pair metrics go through the same metric module.
    assert recorded["eval_pairwise_accuracy"] == recorded["eval_accuracy"]
    assert recorded["eval_pairwise_margin"] == pytest.approx(recorded["eval_margin"], abs=1e-5)
    # The training card carries them as model-index results, and so does the evaluation's card, which keeps
    # the training run's other results.
    trained = {r.metric_type: r.metric_value for r in ModelCard.load(out / "README.md").data.eval_results}
    assert trained["eval_pairwise_accuracy"] == pytest.approx(recorded["eval_pairwise_accuracy"])
    card = ModelCard.load(evaluation / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["eval_pairwise_accuracy"] == pytest.approx(evaluated["eval_pairwise_accuracy"])
    assert results["eval_pairwise_margin"] == pytest.approx(evaluated["eval_pairwise_margin"])
    assert results["eval_loss"] == pytest.approx(recorded["eval_loss"])
    assert {r.task_type for r in card.data.eval_results} == {"text-classification"}


def test_evaluate_on_the_embedded_default_reproduces_the_packaged_model_figures(tmp_path, capsys):
    from huggingface_hub import ModelCard

    from hf_llm.training import DEFAULT_BASE_MODEL

    evaluated = evaluate_run(Path(DEFAULT_BASE_MODEL), tmp_path / "eval", "--model_card", "true")
    packaged = json.loads((Path(DEFAULT_BASE_MODEL) / "metrics.json").read_text())
    # The trainer's figure, from its float32 evaluation loop, over the same 80 held-out blocks.
    assert evaluated["eval_perplexity"] == pytest.approx(packaged["eval_perplexity"], rel=1e-5)
    printed = capsys.readouterr().out
    assert "eval_perplexity" in printed and "eval_text_loss" in printed
    results = {r.metric_type: r.metric_value for r in ModelCard.load(tmp_path / "eval" / "README.md").data.eval_results}
    assert results["eval_perplexity"] == pytest.approx(evaluated["eval_perplexity"])


def test_new_card_for_a_model_without_one(tmp_path):
    from huggingface_hub import ModelCard

    from hf_llm.training.evaluation import write_evaluation

    write_evaluation(tmp_path / "eval", {"eval_rouge_l": 0.25}, model_name_or_path=str(tmp_path / "nowhere"),
                     dataset="my-data", task="causal_lm", model_card=True)
    [result] = ModelCard.load(tmp_path / "eval" / "README.md").data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_name) == ("eval_rouge_l", 0.25, "my-data")


def test_results_are_written_completely_or_not_at_all(tmp_path, monkeypatch):
    from hf_llm.training import evaluation

    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval_results.json").write_text('{"old": 1}')

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(evaluation, "card_eval_results", broken)
    with pytest.raises(RuntimeError):
        evaluation.write_evaluation(out, {"eval_x": 1.0}, model_name_or_path="m", dataset="d", task="causal_lm", model_card=True)
    assert json.loads((out / "eval_results.json").read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def test_evaluate_refuses_what_it_cannot_compute(tmp_path, capsys):
    from hf_llm.training import DEFAULT_BASE_MODEL

    for figures, message in ((["bleu"], "Unknown figure"), (["pairwise_accuracy", "perplexity"], "separate runs"),
                             (["win_rate"], "reward model")):
        with pytest.raises(SystemExit) as err:
            run_recipe("evaluate", "--model_name_or_path", DEFAULT_BASE_MODEL, "--output_dir", str(tmp_path / "eval"),
                       "--figures", *figures, "--max_eval_samples", "2")
        assert err.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_recipes_evaluate_under_accelerate_launch_with_two_processes(tmp_path):
    """Both processes compute (no collectives), only the main one writes; nothing hangs. Run as a script,
    recipes/evaluate.py does not shadow the `evaluate` library."""
    from test_distributed import launch

    out = tmp_path / "eval"
    result = launch([str(REPO_ROOT / "recipes" / "evaluate.py"), "--output_dir", str(out), "--max_eval_samples", "10",
                     "--block_size", "64"], port=29533)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert result.stdout.count("eval_perplexity") == 1  # the table, printed once
    assert json.loads((out / "eval_results.json").read_text())["eval_perplexity"] > 1
