"""Clients that consume GPT-2 checkpoints work on ours as on stock: torch.export, transformers' ExecuTorch
export, and EleutherAI's lm-evaluation-harness (lm-eval), on the model object and on a folder we save."""

import math

import pytest
import torch
from helpers import max_diff, save_stock_lm
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from transformers import GenerationConfig, GPT2LMHeadModel

from hf_llm import GPTForCausalLM
from hf_llm.tokenization import load_gpt2_tokenizer

from transformers.integrations import executorch


def _torch_export(model, input_ids, attention_mask):
    """The model's forward as a torch.export program with dynamic batch size and length."""
    batch, length = torch.export.Dim("batch", max=8), torch.export.Dim("length", max=model.config.n_positions)
    shapes = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}, "use_cache": None}
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    return torch.export.export(model, args=(), kwargs=inputs, dynamic_shapes=shapes, strict=False).module()


def test_torch_export_with_dynamic_shapes_matches_stock(tmp_path):
    stock = save_stock_lm(tmp_path)
    ours = GPTForCausalLM.from_pretrained(tmp_path).eval()
    torch.manual_seed(1)
    ids = torch.randint(0, stock.config.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    program, stock_program = _torch_export(ours, ids, mask), _torch_export(stock, ids, mask)
    # The traced shapes and two others (the program is not specialised to the batch or length it saw).
    for input_ids, attention_mask in [(ids, mask), (ids[:1, 2:], mask[:1, 2:]), (ids.repeat(2, 2), mask.repeat(2, 2))]:
        with torch.no_grad():
            expected = stock(input_ids=input_ids, attention_mask=attention_mask).logits
        real = attention_mask.bool()  # padded positions' logits are not anything's output
        for exported in (program, stock_program):
            logits = exported(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            assert logits.shape == expected.shape
            assert max_diff(logits[real], expected[real]) < 1e-5


def _exported_logits(model, ids, max_cache_len=32):
    model.generation_config = GenerationConfig(
        use_cache=True, cache_implementation="static", max_length=max_cache_len,
        cache_config={"batch_size": 1, "max_cache_len": max_cache_len},
    )
    exportable = executorch.TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_cache_len)
    program = exportable.export(input_ids=ids[:, :1], cache_position=torch.tensor([0])).module()
    # Token by token through the exported program and its static cache.
    return torch.cat([program(input_ids=ids[:, i : i + 1], cache_position=torch.tensor([i])) for i in range(ids.shape[1])], 1)


def test_executorch_export_runs_and_matches_stock(tmp_path):
    stock = save_stock_lm(tmp_path)
    ours = GPTForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    mine, theirs = _exported_logits(ours, ids), _exported_logits(stock, ids)
    with torch.no_grad():
        eager = stock(ids).logits
    assert mine.shape == theirs.shape == eager.shape
    assert max_diff(mine, theirs) < 1e-5 and max_diff(mine, eager) < 1e-5


# --- lm-eval ----------------------------------------------------------------------------------------
# lm-eval's HFLM driven directly with the requests its tasks build (no task, so nothing to download).

LM_EVAL_TOLERANCE = 1e-4
ROLLING_TEXTS = ["In the beginning " * 30, "Short text."]  # the first is longer than n_positions: two windows
GENERATION_KWARGS = {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": False}
# Contexts of different lengths, so a batch of two is left-padded.
GENERATION_CONTEXTS = ["The cat", "Once upon a time there was a"]


def _lm_eval_requests(stock, tokenizer):
    """(context, continuation) pairs for loglikelihood, one of them the stock model's greedy next token."""
    context = "The cat sat on the"
    with torch.no_grad():
        next_token = stock(tokenizer(context, return_tensors="pt").input_ids).logits[0, -1].argmax().item()
    return [
        (context, " mat"),
        (context, tokenizer.decode([next_token])),  # is_greedy
        ("Hello", " world, how are you?"),
        ("", "An empty context is scored after the end-of-text token."),
        # One-token continuations of one context: lm-eval runs the model once and reuses its logits.
        ("Once upon a time", " there"),
        ("Once upon a time", " the"),
    ]


def _lm_eval_results(lm, pairs):
    """What lm-eval's three request types return: [(logprob, is_greedy)], [rolling logprob], [generated text]."""
    def instances(request_type, arguments):
        return [Instance(request_type=request_type, doc={}, arguments=args, idx=i) for i, args in enumerate(arguments)]

    return (
        lm.loglikelihood(instances("loglikelihood", pairs), disable_tqdm=True),
        lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,) for text in ROLLING_TEXTS]), disable_tqdm=True),
        lm.generate_until(instances("generate_until", [(c, dict(GENERATION_KWARGS)) for c in GENERATION_CONTEXTS]),
                          disable_tqdm=True),
    )


