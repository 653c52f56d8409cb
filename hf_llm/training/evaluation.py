"""Held-out evaluation: models score examples here, and hf_llm's `evaluate` metric modules turn the scores
into figures (`hf_llm/metrics/`, loaded from the package, never from the Hub).

Every function runs batched under `torch.no_grad` on whatever device the model is on, with the model in
eval mode (its previous mode restored afterwards), on a plain model or a PEFT one. Means are exact:
token-weighted losses are sum(NLL) / sum(tokens), accuracies count pairs. They use no collectives, so
under multi-process training every process may call them (a sharded model needs all of them to run
its forward) and the main one keeps the result.

`held_out_figures` is what the training recipes report at the end and what `recipes/evaluate.py`
reports for a saved model: the same code, so the same numbers.
"""

import copy
import dataclasses
import functools
import importlib
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import DatasetDict

from .adapters import adapter_disabled
from .chat import prompt_completion_view
from .errors import RecipeError
from .generation import greedy_continuation
from .loading import (
    adapter_base, attach_adapter, check_vocab_agreement, is_adapter_folder, load_model, resolve_tokenizer, reward_model_in_folder,
)
from .outputs import card_eval_results
from .recipe_data import (
    PAIR_SEQUENCES, blocks_dataset, check_block_size, enforce_length_limit, fit_prompts, measured_as_trained,
    has_chat_template, load_preference_data, load_rl_prompts, load_sft_data, load_text_corpus, sliding_blocks, token_stream,
)

logger = logging.getLogger("hf_llm")

# The batch size of the scoring forwards: small, so a GPT-2-sized vocabulary's logits fit on a laptop.
BATCH_SIZE = 8
# How many held-out answers are generated for ROUGE-L by default (generation is the slow part).
ROUGE_ANSWERS = 8


def _evaluate_library():
    """The `evaluate` library. A recipe run as `python recipes/NAME.py` has recipes/ first on sys.path,
    where `import evaluate` would find recipes/evaluate.py instead: the library is imported past any
    folder that holds such a script."""
    module = sys.modules.get("evaluate")
    if module is not None and hasattr(module, "load"):
        return module
    saved = list(sys.path)
    sys.path[:] = [entry for entry in sys.path if not Path(entry or os.getcwd(), "evaluate.py").is_file()]
    sys.modules.pop("evaluate", None)
    try:
        return importlib.import_module("evaluate")
    finally:
        sys.path[:] = saved


@functools.cache
def load_metric(name: str):
    """hf_llm's `evaluate` metric module `name` (perplexity, response_loss, pairwise_accuracy, win_rate,
    rouge_l), loaded from its folder inside the package: `evaluate.load` on a local path, offline.
    Kept in memory (no cache files, so processes of one launch never share one)."""
    from ..metrics import metric_path

    return _evaluate_library().load(str(metric_path(name)), keep_in_memory=True)


@contextmanager
def scoring(model):
    """Eval mode and no gradients for the block; the model's previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def pad_id(tokenizer) -> int:
    """The id padding is written with: the tokenizer's pad token, else its end-of-sequence, else 0."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return 0 if pad is None else pad


def _padded(sequences: list[list[int]], value: int, device) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences], device=device)


def _summed_nll(model, tokenizer, sequences: list[list[int]], targets: list[list[int]], batch_size: int):
    """Per sequence: the summed negative log-likelihood of the tokens marked 1 in `targets` (each predicted
    from the tokens before it), and how many there were. Sequences are right-padded, so padding comes
    after every real token and a causal model's real positions never see it."""
    nll, counts = [], []
    with scoring(model) as device:
        for start in range(0, len(sequences), batch_size):
            ids = sequences[start : start + batch_size]
            input_ids = _padded(ids, pad_id(tokenizer), device)
            attention = _padded([[1] * len(s) for s in ids], 0, device)
            mask = _padded(targets[start : start + batch_size], 0, device)[:, 1:].double()
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
            losses = F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
            nll += (losses.double() * mask).sum(1).tolist()
            counts += mask.sum(1).long().tolist()
    return nll, counts


def _context(model, max_length: int | None) -> int:
    limit = model.config.n_positions
    return limit if max_length is None else min(max_length, limit)


def _with_eos(text: str, tokenizer, add_eos: bool) -> str:
    eos = tokenizer.eos_token
    return text + eos if add_eos and eos and not text.endswith(eos) else text


