"""Online reinforcement learning from a reward model (`recipes/rl.py`): which TRL trainer (GRPO or RLOO), the
reward model and plain Python rewards it is given, the prompts, and the held-out report before and after.

The policy is the SFT stage's model with a new LoRA adapter; the reference the KL penalty measures against
is that same model with the adapter switched off, so no second copy is held.
"""

import argparse
import ast
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

import yaml
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from .adapters import adapter_disabled, peft_config_for
from .errors import RecipeError
from .evaluation import completion_logprobs, generate_answers, load_metric, pad_id, response_loss, reward_scores, scoring
from .loading import check_vocab_agreement, load_model, refuse_missing_folder, resolve_tokenizer, reward_model_in_folder
from .recipe_data import fit_prompts, has_chat_template, load_rl_prompts

logger = logging.getLogger("hf_llm")

# --algorithm: TRL's config (parsed from the flags) and trainer for each.
ALGORITHMS = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}
DEFAULT_ALGORITHM = "grpo"


def python_syntax(completions, **kwargs) -> list[float]:
    """1.0 for an answer that parses as Python, else 0.0 (an answer cut off mid-statement does not)."""
    scores = []
    for text in completions:
        try:
            ast.parse(text)
            scores.append(1.0)
        except (SyntaxError, ValueError):
            scores.append(0.0)
    return scores


def length_penalty(completion_ids, **kwargs) -> list[float]:
    """Minus the answer's length in hundreds of tokens: a push towards shorter answers (weigh it with
    --reward_weights)."""
    return [-len(ids) / 100 for ids in completion_ids]


# The plain Python rewards --reward_funcs may name, added to the reward model's score (TRL's reward_funcs).
REWARD_FUNCTIONS = {f.__name__: f for f in (python_syntax, length_penalty)}


@dataclass
class RLArguments:
    """The RL algorithm and what rewards the policy's answers.

    `--algorithm` also decides which TRL config's flags the recipe takes (trl.GRPOConfig or trl.RLOOConfig).
    """

    _argument_group_name = "reinforcement learning"

    algorithm: str = field(
        default=DEFAULT_ALGORITHM,
        metadata={"help": "'grpo' (TRL GRPOTrainer: advantages normalised within each prompt's group, the KL in the "
                  "loss) or 'rloo' (TRL RLOOTrainer: leave-one-out baseline, the KL in the reward).",
                  "choices": sorted(ALGORITHMS)},
    )
    reward_model_name_or_path: str = field(
        default="outputs/reward_modeling",
        metadata={"help": "The reward model: the reward_modeling.py output (an adapter with its score head, or "
                  "its merged/ folder), or any GPT sequence-classification checkpoint with one score."},
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": f"Plain Python rewards added to the reward model's score: {', '.join(REWARD_FUNCTIONS)}. "
                  "--reward_weights gives one weight per reward, the reward model's first; unset: none."},
    )
    report_examples: int = field(
        default=3, metadata={"help": "Held-out prompts whose answers before and after are written to answers.jsonl."}
    )

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"--algorithm {self.algorithm!r} is not known here; use one of {sorted(ALGORITHMS)}.")
        unknown = [name for name in self.reward_funcs or [] if name not in REWARD_FUNCTIONS]
        if unknown:
            raise ValueError(f"--reward_funcs {unknown}: not a reward hf_llm has; choose among {sorted(REWARD_FUNCTIONS)}.")


def rl_config_class(argv=None):
    """The TRL config class whose flags the recipe parses: GRPOConfig or RLOOConfig, as `--algorithm` says on
    the command line (or in the `--config` YAML). An unreadable value gives the default's here; the recipe's
    parser then reports it."""
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--algorithm")
    peek.add_argument("--config")
    known, _ = peek.parse_known_args(sys.argv[1:] if argv is None else argv)
    algorithm = known.algorithm
    if algorithm is None and known.config and Path(known.config).is_file():
        settings = yaml.safe_load(Path(known.config).read_text())
        algorithm = settings.get("algorithm") if isinstance(settings, dict) else None
    return ALGORITHMS.get(algorithm, ALGORITHMS[DEFAULT_ALGORITHM])[0]


def load_reward_model(path: str, trust_remote_code: bool = False, flag: str = "--reward_model_name_or_path"):
    """(reward model, its tokenizer): a `GPTForSequenceClassification` with one score, in eval mode and frozen.

    The reward_modeling.py output folder is an adapter whose score head was trained in full
    (`modules_to_save`); it is loaded merged into its base, trained head included. A folder whose score
    head would be new (a language model, or a causal-LM adapter) is refused: its scores would be noise.
    """
    from .arguments import ModelArguments

    refuse_missing_folder(path, flag)
    _refuse_untrained_score_head(path, flag)
    args = ModelArguments(model_name_or_path=path)
    tokenizer = resolve_tokenizer(args)
    model = load_model(args, "sequence-classification", tokenizer, num_labels=1, trust_remote_code=trust_remote_code)
    if model.config.num_labels != 1:
        raise RecipeError(f"{flag} {path} gives {model.config.num_labels} scores; a reward model gives one.")
    # TRL names the reward's logged metrics after this (rewards/<name>/mean); merged, it would be the base's name.
    model.config._name_or_path = path
    return model.eval().requires_grad_(False), tokenizer


