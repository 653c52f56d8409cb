"""recipes/rl.py: online RL (GRPO, RLOO) of a LoRA adapter over the SFT model against our reward model."""

import json
import logging
import re

import pytest
import torch

from test_distributed import LAUNCH_RECIPE, RECIPES, assert_succeeded, launch
from test_recipes import FAST, assert_adapter_card_loads_the_saved_adapter, record_trainers, run_recipe

# A few held-out prompts and short answers: enough to see every figure move, in seconds.
SHORT = ["--max_eval_samples", "4", "--max_completion_length", "16", "--num_generations", "2",
         "--per_device_train_batch_size", "4", "--report_examples", "2"]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Short runs of the SFT and reward-modelling stages: what outputs/sft_lora and outputs/reward_modeling hold."""
    root = tmp_path_factory.mktemp("stages")
    run_recipe("sft_lora", "--output_dir", str(root / "sft_lora"), "--max_steps", "4", "--max_eval_samples", "8",
               "--sample_max_new_tokens", "4", *FAST)
    run_recipe("reward_modeling", "--output_dir", str(root / "reward_modeling"), "--max_steps", "4",
               "--max_eval_samples", "8", "--learning_rate", "3e-3", *FAST)
    return root


def stage_flags(stages) -> list[str]:
    return ["--model_name_or_path", str(stages / "sft_lora"), "--reward_model_name_or_path", str(stages / "reward_modeling")]


def assert_evaluate_reproduces(out, eval_dir, metrics):
    """recipes/evaluate.py on the saved RL adapter, with no flags but its output folder, gives the run's held-out
    figures: its data (SHORT's 4 prompts, or its data file), answer length (16 tokens) and reward model are
    those the run recorded."""
    run_recipe("evaluate", "--model_name_or_path", str(out), "--output_dir", str(eval_dir))
    evaluated = json.loads((eval_dir / "eval_results.json").read_text())
    assert set(evaluated) == {"eval_reward", "eval_sampled_reward", "eval_kl", "eval_response_length", "eval_response_loss"}
    for name, value in evaluated.items():
        assert value == pytest.approx(metrics[name], rel=1e-6, abs=1e-9), name


def test_algorithm_chooses_the_trainer_config_from_flag_or_yaml(tmp_path):
    from trl import GRPOConfig, RLOOConfig

    from hf_llm.training import rl_config_class

    config = tmp_path / "rl.yaml"
    config.write_text("algorithm: rloo\n")
    assert rl_config_class([]) is GRPOConfig
    assert rl_config_class(["--algorithm", "rloo"]) is RLOOConfig
    assert rl_config_class(["--algorithm=rloo"]) is RLOOConfig
    assert rl_config_class(["--config", str(config)]) is RLOOConfig
    assert rl_config_class(["--config", str(config), "--algorithm", "grpo"]) is GRPOConfig  # the flag wins


def test_without_the_earlier_stages_the_error_names_the_command_to_run_first(tmp_path, monkeypatch, capsys, stages):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        run_recipe("rl", "--max_steps", "2")
    message = capsys.readouterr().err
    assert err.value.code == 2 and "outputs/sft_lora: no such folder" in message
    assert "accelerate launch recipes/sft_lora.py" in message
    # With the SFT stage done, the reward model is what is missing.
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "sft_lora").symlink_to(stages / "sft_lora")
    with pytest.raises(SystemExit) as err:
        run_recipe("rl", "--max_steps", "2")
    message = capsys.readouterr().err
    assert err.value.code == 2 and "--reward_model_name_or_path outputs/reward_modeling: no such folder" in message
    assert "accelerate launch recipes/reward_modeling.py" in message
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["sft_lora"]  # nothing written


def test_conversations_for_a_policy_without_a_chat_template_are_refused_before_anything_is_written(tmp_path, capsys, stages):
    data = tmp_path / "conversations.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": str(i)}]} for i in range(8)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for flags in (["--dataset_name", str(data)], ["--as_messages", "true"]):
        with pytest.raises(SystemExit) as err:
            run_recipe("rl", *stage_flags(stages), "--output_dir", str(tmp_path / "rl"), *flags)
        message = capsys.readouterr().err
        assert err.value.code == 2 and "the policy's tokenizer has no chat template to ask them in" in message, message
        assert "Start from an SFT run on conversations" in message
    assert not (tmp_path / "rl").exists()


def test_the_reward_model_loads_with_its_trained_score_head(stages):
    from peft import PeftModel

    from hf_llm import GPTForSequenceClassification
    from hf_llm.training import RecipeError, load_reward_model

    folder = stages / "reward_modeling"
    reward_model, tokenizer = load_reward_model(str(folder))
    base = GPTForSequenceClassification.from_pretrained(folder / "base", num_labels=1, pad_token_id=tokenizer.pad_token_id)
    untrained = base.score.weight.detach().clone()
    with_peft = PeftModel.from_pretrained(base, folder).eval()
    ids = tokenizer(["def f(x):\n    return x", "Below is an instruction"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reward_model(**ids).logits, with_peft(**ids).logits)
    assert not torch.allclose(reward_model.score.weight, untrained)  # the trained head, not a new one
    assert not reward_model.training and not any(p.requires_grad for p in reward_model.parameters())
    # The SFT adapter has no score head: its "rewards" would be noise, so it is refused.
    with pytest.raises(RecipeError, match="CAUSAL_LM adapter, not a reward model"):
        load_reward_model(str(stages / "sft_lora"))


def test_the_reports_sampled_answers_are_drawn_from_fixed_seeds_and_leave_the_training_rng_alone():
    """The sampled answers of the RL report are the same whenever they are drawn (recipes/evaluate.py redraws
    them), differ between seeds, and the random numbers training draws next are as if they were never drawn."""
    from hf_llm import GPTForCausalLM
    from hf_llm.tokenization import load_tokenizer
    from hf_llm.training import DEFAULT_BASE_MODEL
    from hf_llm.training.rl import sampled_answers

    model, tokenizer = GPTForCausalLM.from_pretrained(DEFAULT_BASE_MODEL), load_tokenizer(DEFAULT_BASE_MODEL)
    torch.manual_seed(123)
    first = sampled_answers(model, tokenizer, "def ", 4, 12, seed=0)
    after_drawing = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_drawing)
    assert sampled_answers(model, tokenizer, "def ", 4, 12, seed=0) == first
    assert len(first) == 4 and len(set(first)) > 1  # sampled, not greedy
    assert sampled_answers(model, tokenizer, "def ", 4, 12, seed=1) != first


def test_the_kl_penalty_cannot_be_switched_off(tmp_path, capsys, stages):
    out = tmp_path / "rl"
    with pytest.raises(SystemExit) as err:
        run_recipe("rl", *stage_flags(stages), "--output_dir", str(out), "--beta", "0", *SHORT, *FAST)
    assert err.value.code == 2 and "KL penalty" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_rl_embedded_default(algorithm, tmp_path, capsys, stages):
    from hf_llm.training import ModelArguments, load_model, load_sft_data, resolve_tokenizer, response_loss
    from hf_llm.training import DataArguments

    out = tmp_path / algorithm
    extra = ["--reward_funcs", "python_syntax", "length_penalty", "--reward_weights", "1.0", "0.5", "0.5"] if algorithm == "rloo" else []
    run_recipe("rl", "--algorithm", algorithm, *stage_flags(stages), "--output_dir", str(out), "--max_steps", "2",
               "--learning_rate", "1e-2", *SHORT, *extra, *FAST)
    metrics = json.loads((out / "all_results.json").read_text())
    # Before training the adapter is zero: the policy is the reference, so the KL is exactly 0.
    assert metrics["eval_initial_kl"] == 0.0
    assert metrics["eval_kl"] != 0.0  # two steps moved the policy away from it
    for name in ("reward", "sampled_reward", "response_loss", "response_length"):
        assert isinstance(metrics[f"eval_{name}"], float) and isinstance(metrics[f"eval_initial_{name}"], float)
    assert 0.0 <= metrics["eval_win_rate"] <= 1.0
    assert 0 < metrics["eval_initial_response_length"] <= 16 and 0 < metrics["eval_response_length"] <= 16
    # The check without the reward model, before training, is the SFT model's own held-out response loss.
    sft = str(stages / "sft_lora")
    tokenizer = resolve_tokenizer(ModelArguments(model_name_or_path=sft))
    held_out = load_sft_data(DataArguments(max_eval_samples=4))["test"]
    expected = response_loss(load_model(ModelArguments(model_name_or_path=sft)), tokenizer, held_out["prompt"], held_out["completion"])
    assert metrics["eval_initial_response_loss"] == pytest.approx(expected["response_loss"], abs=1e-5)
    # Training logged the reward and the KL to the reference at each step, the Python rewards too.
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "kl" in entry]
    assert len(steps) == 2 and all("reward" in entry for entry in steps)
    if algorithm == "rloo":
        assert all("rewards/python_syntax/mean" in entry and "rewards/length_penalty/mean" in entry for entry in steps)
    assert any("rewards/reward_modeling/mean" in entry for entry in steps)
    # Answers side by side, before and after, each with its reward and the data's reference answer.
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all({"prompt", "before", "after", "reward_before", "reward_after", "sampled_reward_before",
                                   "sampled_reward_after", "reference"} == set(r) for r in rows)
    # The summary gives each figure with its value before training.
    summary = capsys.readouterr().out
    for name in ("reward", "sampled_reward", "kl", "response_loss", "response_length"):
        assert re.search(rf"held-out: eval_{name} -?[\d.]+ \(before training: -?[\d.]+\)", summary), name
    card = (out / "README.md").read_text()
    assert "eval_response_loss" in card and algorithm in card
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert json.loads((out / "hf_llm_run.json").read_text())["completed"] is True
    assert_adapter_card_loads_the_saved_adapter(out)

    # recipes/evaluate.py on the saved adapter gives the same held-out figures, with the same code.
    assert_evaluate_reproduces(out, tmp_path / "eval", metrics)


def test_rl_from_a_chat_model_prompts_in_its_template(tmp_path, monkeypatch, stages, caplog):
    """rl.py from an SFT adapter tuned on conversations: the trainer's prompts are the instructions asked in its
    chat template, as recipes/chat.py asks them, and recipes/evaluate.py rebuilds the same held-out prompts.
    The reward model here was trained on instruction-template prompts, and the run warns that it was."""
    from trl import GRPOTrainer

    chat_sft, out = tmp_path / "chat_sft", tmp_path / "rl"
    run_recipe("sft_lora", "--output_dir", str(chat_sft), "--as_messages", "true", "--max_steps", "2", "--max_train_samples", "32",
               "--max_eval_samples", "4", "--sample_max_new_tokens", "4", *FAST)
    trainers = record_trainers(monkeypatch, GRPOTrainer)
    with caplog.at_level(logging.WARNING, logger="hf_llm"):
        run_recipe("rl", "--model_name_or_path", str(chat_sft), "--reward_model_name_or_path", str(stages / "reward_modeling"),
                   "--output_dir", str(out), "--max_steps", "1", "--max_train_samples", "32", "--learning_rate", "1e-2",
                   *SHORT, *FAST)
    (warning,) = [r.getMessage() for r in caplog.records if "format it never saw" in r.getMessage()]
    assert f"reward_modeling.py --model_name_or_path {chat_sft}" in warning and "trained without one" in warning
    (trainer,) = trainers
    held_out = [json.loads(line)["prompt"] for line in (out / "answers.jsonl").read_text().splitlines()]
    for prompt in list(trainer.train_dataset["prompt"]) + held_out:
        assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_end|>\n<|im_start|>assistant\n"), prompt
    metrics = json.loads((out / "all_results.json").read_text())
    assert_evaluate_reproduces(out, tmp_path / "eval", metrics)


def test_rl_ddp_two_processes(tmp_path, stages):
    out = tmp_path / "rl_ddp"
    result = launch([str(LAUNCH_RECIPE), "--print-weights-digest", str(RECIPES / "rl.py"), *stage_flags(stages),
                     "--output_dir", str(out), "--max_steps", "2", *SHORT, *FAST], port=29541)
    assert_succeeded(result)
    metrics = json.loads((out / "all_results.json").read_text())
    assert metrics["eval_initial_kl"] == 0.0 and "eval_reward" in metrics
    # Each rank prints a digest of its trained adapter (tests/launch_recipe.py): the replicas stayed in sync.
    digests = dict(re.findall(r"rank (\d): weights at train end sha256 ([0-9a-f]{64})", result.stdout + result.stderr))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    # Written once, by the main process; no line of the run printed twice. (The main process loads two models,
    # the policy and the reward model, so its weight-loading bar is drawn twice, by it alone.)
    assert len((out / "answers.jsonl").read_text().splitlines()) == 2
    lines = [line.strip() for chunk in (result.stdout + result.stderr).splitlines() for line in chunk.split("\r")
             if not line.startswith("Loading weights:")]
    repeated = {line for line in lines if line and lines.count(line) > 1}
    assert not repeated, sorted(repeated)