def _prompt_completion_ids(tokenizer, prompts, completions, add_eos: bool, limit: int):
    """prompt + completion token ids and their completion masks, as TRL's SFT and DPO trainers build them:
    prompt + completion tokenized together, the completion starting where it leaves the prompt's own
    tokens, end-of-text appended to the completion (if `add_eos`), cut to `limit` tokens from the start."""
    from trl.data_utils import common_prefix_length

    if len(prompts) != len(completions):
        raise RecipeError(f"{len(prompts)} prompts but {len(completions)} completions: give one completion per prompt.")
    sequences, masks = [], []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + _with_eos(completion, tokenizer, add_eos))["input_ids"]
        start = common_prefix_length(prompt_ids, ids)
        sequences.append(ids[:limit])
        masks.append(([0] * start + [1] * (len(ids) - start))[:limit])
    return sequences, masks


def text_perplexity(model, tokenizer, texts_or_blocks, *, block_size: int | None = None, batch_size: int = BATCH_SIZE) -> dict:
    """Perplexity of a causal LM on text: `{"loss", "perplexity", "tokens"}` (the `perplexity` metric).

    `texts_or_blocks` is either texts, joined with end-of-text and cut into blocks of `block_size` tokens
    (unset: the model's context) as pretraining's held-out blocks are, or ready blocks of token ids. In
    each block every token after the first is predicted from those before it.
    """
    items = list(texts_or_blocks)
    if not items:
        raise RecipeError("No text to compute perplexity on: give at least one text or block.")
    block_size = block_size or model.config.n_positions
    if isinstance(items[0], str):
        items = sliding_blocks(token_stream(items, tokenizer, tokenizer.eos_token_id), block_size, block_size)
        if not items:
            raise RecipeError(f"The texts give fewer tokens than one block of {block_size}: use more text or a smaller --block_size.")
    blocks = [list(block) for block in items]
    if max(len(b) for b in blocks) > model.config.n_positions:
        raise RecipeError(f"A block is longer than the model's context ({model.config.n_positions} tokens): use a smaller --block_size.")
    nll, tokens = _summed_nll(model, tokenizer, blocks, [[1] * len(b) for b in blocks], batch_size)
    return load_metric("perplexity").compute(nll=nll, tokens=tokens)


def completion_logprobs(model, tokenizer, prompts, completions, *, add_eos: bool = True, max_length: int | None = None,
                        batch_size: int = BATCH_SIZE) -> tuple[list[float], list[int]]:
    """Per (prompt, completion): the summed log-probability a causal LM gives the completion's tokens after
    its prompt, and their number. Tokenized as TRL's SFT and DPO trainers do (see `response_loss`)."""
    sequences, masks = _prompt_completion_ids(tokenizer, prompts, completions, add_eos, _context(model, max_length))
    nll, tokens = _summed_nll(model, tokenizer, sequences, masks, batch_size)
    return [-value for value in nll], tokens


def response_loss(model, tokenizer, prompts, completions, *, add_eos: bool = True, max_length: int | None = None,
                  batch_size: int = BATCH_SIZE) -> dict:
    """Mean loss of a causal LM over the completion tokens of prompt + completion examples, token-weighted:
    `{"response_loss", "tokens"}` (the `perplexity` metric's loss over those tokens), the loss supervised
    fine-tuning reports.

    Each completion gets the tokenizer's end-of-text (unless `add_eos` is false or it ends with it), as the
    SFT trainer appends it; sequences longer than `max_length` (unset: the model's context) keep their start.
    """
    logprobs, tokens = completion_logprobs(model, tokenizer, prompts, completions, add_eos=add_eos,
                                           max_length=max_length, batch_size=batch_size)
    if sum(tokens) == 0:
        raise RecipeError("No completion token to score: the response loss needs at least one.")
    value = load_metric("perplexity").compute(nll=[-value for value in logprobs], tokens=tokens)
    return {"response_loss": value["loss"], "tokens": value["tokens"]}