def _refuse_untrained_score_head(path: str, flag: str):
    found = reward_model_in_folder(path)
    if found is not None and not found[0]:
        raise RecipeError(
            f"{flag} {path} holds {found[1]}, not a reward model's (SEQ_CLS adapter or sequence classifier, with its "
            f"trained score head): pass the reward_modeling.py output (default outputs/reward_modeling)."
        )


def warn_if_prompt_formats_differ(tokenizer, reward_tokenizer, policy_path: str, reward_path: str) -> None:
    """Warn when the policy is asked in a chat template and the reward model was trained without one, or the
    other way round: the reward model then scores prompts in a format it never saw, and its scores say little."""
    policy_chat, reward_chat = has_chat_template(tokenizer), has_chat_template(reward_tokenizer)
    if policy_chat == reward_chat:
        return
    logger.warning(
        "The policy (%s) is asked in %s, but the reward model (%s) was trained %s: it will score prompts in a "
        "format it never saw. Train the reward model from the same SFT run (reward_modeling.py "
        "--model_name_or_path %s) so both use one format.",
        policy_path, "a chat template" if policy_chat else "the instruction template", reward_path,
        "without one" if policy_chat else "in a chat template", policy_path,
    )


@dataclass
class RLInputs:
    """The loaded pieces of an RL run. `trainer_inputs()` gives them as a TRL GRPO/RLOO trainer's keywords."""

    tokenizer: Any
    model: Any
    reward_model: Any
    reward_tokenizer: Any
    reward_funcs: list  # the reward model first, then the plain Python rewards
    data: Any  # a DatasetDict: "train" prompts; "test" prompts with their reference "completion"
    peft_config: Any
    trainer_class: type

    def trainer_inputs(self) -> dict:
        return dict(
            model=self.model,
            reward_funcs=self.reward_funcs,
            reward_processing_classes=[self.reward_tokenizer] + [None] * (len(self.reward_funcs) - 1),
            train_dataset=self.data["train"],
            processing_class=self.tokenizer,
            peft_config=self.peft_config,
        )


def load_rl_inputs(model_args, data_args, rl_args, training_args) -> RLInputs:
    """Policy (the SFT output merged, with a new LoRA config), reward model and rewards, and the prompts:
    the SFT data's, split as SFT splits them (same seed), so the held-out prompts are ones SFT never trained
    on, rendered in the policy's chat template when its tokenizer has one (`load_rl_prompts`); the held-out
    reference answers are the check that does not use the reward model. Prompts too long to
    leave room for `max_completion_length` new tokens, in the policy's and the reward model's context, are
    dropped or refused (`--too_long`); a prompt cannot be truncated, its end is where the answer starts."""
    config_class, trainer_class = ALGORITHMS[rl_args.algorithm]
    if not isinstance(training_args, config_class):
        raise RecipeError(f"--algorithm {rl_args.algorithm} takes {config_class.__name__}, not {type(training_args).__name__}.")
    if training_args.beta <= 0:
        raise RecipeError(
            f"--beta {training_args.beta}: the KL penalty to the reference model must be on (beta > 0); without "
            f"it the policy is free to drift wherever the reward model is wrong."
        )
    if data_args.too_long == "truncate":
        raise RecipeError("--too_long truncate: a prompt cannot be cut (its end is where the answer starts); use drop or refuse.")
    tokenizer = resolve_tokenizer(model_args)
    data = load_rl_prompts(data_args, seed=training_args.seed, tokenizer=tokenizer)  # in its chat template, if it has one
    model = load_model(model_args, "causal-lm", tokenizer, trust_remote_code=training_args.trust_remote_code)
    reward_model, reward_tokenizer = load_reward_model(rl_args.reward_model_name_or_path, training_args.trust_remote_code)
    warn_if_prompt_formats_differ(tokenizer, reward_tokenizer, model_args.model_name_or_path,
                                  rl_args.reward_model_name_or_path)
    context = min(model.config.n_positions, reward_model.config.n_positions)
    room = context - training_args.max_completion_length
    if room < 1:
        raise RecipeError(
            f"--max_completion_length {training_args.max_completion_length} leaves no room for a prompt in a context "
            f"of {context} tokens; lower it."
        )
    check_vocab_agreement(model, tokenizer)
    data = fit_prompts(data, tokenizer, model, room, data_args.too_long)
    funcs = [reward_model, *(REWARD_FUNCTIONS[name] for name in rl_args.reward_funcs or [])]
    return RLInputs(tokenizer, model, reward_model, reward_tokenizer, funcs, data, peft_config_for(model, model_args), trainer_class)


