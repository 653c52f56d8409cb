"""generate() on our GPT gives what stock GPT-2 gives on the same weights: tokens, and every step's scores."""

import copy

import pytest
import torch
from helpers import save_stock_lm
from transformers import GenerationConfig

from hf_llm import GPTForCausalLM

PAD = 100  # = eos of the tiny config
ATOL = 1e-5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    path = tmp_path_factory.mktemp("stock_gen")
    stock = save_stock_lm(path, seed=7)
    ours = GPTForCausalLM.from_pretrained(path).eval()
    return ours, stock


def _prompts():
    torch.manual_seed(11)
    return torch.randint(0, 99, (1, 6))


def _left_padded():
    torch.manual_seed(12)
    ids = torch.randint(0, 99, (3, 8))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :5] = 0
    return ids.masked_fill(mask == 0, PAD), mask


MODES = {
    "greedy": dict(do_sample=False),
    "beam": dict(do_sample=False, num_beams=3, no_repeat_ngram_size=2),
    "sample_top_k": dict(do_sample=True, top_k=20, temperature=0.8),
    "sample_top_p": dict(do_sample=True, top_p=0.9, temperature=1.3),
    "sample_all": dict(do_sample=True, top_k=30, top_p=0.95, temperature=0.7),
}


def _generate(model, ids, mask, seed, **kwargs):
    config = GenerationConfig(
        max_new_tokens=20, min_new_tokens=20, pad_token_id=PAD, eos_token_id=PAD,
        output_scores=True, output_logits=True, return_dict_in_generate=True, **kwargs,
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, generation_config=config)


def assert_same_generation(a, b):
    """Same tokens, and at every step the same raw logits and processed scores (within ATOL)."""
    assert torch.equal(a.sequences, b.sequences)
    assert len(a.scores) == len(b.scores) == len(a.logits) == len(b.logits) == 20
    for step, (mine, theirs) in enumerate(zip(a.logits, b.logits)):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=ATOL, msg=f"logits differ at step {step}")
    for step, (mine, theirs) in enumerate(zip(a.scores, b.scores)):
        # -inf where a processor masked a token: those must match exactly, and torch.testing treats them so.
        torch.testing.assert_close(mine, theirs, rtol=0, atol=ATOL, msg=f"scores differ at step {step}")
    if getattr(b, "sequences_scores", None) is not None:
        torch.testing.assert_close(a.sequences_scores, b.sequences_scores, rtol=0, atol=ATOL)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_generate_matches_stock_at_every_step(pair, mode, impl, cache):
    ours, stock = pair
    ours.set_attn_implementation(impl)
    stock.set_attn_implementation(impl)
    ids = _prompts()
    extra = {"cache_implementation": "static"} if cache == "static" else {}
    a = _generate(ours, ids, torch.ones_like(ids), seed=5, **MODES[mode], **extra)
    b = _generate(stock, ids, torch.ones_like(ids), seed=5, **MODES[mode], **extra)
    assert a.sequences.shape == (1, 26)
    assert_same_generation(a, b)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("mode", ["greedy", "beam", "sample_all"])
def test_batched_left_padded_generation_matches_stock(pair, mode, cache):
    ours, stock = pair
    ids, mask = _left_padded()
    extra = {"cache_implementation": "static"} if cache == "static" else {}
    a = _generate(ours, ids, mask, seed=9, **MODES[mode], **extra)
    b = _generate(stock, ids, mask, seed=9, **MODES[mode], **extra)
    assert_same_generation(a, b)
    # Each padded row generates what it generates alone (padding is really ignored), for greedy decoding.
    if mode == "greedy":
        alone = _generate(ours, ids[2:, 5:], mask[2:, 5:], seed=9, **MODES[mode], **extra)
        assert torch.equal(a.sequences[2, 8:], alone.sequences[0, 3:])


def test_beam_search_respects_no_repeat_ngram(pair):
    ours, _ = pair
    out = _generate(ours, _prompts(), None, seed=0, **MODES["beam"]).sequences[0].tolist()
    bigrams = list(zip(out, out[1:]))
    assert len(bigrams) == len(set(bigrams))


def _forward_calls(model, ids, mask, **generate_kwargs):
    """The keyword arguments of every forward call `generate` makes, copied as they were at the call."""
    calls = []

    def record(module, args, kwargs):
        assert not args, "generate passes everything by keyword"
        calls.append(copy.deepcopy(kwargs))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _generate(model, ids, mask, seed=0, **generate_kwargs)
    finally:
        handle.remove()
    return calls


def _logits(model, kwargs):
    with torch.no_grad():
        return model(**copy.deepcopy(kwargs)).logits


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_forward_uses_every_keyword_generate_passes(pair, cache):
    """Each keyword of the installed release's generate either changes stock's logits when dropped, and
    then ours' too, by the same, or changes neither. A keyword ours ignored would fail here."""
    ours, stock = pair
    ours.set_attn_implementation("sdpa")
    stock.set_attn_implementation("sdpa")
    ids, mask = _left_padded()
    extra = {"cache_implementation": "static"} if cache == "static" else {}
    calls = _forward_calls(ours, ids, mask, do_sample=False, **extra)
    assert len(calls) == 20
    decode_step = calls[3]  # a step with a filled cache, padding and one new token per row
    assert any(name in decode_step for name in ("cache", "past_key_values"))
    for name, value in decode_step.items():
        if value is None:
            continue
        without = {k: v for k, v in decode_step.items() if k != name}
        mine = _logits(ours, decode_step)
        theirs = _logits(stock, decode_step)
        torch.testing.assert_close(mine, theirs, rtol=0, atol=ATOL, msg=f"with {name}")
        try:
            theirs_without = _logits(stock, without)
        except Exception:  # stock cannot run without it: neither may ours run without noticing
            theirs_without = None
        if theirs_without is None or theirs_without.shape != theirs.shape:
            continue
        stock_uses_it = not torch.allclose(theirs_without, theirs, rtol=0, atol=ATOL)
        mine_without = _logits(ours, without)
        assert mine_without.shape == theirs_without.shape, name
        ours_uses_it = not torch.allclose(mine_without, mine, rtol=0, atol=ATOL)
        assert ours_uses_it == stock_uses_it, f"generate's {name!r}: stock uses it: {stock_uses_it}, ours: {ours_uses_it}"
        if stock_uses_it:
            torch.testing.assert_close(mine_without, theirs_without, rtol=0, atol=ATOL, msg=f"without {name}")