def reward_scores(reward_model, tokenizer, prompts, answers, *, add_eos: bool = True, max_length: int | None = None,
                  batch_size: int = BATCH_SIZE) -> list[float]:
    """A reward model's score of each answer to its prompt: prompt + answer (+ end-of-text, as TRL's
    RewardTrainer appends it) through a one-label sequence classifier, read where the model reads it
    (its last non-padding token). `tokenizer` is the reward model's own."""
    if len(prompts) != len(answers):
        raise RecipeError(f"{len(prompts)} prompts but {len(answers)} answers: give one answer per prompt.")
    if getattr(reward_model.config, "num_labels", None) != 1:
        raise RecipeError("The reward model must be a sequence classifier with one label (num_labels=1): load it as a reward model.")
    limit = _context(reward_model, max_length)
    texts = [prompt + _with_eos(answer, tokenizer, add_eos) for prompt, answer in zip(prompts, answers)]
    scores = []
    with scoring(reward_model) as device:
        for start in range(0, len(texts), batch_size):
            ids = [row[:limit] for row in tokenizer(texts[start : start + batch_size])["input_ids"]]
            input_ids = _padded(ids, pad_id(tokenizer), device)
            attention = _padded([[1] * len(s) for s in ids], 0, device)
            scores += reward_model(input_ids=input_ids, attention_mask=attention).logits[:, 0].double().tolist()
    return scores


def pairwise_accuracy(reward_model, tokenizer, prompts, chosen, rejected, **kwargs) -> dict:
    """A reward model on preference pairs: `{"accuracy", "margin", "pairs"}` (the `pairwise_accuracy`
    metric: the share of pairs whose chosen answer scores strictly higher, ties wrong; the mean margin).
    Keywords go to `reward_scores`."""
    return load_metric("pairwise_accuracy").compute(
        chosen_scores=reward_scores(reward_model, tokenizer, prompts, chosen, **kwargs),
        rejected_scores=reward_scores(reward_model, tokenizer, prompts, rejected, **kwargs),
    )


def implicit_rewards(policy, tokenizer, prompts, answers, *, beta: float, reference=None, **kwargs) -> list[float]:
    """DPO's implicit reward of each answer: beta * (log p_policy(answer | prompt) - log p_reference(answer | prompt)).
    The reference is `reference`, or else the policy with its adapter switched off (as the DPO recipe trains).
    Keywords go to `completion_logprobs`."""
    policy_logps, _ = completion_logprobs(policy, tokenizer, prompts, answers, **kwargs)
    if reference is not None:
        reference_logps, _ = completion_logprobs(reference, tokenizer, prompts, answers, **kwargs)
    else:
        with adapter_disabled(policy) as disabled:
            if not disabled:
                raise RecipeError("Implicit rewards need a reference model: the policy has no adapter to switch off, so pass one.")
            reference_logps, _ = completion_logprobs(policy, tokenizer, prompts, answers, **kwargs)
    return [beta * (p - r) for p, r in zip(policy_logps, reference_logps)]


def preference_accuracy(policy, tokenizer, prompts, chosen, rejected, *, beta: float, reference=None, **kwargs) -> dict:
    """A DPO policy on preference pairs, judged by its implicit reward (`implicit_rewards`):
    `{"accuracy", "margin", "pairs"}` (the `pairwise_accuracy` metric)."""
    return load_metric("pairwise_accuracy").compute(
        chosen_scores=implicit_rewards(policy, tokenizer, prompts, chosen, beta=beta, reference=reference, **kwargs),
        rejected_scores=implicit_rewards(policy, tokenizer, prompts, rejected, beta=beta, reference=reference, **kwargs),
    )


def generate_answers(model, tokenizer, prompts, max_new_tokens: int = 64) -> list[str]:
    """The model's greedy answer to each prompt (`greedy_continuation`: the prompt's end kept within the
    context, at most `max_new_tokens`, special tokens dropped). Deterministic."""
    with scoring(model):
        return [greedy_continuation(model, tokenizer, prompt, max_new_tokens) for prompt in prompts]


def win_rate(reward_model, reward_tokenizer, prompts, answers, reference_answers, **kwargs) -> dict:
    """`answers` against `reference_answers` (one of each per prompt), judged by a reward model with its own
    tokenizer: `{"win_rate", "mean_reward", "reference_mean_reward", "prompts"}` (the `win_rate` metric;
    a tie counts half). Keywords go to `reward_scores`."""
    return load_metric("win_rate").compute(
        rewards=reward_scores(reward_model, reward_tokenizer, prompts, answers, **kwargs),
        reference_rewards=reward_scores(reward_model, reward_tokenizer, prompts, reference_answers, **kwargs),
    )