# The report's sampled answers: as GRPOTrainer and RLOOTrainer sample by default (temperature 1, no top-k or
# top-p cut), a few per prompt, each prompt from its own fixed seed, so recipes/evaluate.py draws the same ones.
REPORT_SAMPLES = 4
REPORT_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


class RLReport(NamedTuple):
    figures: dict  # the held-out figures (see `rl_report`)
    answers: list[str]  # the greedy answer to each prompt
    rewards: list[float]  # the reward model's score of each greedy answer
    sampled_rewards: list[float]  # per prompt, the mean score of its sampled answers


def sampled_answers(model, tokenizer, prompt: str, count: int, max_new_tokens: int, seed: int) -> list[str]:
    """`count` answers to `prompt` sampled as the RL trainers sample (`REPORT_SAMPLING`), from `seed`, without
    touching the global random state the training draws from."""
    with torch.random.fork_rng(devices=[]), scoring(model) as device:
        torch.manual_seed(seed)
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                num_return_sequences=count, pad_token_id=pad_id(tokenizer), **REPORT_SAMPLING)
    return tokenizer.batch_decode(output[:, ids.shape[1]:], skip_special_tokens=True)


def rl_report(model, tokenizer, reward_model, reward_tokenizer, prompts, references, max_new_tokens: int) -> RLReport:
    """The held-out figures of the policy `model` (a PEFT model, its adapter the RL one), and its answers:

    - reward: the mean reward-model score of its greedy answers (at most `max_new_tokens`);
    - sampled_reward: the mean score of `REPORT_SAMPLES` answers per prompt sampled as the trainer samples
      (what RL raises: the expected reward of the policy's answers; greedy answers of a small model are
      often one repeated line, which a small change of policy does not move);
    - kl: the KL to the reference (the adapter switched off) per answer token, estimated on the greedy answers:
      sum(log p_policy - log p_reference) / tokens; exactly 0 while the adapter is still zero;
    - response_length: the mean greedy answer length in tokens;
    - response_loss: the loss of the held-out `references` (the data's own answers), which does not use the
      reward model: where it rises, the policy is leaving good answers behind to please the reward model.

    Every process may call it (no collectives)."""
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens)
    rewards = reward_scores(reward_model, reward_tokenizer, prompts, answers)
    sampled = []
    for index, prompt in enumerate(prompts):
        drawn = sampled_answers(model, tokenizer, prompt, REPORT_SAMPLES, max_new_tokens, seed=index)
        sampled.append(sum(reward_scores(reward_model, reward_tokenizer, [prompt] * len(drawn), drawn)) / len(drawn))
    # add_eos=False: the answer's own tokens; a cut-off answer has no end-of-text to score.
    policy_logps, lengths = completion_logprobs(model, tokenizer, prompts, answers, add_eos=False)
    with adapter_disabled(model) as disabled:
        if not disabled:
            raise RecipeError("The RL report measures the KL against the policy's adapter switched off; this model has no adapter.")
        reference_logps, _ = completion_logprobs(model, tokenizer, prompts, answers, add_eos=False)
    figures = {
        "reward": sum(rewards) / len(rewards),
        "sampled_reward": sum(sampled) / len(sampled),
        "kl": (sum(policy_logps) - sum(reference_logps)) / max(sum(lengths), 1),
        "response_length": sum(lengths) / len(lengths),
        "response_loss": response_loss(model, tokenizer, prompts, references)["response_loss"],
    }
    return RLReport(figures, answers, rewards, sampled)


def write_side_by_side(path, prompts, references, before: RLReport, after: RLReport, count: int) -> None:
    """answers.jsonl, for the first `count` held-out prompts: the greedy answer and its reward before RL (the
    SFT model) and after, the mean reward of the sampled answers before and after, and the data's reference
    answer."""
    with open(path, "w") as handle:
        for i, (prompt, reference) in enumerate(zip(prompts[:count], references[:count])):
            row = {"prompt": prompt, "before": before.answers[i], "after": after.answers[i],
                   "reward_before": before.rewards[i], "reward_after": after.rewards[i],
                   "sampled_reward_before": before.sampled_rewards[i], "sampled_reward_after": after.sampled_rewards[i],
                   "reference": reference}
            handle.write(json.dumps(row) + "\n")


def report_metrics(before: dict, after: dict, rewards_before: list[float], rewards_after: list[float]) -> dict:
    """The report as a run's metrics: eval_<figure> after training, eval_initial_<figure> before, and
    eval_win_rate, the share of held-out prompts whose answer the reward model scores higher after than
    before (a tie counts half)."""
    metrics = {f"eval_{name}": value for name, value in after.items()}
    metrics.update({f"eval_initial_{name}": value for name, value in before.items()})
    metrics["eval_win_rate"] = load_metric("win_rate").compute(rewards=rewards_after, reference_rewards=rewards_before)["win_rate"]
    return metrics
