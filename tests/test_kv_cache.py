"""The in-place key/value cache: a DynamicCache that our model fills without copying it every step."""

import pytest
import torch
from helpers import max_diff, save_stock_lm
from transformers import DynamicCache

from hf_llm import GPTForCausalLM
from hf_llm.models.gpt import speed_paths

ATOL = 1e-5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    path = tmp_path_factory.mktemp("stock")
    stock = save_stock_lm(path)
    return GPTForCausalLM.from_pretrained(path).eval(), stock


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(speed_paths, "KV_CACHE_BLOCK", 4)  # so short tests cross several block boundaries


def _ids(batch=2, length=20, seed=0):
    return torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_cache_equals_stock_cache_and_is_written_in_place(pair, small_blocks):
    ours, stock = pair
    ids = _ids()
    ours_cache, stock_cache = DynamicCache(config=ours.config), DynamicCache(config=stock.config)
    buffers = []
    with torch.no_grad():
        for start, end in [(0, 5)] + [(t, t + 1) for t in range(5, 20)]:
            a = ours(ids[:, start:end], cache=ours_cache, use_cache=True)
            b = stock(ids[:, start:end], cache=stock_cache, use_cache=True)
            assert max_diff(a.logits, b.logits) < ATOL
            assert ours_cache.get_seq_length() == stock_cache.get_seq_length() == end
            for mine, theirs in zip(ours_cache.layers, stock_cache.layers):
                assert mine.keys.shape == theirs.keys.shape and mine.values.shape == theirs.values.shape
                assert max_diff(mine.keys, theirs.keys) < ATOL and max_diff(mine.values, theirs.values) < ATOL
            layer = ours_cache.layers[0]
            assert type(layer) is speed_paths.DynamicLayer  # still transformers' own class
            buffers.append((layer.keys._base.data_ptr(), layer.keys._base.shape[-2]))
    # A buffer grows by whole blocks of 4 positions, only when full: 5-8 positions in 8, 9-12 in 12, ...
    capacities = [capacity for _, capacity in buffers]
    assert capacities == [-(-end // 4) * 4 for end in range(5, 21)]
    assert len({pointer for pointer, _ in buffers}) == len(set(capacities))  # no new buffer within a block


def _full_logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("edit", ["crop", "reorder", "select", "reset"])
def test_edited_cache_keeps_decoding_like_a_full_pass(pair, small_blocks, edit):
    ours, _ = pair
    ids = _ids(batch=3, length=16, seed=1)
    cache = DynamicCache(config=ours.config)
    with torch.no_grad():
        ours(ids[:, :10], cache=cache, use_cache=True)
        for t in range(10, 13):
            ours(ids[:, t : t + 1], cache=cache, use_cache=True)
        rows, start = torch.arange(3), 13
        if edit == "crop":
            cache.crop(-4)  # back to 9 positions
            start = 9
        elif edit == "reorder":
            rows = torch.tensor([2, 0, 1])
            cache.reorder_cache(rows)
        elif edit == "select":
            rows = torch.tensor([0, 2])
            cache.batch_select_indices(rows)
        else:
            cache.reset()
            start = 0
        expected = _full_logits(ours, ids[rows])
        if start == 0:
            out = ours(ids[rows, :6], cache=cache, use_cache=True)
            assert max_diff(out.logits, expected[:, :6]) < ATOL
            start = 6
        for t in range(start, 16):
            out = ours(ids[rows, t : t + 1], cache=cache, use_cache=True)
            assert max_diff(out.logits[:, -1], expected[:, t]) < ATOL
        assert cache.get_seq_length() == 16


def test_inputs_that_need_gradients_use_concatenation(pair):
    ours, _ = pair
    ours.train()
    try:
        cache = DynamicCache(config=ours.config)
        ids = _ids(batch=2, length=8, seed=2)
        out = ours(ids, labels=ids, cache=cache, use_cache=True)
        out.loss.backward()
        assert all(not hasattr(layer, "_kv_views") and layer.keys._base is None for layer in cache.layers)
        assert ours.transformer.h[0].attn.c_attn.weight.grad is not None
    finally:
        ours.zero_grad(set_to_none=True)
        ours.eval()


def test_a_batch_that_does_not_fit_the_cache_is_refused(pair):
    ours, _ = pair
    cache = DynamicCache(config=ours.config)
    with torch.no_grad():
        ours(_ids(batch=2, length=5), cache=cache, use_cache=True)
        with pytest.raises(RuntimeError, match="[Ss]izes of tensors must match"):
            ours(_ids(batch=3, length=1), cache=cache, use_cache=True)


def test_reset_frees_the_buffers(pair):
    import gc
    import weakref

    ours, _ = pair
    cache = DynamicCache(config=ours.config)
    with torch.no_grad():
        ours(_ids(batch=2, length=5), cache=cache, use_cache=True)
    buffer = weakref.ref(cache.layers[0].keys._base)
    assert buffer() is not None
    cache.reset()
    gc.collect()
    assert buffer() is None


def test_tensors_put_into_the_cache_by_hand_are_never_written(pair):
    """A layer holding views of someone else's larger tensors: new positions go to new buffers."""
    ours, _ = pair
    ids = _ids(batch=2, length=8, seed=3)
    cache = DynamicCache(config=ours.config)
    with torch.no_grad():
        ours(ids[:, :6], cache=cache, use_cache=True)
        owned = []
        for layer in cache.layers:
            keys = torch.full(layer.keys.shape[:2] + (16,) + layer.keys.shape[3:], 7.0)
            values = torch.full_like(keys, 7.0)
            keys[:, :, :6], values[:, :, :6] = layer.keys, layer.values
            layer.keys, layer.values = keys[:, :, :6], values[:, :, :6]
            owned.append((keys, values))
        expected = _full_logits(ours, ids)
        for t in range(6, 8):
            out = ours(ids[:, t : t + 1], cache=cache, use_cache=True)
            assert max_diff(out.logits[:, -1], expected[:, t]) < ATOL
    for keys, values in owned:
        assert torch.all(keys[:, :, 6:] == 7.0) and torch.all(values[:, :, 6:] == 7.0)