def rouge_l(predictions, references) -> dict:
    """ROUGE-L F1 of predictions against references, on lowercased whitespace tokens: `{"rouge_l"}`."""
    return load_metric("rouge_l").compute(predictions=list(predictions), references=list(references))


# --- the figures the recipes report at the end, and recipes/evaluate.py for a saved model --------------

# Which held-out data each figure reads: pretraining's text blocks, instructions, or preference pairs.
FIGURE_DATA = {
    "perplexity": "text",
    "response_loss": "sft",
    "rouge_l": "sft",
    "pairwise_accuracy": "preference",
    "preference_accuracy": "preference",
    "win_rate": "sft",
    "rl_report": "prompts",
}


def _columns(data, figure: str, *names):
    missing = [name for name in names if name not in data.column_names]
    if missing:
        raise RecipeError(f"The figure {figure} needs held-out data with the columns {list(names)}; this data has {data.column_names}.")
    return [data[name] for name in names]


def held_out_figures(figures, model, tokenizer, data, *, max_length: int | None = None, beta: float | None = None,
                     max_new_tokens: int = 64, answers: int = ROUGE_ANSWERS, reward_model=None, reward_tokenizer=None,
                     reference_model=None, reference_tokenizer=None, batch_size: int = BATCH_SIZE) -> dict:
    """Held-out figures of `model`, named as a run's metrics (`eval_*`), for each name in `figures`:

    - perplexity (`data`: blocks of token ids, `input_ids`): eval_text_loss and eval_perplexity;
    - response_loss (`prompt`, `completion`): eval_response_loss, and with an adapter also
      eval_base_response_loss (the adapter switched off: the model before fine-tuning);
    - rouge_l (`prompt`, `completion`): eval_rouge_l of greedy answers (`max_new_tokens`) to the first
      `answers` prompts against their completions;
    - pairwise_accuracy (`prompt`, `chosen`, `rejected`; `model` a reward model): eval_pairwise_accuracy
      and eval_pairwise_margin;
    - preference_accuracy (the same columns; `model` a DPO policy): eval_preference_accuracy and
      eval_preference_margin of the implicit reward with `beta`, the reference being `reference_model` or
      the policy's adapter switched off;
    - win_rate (`prompt`): greedy answers of `model` and of `reference_model` (with `reference_tokenizer`,
      or the adapter switched off) to the first `answers` prompts, judged by `reward_model` (with
      `reward_tokenizer`): eval_win_rate, eval_mean_reward and eval_reference_mean_reward. The reference is
      asked the `reference_prompt` column and the judge scores each answer after the `judge_prompt` column
      where `data` has them (the same questions in each model's own template, `held_out_data`), else `prompt`;
    - rl_report (`prompt`, `completion`; `model` an RL policy, its adapter switched off as reference): rl.py's
      held-out figures (`rl_report`): eval_reward, eval_sampled_reward, eval_kl, eval_response_length and
      eval_response_loss.

    `data` is a `datasets.Dataset`; sequences longer than `max_length` (unset: the context) keep their start.
    """
    unknown = [name for name in figures if name not in FIGURE_DATA]
    if unknown:
        raise RecipeError(f"Unknown figure(s) {unknown}: the figures are {', '.join(FIGURE_DATA)}.")
    lengths = dict(max_length=max_length, batch_size=batch_size)
    results = {}
    for figure in figures:
        if figure == "perplexity":
            (blocks,) = _columns(data, figure, "input_ids")
            value = text_perplexity(model, tokenizer, blocks, batch_size=batch_size)
            results.update(eval_text_loss=value["loss"], eval_perplexity=value["perplexity"])
        elif figure == "response_loss":
            prompts, completions = _columns(data, figure, "prompt", "completion")
            results["eval_response_loss"] = response_loss(model, tokenizer, prompts, completions, **lengths)["response_loss"]
            with adapter_disabled(model) as disabled:
                if disabled:
                    base = response_loss(model, tokenizer, prompts, completions, **lengths)
                    results["eval_base_response_loss"] = base["response_loss"]
        elif figure == "rouge_l":
            prompts, completions = _columns(data, figure, "prompt", "completion")
            predicted = generate_answers(model, tokenizer, prompts[:answers], max_new_tokens)
            results["eval_rouge_l"] = rouge_l(predicted, completions[:answers])["rouge_l"]
        elif figure == "pairwise_accuracy":
            value = pairwise_accuracy(model, tokenizer, *_columns(data, figure, "prompt", "chosen", "rejected"), **lengths)
            results.update(eval_pairwise_accuracy=value["accuracy"], eval_pairwise_margin=value["margin"])
        elif figure == "preference_accuracy":
            if beta is None:
                raise RecipeError("The preference_accuracy figure needs the DPO beta (--beta) its implicit reward is scaled by.")
            value = preference_accuracy(model, tokenizer, *_columns(data, figure, "prompt", "chosen", "rejected"),
                                        beta=beta, reference=reference_model, **lengths)
            results.update(eval_preference_accuracy=value["accuracy"], eval_preference_margin=value["margin"])
        elif figure == "rl_report":
            from .rl import rl_report  # rl.py builds on this module

            if reward_model is None:
                raise RecipeError("The rl_report figures score answers with a reward model: pass --reward_model.")
            prompts, references = _columns(data, figure, "prompt", "completion")
            report = rl_report(model, tokenizer, reward_model, reward_tokenizer or tokenizer, prompts, references,
                               max_new_tokens)
            results.update({f"eval_{name}": value for name, value in report.figures.items()})
        else:  # win_rate
            if reward_model is None:
                raise RecipeError("The win_rate figure needs a reward model to judge the answers: pass --reward_model.")
            (prompts,) = _columns(data, figure, "prompt")
            asked = {name: (data[name] if name in data.column_names else prompts)[:answers]
                     for name in ("reference_prompt", "judge_prompt")}
            prompts = prompts[:answers]
            policy_answers = generate_answers(model, tokenizer, prompts, max_new_tokens)
            if reference_model is not None:
                reference_answers = generate_answers(reference_model, reference_tokenizer or tokenizer, asked["reference_prompt"],
                                                     max_new_tokens)
            else:
                with adapter_disabled(model) as disabled:
                    if not disabled:
                        raise RecipeError("The win_rate figure needs a reference: pass --reference_model (the model has no adapter to switch off).")
                    reference_answers = generate_answers(model, tokenizer, prompts, max_new_tokens)
            value = win_rate(reward_model, reward_tokenizer or tokenizer, asked["judge_prompt"], policy_answers,
                             reference_answers, batch_size=batch_size)
            results.update(eval_win_rate=value["win_rate"], eval_mean_reward=value["mean_reward"],
                           eval_reference_mean_reward=value["reference_mean_reward"])
    return results