def _assert_same_lm_eval_results(mine, theirs):
    (scores, rolling, generated), (stock_scores, stock_rolling, stock_generated) = mine, theirs
    assert len(scores) == len(stock_scores) and len(rolling) == len(stock_rolling)
    assert [greedy for _, greedy in scores] == [greedy for _, greedy in stock_scores]
    assert max(abs(a - b) for (a, _), (b, _) in zip(scores, stock_scores)) < LM_EVAL_TOLERANCE
    assert max(abs(a - b) for a, b in zip(rolling, stock_rolling)) < LM_EVAL_TOLERANCE
    assert generated == stock_generated


@pytest.fixture(scope="module")
def lm_eval_case(tmp_path_factory, shared_data):
    """A random-weight GPT-2 with GPT-2's real vocabulary, ours and stock, and lm-eval's results on stock."""
    folder = tmp_path_factory.mktemp("lm-eval-stock")
    # initializer_range 0.2 rather than GPT-2's 0.02: with weights that small every prompt generates the same
    # token, so generate_until could not tell prompts (or a wrong left-padded position) apart.
    stock = save_stock_lm(folder, vocab_size=50257, bos_token_id=50256, eos_token_id=50256, initializer_range=0.2)
    ours = GPTForCausalLM.from_pretrained(folder).eval()
    tokenizer = load_gpt2_tokenizer(shared_data / "gpt2-tokenizer")
    assert len(tokenizer(ROLLING_TEXTS[0]).input_ids) > stock.config.n_positions
    pairs = _lm_eval_requests(stock, tokenizer)
    stock_results = _lm_eval_results(HFLM(pretrained=stock, tokenizer=tokenizer, batch_size=2), pairs)
    # The comparisons below mean something: both greedy flags occur, scores are finite, prompts differ.
    scores, rolling, generated = stock_results
    assert {greedy for _, greedy in scores} == {True, False}
    assert all(math.isfinite(s) and s < 0 for s, _ in scores) and all(math.isfinite(r) and r < 0 for r in rolling)
    assert len(set(generated)) == len(generated) and all(generated)
    return ours, tokenizer, pairs, stock_results


def test_lm_eval_scores_and_generates_on_our_model_as_on_stock(lm_eval_case):
    ours, tokenizer, pairs, stock_results = lm_eval_case
    # Without `backend`, lm-eval does not find our model type in transformers' built-in list and falls back
    # to the causal LM; the README's call names it.
    assert HFLM(pretrained=ours, tokenizer=tokenizer, batch_size=2).backend == "causal"
    lm = HFLM(pretrained=ours, tokenizer=tokenizer, backend="causal", batch_size=2)
    assert lm.max_length == ours.config.n_positions
    _assert_same_lm_eval_results(_lm_eval_results(lm, pairs), stock_results)


def test_lm_eval_loads_a_folder_we_save_by_path_as_stock_gpt2(lm_eval_case, tmp_path):
    ours, tokenizer, pairs, stock_results = lm_eval_case
    ours.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    lm = HFLM(pretrained=str(tmp_path), device="cpu", batch_size=2)
    assert type(lm.model) is GPT2LMHeadModel  # `model_type: gpt2`, so AutoModelForCausalLM gives stock
    _assert_same_lm_eval_results(_lm_eval_results(lm, pairs), stock_results)