# --- a saved model, as recipes/evaluate.py evaluates it -----------------------------------------------

# The figures each training recipe reports at the end (the `recipe` of a run's hf_llm_run.json).
RECIPE_FIGURES = {
    "pretrain": ["perplexity"],
    "sft_lora": ["response_loss", "rouge_l"],
    "reward_modeling": ["pairwise_accuracy"],
    "dpo": ["preference_accuracy"],
    "rl": ["rl_report"],
}


def default_figures(name_or_path: str, with_judge: bool = False) -> list[str]:
    """The figures that fit a model: those of the recipe that trained it (its run record), else a reward
    model's pair accuracy, an adapter's response loss or a language model's perplexity; plus win_rate
    when a judge (`with_judge`) is given to a language model."""
    from .output_dir import read_run_file

    folder = Path(name_or_path)
    record = read_run_file(folder) if folder.is_dir() else None
    figures = list(RECIPE_FIGURES.get((record or {}).get("recipe"), []))
    if not figures:
        held = reward_model_in_folder(name_or_path)
        if held is not None and held[0]:
            figures = ["pairwise_accuracy"]
        else:
            figures = ["response_loss"] if is_adapter_folder(name_or_path) else ["perplexity"]
    if with_judge and not {"pairwise_accuracy", "rl_report"} & set(figures):  # rl_report already uses the judge
        figures.append("win_rate")
    return figures


def process_state():
    """This process in a launch (accelerate's `PartialState`): its device, and whether it is the main one.
    Without a GPU the processes of a multi-process launch join over gloo on the CPU, as the recipes' do."""
    from accelerate import PartialState

    from .arguments import cpu_only

    return PartialState(cpu=cpu_only())


def load_for_evaluation(model_args, task: str = "causal-lm", trust_remote_code: bool = False, device=None):
    """(model, tokenizer) for `model_args.model_name_or_path`, in eval mode on `device` (unset: this
    process's accelerator, else the CPU). `task` is "causal-lm" or "sequence-classification" (a reward model).

    An adapter folder is loaded onto its base (`base/` beside it, else the base its config names) and kept
    as an adapter, not merged: so it can be switched off (the reference of DPO and of win rates), and its
    figures are computed exactly as the training run computed them. The tokenizer is the folder's own
    (else its base's), unless --tokenizer_name_or_path names one.
    """
    from .arguments import ModelArguments

    path = model_args.model_name_or_path
    adapter = is_adapter_folder(path)
    base = adapter_base(path) if adapter else path
    tokenizer_source = model_args.tokenizer_name_or_path or (
        path if not adapter or Path(path, "tokenizer_config.json").is_file() else base
    )
    settings = {name: getattr(model_args, name) for name in ("dtype", "attn_implementation", "allow_pickle_checkpoints")}
    tokenizer = resolve_tokenizer(ModelArguments(model_name_or_path=path, tokenizer_name_or_path=tokenizer_source))
    model = load_model(ModelArguments(model_name_or_path=base, **settings), task, tokenizer, num_labels=1,
                       trust_remote_code=trust_remote_code)
    if adapter:
        model = attach_adapter(model, path, tokenizer)
    check_vocab_agreement(model, tokenizer)
    return model.to(device or process_state().device).eval(), tokenizer


def held_out_data(kind: str, data_args, tokenizer, model, *, seed: int = 42, max_length: int | None = None,
                  block_size: int | None = None, answer_tokens: int = 0, prompts_for: dict | None = None):
    """The held-out split a training recipe evaluates on, rebuilt from the same data flags and seed:
    (data, length limit). `kind` is "text" (pretraining's blocks of `block_size` tokens, unset: the
    context), "sft" (prompt/completion), "preference" (prompt/chosen/rejected) or "prompts" (rl.py's: the
    instructions whose prompt leaves room for `answer_tokens` new tokens). Instructions are asked as
    `instruction_template` asks them: in `tokenizer`'s chat template when it has one, as dpo.py and rl.py
    render them (the saved model's tokenizer is the one they trained with), else with --prompt_template
    (unset: Alpaca's). `prompts_for` (column name -> another model's tokenizer) adds, for "sft", a column of
    the same prompts as that tokenizer's model is asked them (win_rate's reference and judge). Rows longer
    than the limit meet the recipe's policy, --too_long (unset: truncate instructions, drop pairs and RL
    prompts, as the recipes do).
    """
    limit = _context(model, max_length)
    if kind == "prompts":
        data = DatasetDict(test=load_rl_prompts(data_args, seed=seed, tokenizer=tokenizer)["test"])
        data = fit_prompts(data, tokenizer, model, model.config.n_positions - answer_tokens, data_args.too_long or "drop")
        return data["test"], limit
    if kind == "text":
        texts = load_text_corpus(data_args, seed=seed)["test"]["text"]
        size = check_block_size(block_size or model.config.n_positions, model)
        return blocks_dataset(texts, tokenizer, size, size, "evaluation"), limit
    if kind == "sft":
        data = load_sft_data(data_args, seed=seed, tokenizer=tokenizer)
        for column, other in (prompts_for or {}).items():
            data["test"] = data["test"].add_column(column, _asked_by(other, data_args, seed, data["test"]))
        sequences, truncatable_after, too_long = [("prompt", "completion")], "prompt", data_args.too_long or "truncate"
    else:
        data = load_preference_data(data_args, seed=seed, tokenizer=tokenizer)
        sequences, truncatable_after, too_long = PAIR_SEQUENCES, None, data_args.too_long or "drop"
    test = DatasetDict(test=data["test"])
    data, limit = enforce_length_limit(test, tokenizer, model, max_length, too_long,
                                       **measured_as_trained(test, sequences, truncatable_after))
    # Conversations (SFT on messages): their last answers, as sft_lora.py reads them.
    return prompt_completion_view(data["test"], tokenizer), limit


def _asked_by(tokenizer, data_args, seed: int, test) -> list[str]:
    """The held-out SFT prompts of `test` as the model of `tokenizer` is asked them: rebuilt in its template
    (same seed, same rows); conversations rendered with its chat template."""
    if "messages" in test.column_names:
        if not has_chat_template(tokenizer):
            raise RecipeError("win_rate on conversations: the reference model or the judge has no chat template to ask "
                              "them in. Give ones whose tokenizers have one, or instruction data (--dataset_name).")
        return prompt_completion_view(test, tokenizer)["prompt"]
    return load_sft_data(data_args, seed=seed, tokenizer=tokenizer)["test"]["prompt"]


def figures_table(results: dict) -> str:
    """The figures as a table, one per line."""
    width = max(len(name) for name in results)
    lines = [f"{'figure'.ljust(width)}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{name.ljust(width)}  {value:.6g}" if isinstance(value, float) else f"{name.ljust(width)}  {value}"
              for name, value in results.items()]
    return "\n".join(lines)


def write_evaluation(output_dir, results: dict, *, model_name_or_path: str, dataset: str, task: str,
                     model_card: bool = False) -> Path:
    """Write `eval_results.json` (the figures) to `output_dir`, complete or not at all, and with
    `model_card` also `README.md`: the evaluated model's card (a new one if it has none) whose
    `model-index` carries the figures, replacing results of the same names. `task` is "causal_lm" or "reward"."""
    from huggingface_hub import ModelCard, ModelCardData

    from ..folders import write_folder_atomically

    def write(folder: Path):
        (folder / "eval_results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        if not model_card:
            return
        new = card_eval_results(results, task, dataset)
        existing = Path(model_name_or_path, "README.md")
        if existing.is_file():
            card = ModelCard.load(existing)
            kept = [r for r in card.data.eval_results or [] if r.metric_type not in {n.metric_type for n in new}]
            card.data.eval_results = kept + new
            card.data.model_name = card.data.model_name or Path(model_name_or_path).name
        else:
            data = ModelCardData(model_name=Path(model_name_or_path).name, eval_results=new, tags=["hf_llm", "gpt2"])
            rows = "\n".join(f"| {name} | {value} |" for name, value in sorted(results.items()))
            card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n# Evaluation of {Path(model_name_or_path).name}\n\n"
                             f"Held-out data: {dataset}\n\n| figure | value |\n|---|---|\n{rows}\n")
        card.save(folder / "README.md")

    return write_folder_atomically(output_dir, write, last="eval_results.json")


# How a card names the embedded data sets each kind of held-out data comes from when no --dataset_name is given.
EMBEDDED_DATA = {
    "text": "hf_llm stdlib-functions (embedded)",
    "sft": "hf_llm stdlib-instructions (embedded)",
    "preference": "hf_llm stdlib-preferences (embedded)",
    "prompts": "hf_llm stdlib-instructions (embedded), prompts",
}


def dataset_name(data_args, kind: str) -> str:
    """The data set a card names: --dataset_name, else the embedded one that `kind` of data comes from."""
    return data_args.dataset_name or EMBEDDED_DATA[kind]


def recipe_data_kind(recipe: str) -> str:
    """The kind of held-out data a training recipe reports on ("text", "sft", "preference" or "prompts")."""
    return FIGURE_DATA[RECIPE_FIGURES[recipe][0]]


def run_settings(data_args, seed: int, **settings) -> dict:
    """What a run records for recipes/evaluate.py to rebuild its held-out figures: the data flags, the seed (it
    chose the split), and the recipe's `settings` that its figures used, named as evaluate.py's flags
    (max_length, max_new_tokens, beta, block_size)."""
    data = {name: value for name, value in dataclasses.asdict(data_args).items() if name != "max_train_samples"}  # not held out
    return {"data": data, "seed": seed, **settings}


def take_run_settings(name_or_path: str, eval_args, data_args):
    """For a training run's folder: each evaluation setting left at recipes/evaluate.py's default takes the
    value the run recorded (`run_settings`, in its hf_llm_run.json), and so does each data flag, for the run's
    own kind of held-out data only, so that the run's figures are rebuilt from its own held-out rows; a flag
    given on the command line wins. Changes `eval_args` in place. Returns (the data arguments for that kind,
    the kind or None, what was taken)."""
    from .arguments import DataArguments, EvaluateArguments
    from .output_dir import read_run_file

    record = (read_run_file(name_or_path) or {}) if Path(name_or_path).is_dir() else {}
    recorded = record.get("evaluation")
    if not recorded or record.get("recipe") not in RECIPE_FIGURES:
        return data_args, None, {}
    run_data = copy.copy(data_args)
    # recipes/evaluate.py's defaults: DataArguments' own, except --too_long (unset: each recipe's policy).
    data_defaults = {**dataclasses.asdict(DataArguments()), "too_long": None}
    eval_defaults = dataclasses.asdict(EvaluateArguments())
    taken = {}
    for args, defaults, values in ((run_data, data_defaults, recorded.get("data", {})), (eval_args, eval_defaults, recorded)):
        for name, value in values.items():
            if name in defaults and getattr(args, name) == defaults[name] and value != defaults[name]:
                setattr(args, name, value)
                taken[name] = value
    return run_data, recipe_data_kind(record["recipe"]), taken


def evaluate_saved_model(model_args, eval_args, data_args, trust_remote_code: bool = False) -> dict:
    """What `recipes/evaluate.py` does: load the model (and the judge and reference, if given), rebuild the
    held-out split of each figure's data, compute the figures with `held_out_figures`, and, on the main
    process, print them as a table and write them (`write_evaluation`). Returns the figures.

    The reference model keeps its own tokenizer; for win_rate it and the judge get the held-out prompts in
    their own templates (`held_out_data`'s `prompts_for`).

    Under a multi-process launch every process computes them (no collectives: each holds the whole model),
    and only the main one prints and writes.
    """
    from .arguments import ModelArguments

    path = model_args.model_name_or_path
    # The run's own figures (no --figures): rebuilt from the data and settings its record keeps.
    run_data, run_kind, taken = take_run_settings(path, eval_args, data_args) if not eval_args.figures else (data_args, None, {})
    if taken:
        logger.info("Held-out data and settings as the run in %s recorded them: %s", path,
                    " ".join(f"--{name} {value}" for name, value in taken.items()))
    data_for = {run_kind: run_data}
    figures = list(eval_args.figures or default_figures(path, with_judge=eval_args.reward_model is not None))
    unknown = [name for name in figures if name not in FIGURE_DATA]
    if unknown:
        raise RecipeError(f"Unknown figure(s) {unknown} in --figures: the figures are {', '.join(FIGURE_DATA)}.")
    reward = "pairwise_accuracy" in figures
    if reward and len(set(figures)) > 1:
        raise RecipeError("pairwise_accuracy scores a reward model, the other figures a language model: evaluate them in separate runs.")
    model, tokenizer = load_for_evaluation(model_args, "sequence-classification" if reward else "causal-lm", trust_remote_code)
    others = {}
    if eval_args.reward_model:
        from .rl import load_reward_model  # rl.py builds on this module

        # Loaded as rl.py loads its reward model (merged, its trained score head checked), so both score alike.
        others["reward_model"], others["reward_tokenizer"] = load_reward_model(eval_args.reward_model, trust_remote_code,
                                                                               flag="--reward_model")
    if eval_args.reference_model:
        others["reference_model"], others["reference_tokenizer"] = load_for_evaluation(
            ModelArguments(model_name_or_path=eval_args.reference_model), "causal-lm", trust_remote_code)
        if "preference_accuracy" in figures:  # the implicit reward reads the evaluated model's tokens through both
            check_vocab_agreement(others["reference_model"], tokenizer)
    # win_rate asks each model in its own template (a chat template, or the instruction one) and the judge
    # scores each answer after the prompt in its own.
    prompts_for = {column: others[name] for column, name in (("reference_prompt", "reference_tokenizer"),
                                                             ("judge_prompt", "reward_tokenizer")) if name in others}

    results, kinds = {}, list(dict.fromkeys(FIGURE_DATA[name] for name in figures))
    for kind in kinds:
        data, limit = held_out_data(kind, data_for.get(kind, data_args), tokenizer, model, seed=eval_args.seed,
                                    max_length=eval_args.max_length, block_size=eval_args.block_size,
                                    answer_tokens=eval_args.max_new_tokens,
                                    prompts_for=prompts_for if "win_rate" in figures else None)
        results.update(held_out_figures(
            [name for name in figures if FIGURE_DATA[name] == kind], model, tokenizer, data, max_length=limit,
            beta=eval_args.beta, max_new_tokens=eval_args.max_new_tokens, answers=eval_args.answers,
            batch_size=eval_args.batch_size, **others,
        ))
    if process_state().is_main_process:
        print(figures_table(results), flush=True)
        write_evaluation(eval_args.output_dir, results, model_name_or_path=path,
                         dataset=dataset_name(data_for.get(kinds[0], data_args), kinds[0]),
                         task="reward" if reward else "causal_lm", model_card=eval_args.model_card)
    return results
