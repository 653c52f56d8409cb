"""Our GPT against stock transformers GPT-2 on the same weights: loading both ways, logits, cache."""

import pytest
import torch
from helpers import max_diff, save_stock_classifier, save_stock_lm
from transformers import DynamicCache, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from hf_llm import GPTForCausalLM, GPTForSequenceClassification, GPTModel
from hf_llm.models.gpt.modeling_gpt import CONV1D_WEIGHT_NAMES

ATOL = 1e-5
ATTN = ["eager", "sdpa"]


@pytest.fixture(scope="module")
def tiny_stock(tmp_path_factory):
    path = tmp_path_factory.mktemp("stock_tiny")
    return save_stock_lm(path), path


@pytest.fixture(scope="module")
def full_stock(tmp_path_factory):
    """The full 124M architecture with random weights (dropout off, as in eval)."""
    path = tmp_path_factory.mktemp("stock_124m")
    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    model.save_pretrained(path)
    return model, path


def _load(cls, path, impl, **kwargs):
    model, info = cls.from_pretrained(path, attn_implementation=impl, output_loading_info=True, **kwargs)
    return model.eval(), info


def _no_key_problems(info):
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["unexpected_keys"], info["unexpected_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]


def _padded_batch(vocab, left: bool):
    torch.manual_seed(3)
    ids = torch.randint(0, vocab - 1, (3, 12))
    mask = torch.ones_like(ids)
    for row, pad in enumerate([0, 4, 7]):
        if pad:
            if left:
                mask[row, :pad] = 0
            else:
                mask[row, -pad:] = 0
    return ids, mask


@pytest.mark.parametrize("impl", ATTN)
def test_stock_checkpoint_loads_with_identical_logits(tiny_stock, impl):
    stock, path = tiny_stock
    ours, info = _load(GPTForCausalLM, path, impl)
    _no_key_problems(info)
    stock.set_attn_implementation(impl)
    ids = torch.randint(0, 100, (2, 17))
    with torch.no_grad():
        assert max_diff(ours(ids).logits, stock(ids).logits) < ATOL


@pytest.mark.parametrize("impl", ATTN)
@pytest.mark.parametrize("left", [True, False], ids=["left-pad", "right-pad"])
def test_padding_masks_match_stock(tiny_stock, impl, left):
    stock, path = tiny_stock
    ours, _ = _load(GPTForCausalLM, path, impl)
    stock.set_attn_implementation(impl)
    ids, mask = _padded_batch(101, left)
    # Positions as generate computes them for padded prompts.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, position_ids=position_ids).logits
        b = stock(ids, attention_mask=mask, position_ids=position_ids).logits
        keep = mask.bool()
        assert max_diff(a[keep], b[keep]) < ATOL
        # Without explicit positions too.
        assert max_diff(ours(ids, attention_mask=mask).logits[keep], stock(ids, attention_mask=mask).logits[keep]) < ATOL


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize("cache_keyword", ["cache", "past_key_values"])
@pytest.mark.parametrize("impl", ATTN)
def test_incremental_decoding_with_cache_matches_stock_and_full_pass(tiny_stock, impl, cache_keyword):
    # Remote code may meet callers of either name (transformers' generate says `cache` from 5.24 on).
    stock, path = tiny_stock
    ours, _ = _load(GPTForCausalLM, path, impl)
    stock.set_attn_implementation(impl)
    ids = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        full = ours(ids).logits
        ours_cache, stock_cache = DynamicCache(), DynamicCache()
        a = ours(ids[:, :7], use_cache=True, **{cache_keyword: ours_cache})
        b = stock(ids[:, :7], cache=stock_cache, use_cache=True)
        assert max_diff(a.logits, b.logits) < ATOL
        for step in range(7, 10):
            a = ours(ids[:, step : step + 1], use_cache=True, **{cache_keyword: a.cache})
            b = stock(ids[:, step : step + 1], cache=b.cache, use_cache=True)
            assert max_diff(a.logits, b.logits) < ATOL
            assert max_diff(a.logits[:, -1], full[:, step]) < ATOL
        assert a.cache is ours_cache and ours_cache.get_seq_length() == 10


@pytest.mark.parametrize("impl", ATTN)
def test_full_124m_architecture_matches_stock(full_stock, impl):
    stock, path = full_stock
    ours, info = _load(GPTForCausalLM, path, impl)
    _no_key_problems(info)
    assert ours.num_parameters() == stock.num_parameters() == 124_439_808
    stock.set_attn_implementation(impl)
    ids, mask = _padded_batch(50257, left=True)
    ids = (ids * 497) % 50257  # spread over the vocabulary
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)
        b = stock(ids, attention_mask=mask)
        keep = mask.bool()
        assert max_diff(a.logits[keep], b.logits[keep]) < ATOL
        # One cached step after the padded prompt.
        nxt = torch.randint(0, 50257, (3, 1))
        mask2 = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        a2 = ours(nxt, attention_mask=mask2, cache=a.cache)
        b2 = stock(nxt, attention_mask=mask2, cache=b.cache)
        assert max_diff(a2.logits, b2.logits) < ATOL


@pytest.mark.parametrize("impl", ATTN)
def test_our_checkpoint_loads_into_stock(tiny_stock, tmp_path, impl):
    stock, path = tiny_stock
    ours, _ = _load(GPTForCausalLM, path, impl)
    with torch.no_grad():  # make ours differ from the stock weights it was loaded from
        ours.transformer.h[0].attn.c_proj.weight.add_(0.01 * torch.randn_like(ours.transformer.h[0].attn.c_proj.weight))
    ours.save_pretrained(tmp_path)
    reloaded, info = GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation=impl, output_loading_info=True)
    _no_key_problems(info)
    ids = torch.randint(0, 100, (2, 15))
    with torch.no_grad():
        assert max_diff(reloaded.eval()(ids).logits, ours(ids).logits) < ATOL
        ours_again, info = _load(GPTForCausalLM, tmp_path, impl)
        _no_key_problems(info)
        assert torch.equal(ours_again(ids).logits, ours(ids).logits)


def test_fresh_model_saves_in_stock_layout(tmp_path):
    from hf_llm import GPTConfig

    ours = GPTForCausalLM(GPTConfig(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    ours.save_pretrained(tmp_path)
    stock, info = GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    _no_key_problems(info)
    ids = torch.randint(0, 100, (1, 9))
    with torch.no_grad():
        assert max_diff(stock.eval()(ids).logits, ours(ids).logits) < ATOL


def test_plain_load_state_dict_accepts_gpt2_layout(tiny_stock):
    """Trainer's resume reads model.safetensors with load_state_dict, bypassing from_pretrained."""
    from safetensors.torch import load_file

    stock, path = tiny_stock
    ours = GPTForCausalLM.from_pretrained(path).eval()
    fresh = GPTForCausalLM(ours.config).eval()
    result = fresh.load_state_dict(load_file(path / "model.safetensors"), strict=False)
    assert set(result.missing_keys) <= {"lm_head.weight"}  # tied to wte
    # And our own in-memory layout loads as it is.
    fresh2 = GPTForCausalLM(ours.config).eval()
    fresh2.load_state_dict(ours.state_dict())
    ids = torch.randint(0, 100, (2, 11))
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, ours(ids).logits)
        assert torch.equal(fresh2(ids).logits, ours(ids).logits)


@pytest.mark.parametrize("impl", ATTN)
def test_sequence_classification_both_ways(tmp_path, impl):
    stock = save_stock_classifier(tmp_path / "stock", num_labels=3, pad_token_id=0)
    ours, info = _load(GPTForSequenceClassification, tmp_path / "stock", impl)
    _no_key_problems(info)
    stock.set_attn_implementation(impl)
    ids, mask = _padded_batch(101, left=False)
    ids = ids.clamp(min=1).masked_fill(mask == 0, 0)  # pad id 0 marks the padding
    with torch.no_grad():
        assert max_diff(ours(ids, attention_mask=mask).logits, stock(ids, attention_mask=mask).logits) < ATOL
        # Left padding: the last token is the last position.
        left_ids, left_mask = _padded_batch(101, left=True)
        left_ids = left_ids.clamp(min=1).masked_fill(left_mask == 0, 0)
        assert max_diff(ours(left_ids, attention_mask=left_mask).logits, stock(left_ids, attention_mask=left_mask).logits) < ATOL
        labels = torch.tensor([0, 2, 1])
        assert abs(ours(ids, attention_mask=mask, labels=labels).loss - stock(ids, attention_mask=mask, labels=labels).loss) < ATOL
    ours.save_pretrained(tmp_path / "ours")
    back, info = GPT2ForSequenceClassification.from_pretrained(tmp_path / "ours", attn_implementation=impl, output_loading_info=True)
    _no_key_problems(info)
    with torch.no_grad():
        assert max_diff(back.eval()(ids, attention_mask=mask).logits, stock(ids, attention_mask=mask).logits) < ATOL


def test_lm_checkpoint_loads_into_classifier_and_base_model(tiny_stock):
    stock, path = tiny_stock
    clf, info = GPTForSequenceClassification.from_pretrained(path, num_labels=1, pad_token_id=100, output_loading_info=True)
    assert info["missing_keys"] == {"score.weight"}  # the new head, as with stock
    assert not info["unexpected_keys"] - {"lm_head.weight"}
    base, info = GPTModel.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"]
    ids = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        ref = stock.transformer(ids).last_hidden_state
        assert max_diff(base.eval()(ids).last_hidden_state, ref) < ATOL
        assert torch.equal(clf.transformer.wte.weight, stock.transformer.wte.weight)


def test_hidden_states_and_attentions_match_stock(tiny_stock):
    stock, path = tiny_stock
    ours, _ = _load(GPTForCausalLM, path, "eager")
    stock.set_attn_implementation("eager")
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        a = ours(ids, output_hidden_states=True, output_attentions=True)
        b = stock(ids, output_hidden_states=True, output_attentions=True)
    assert len(a.hidden_states) == len(b.hidden_states) == 3
    assert len(a.attentions) == len(b.attentions) == 2
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert max_diff(x, y) < ATOL
    for x, y in zip(a.attentions, b.attentions):
        assert max_diff(x, y) < ATOL


def test_causal_lm_loss_matches_stock(tiny_stock):
    stock, path = tiny_stock
    ours, _ = _load(GPTForCausalLM, path, "sdpa")
    ids = torch.randint(0, 100, (2, 13))
    labels = ids.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        assert abs(ours(ids, labels=labels).loss - stock(ids, labels=labels).loss) < ATOL


def _train_mode_without_dropout(model):
    """Training mode (so ours takes its chunked loss) with every dropout at zero, for exact comparisons."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model.train()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_loss_arguments_shift_labels_and_ignore_index_match_stock(tiny_stock, mode):
    """transformers' loss takes shift_labels (already aligned targets) and ignore_index through the model's kwargs."""
    stock, path = tiny_stock
    ours, _ = _load(GPTForCausalLM, path, "sdpa")
    if mode == "train":
        ours, stock = _train_mode_without_dropout(ours), _train_mode_without_dropout(stock)
    torch.manual_seed(4)
    ids = torch.randint(0, 100, (2, 13))
    shift = ids.roll(-2, dims=1)  # predict two tokens ahead: differs from the default shift by one
    shift[:, :6] = -100
    labels = ids.clone()
    labels[0, :5] = -1
    try:
        for kwargs in (dict(labels=ids, shift_labels=shift), dict(labels=labels, ignore_index=-1)):
            a, b = ours(ids, **kwargs).loss, stock(ids, **kwargs).loss
            assert abs(a.item() - b.item()) < ATOL, kwargs
            default = ours(ids, labels=ids).loss
            assert abs(a.item() - default.item()) > 1e-3, "the argument made no difference"
            a.backward()
            b.backward()
            for (name, p), q in zip(ours.named_parameters(), stock.parameters()):
                grad = p.grad.t() if name.endswith(CONV1D_WEIGHT_NAMES) else p.grad  # stock keeps (in, out)
                assert max_diff(grad, q.grad) < ATOL, name
            ours.zero_grad(), stock.zero_grad()
    finally:
        ours.eval(), stock.eval()


def test_label_outside_vocabulary_is_refused_in_training_mode(tiny_stock):
    _, path = tiny_stock
    ours = _train_mode_without_dropout(_load(GPTForCausalLM, path, "sdpa")[0]).use_chunked_lm_loss()
    ids = torch.randint(0, 100, (1, 8))
    labels = ids.clone()
    labels[0, 3] = -1  # not ignore_index (-100): the plain loss fails in cross_entropy, as stock does
    with pytest.raises(ValueError, match=r"Label -1 .*ignore_index"):
        ours(ids, labels=labels)
    labels[0, 3] = 101
    with pytest.raises(ValueError, match=r"Label 101 .*0 to 100"):
        ours(ids, labels=labels)


@pytest.mark.parametrize("impl", ATTN)
def test_packed_documents_longer_than_the_context_match_stock(tiny_stock, impl):
    """Padding-free packing (TRL's padding_free): explicit position_ids restart per document, the row may
    exceed n_positions, and each document attends only to itself."""
    stock, path = tiny_stock
    ours, _ = _load(GPTForCausalLM, path, impl)
    stock.set_attn_implementation(impl)
    lengths = [30, 25, 20]  # 75 tokens in one row, n_positions = 64
    torch.manual_seed(5)
    ids = torch.randint(0, 100, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        a = ours(ids, position_ids=positions, use_cache=False).logits
        b = stock(ids, position_ids=positions, use_cache=False).logits
        alone = ours(ids[:, 30:55]).logits
    assert max_diff(a, b) < ATOL
    assert max_diff(a[:, 30:55], alone) < ATOL
    with pytest.raises(ValueError, match="position_ids reach 64 .*n_positions=64"):
        ours(ids[:, :65], position_ids=torch.arange(65)[None])


def test_attention_dropout_is_a_module_that_tools_can_switch_off(tiny_stock):
    """Tools such as TRL's disable_dropout set every nn.Dropout's p to 0: attention dropout must be one of them."""
    _, path = tiny_stock
    ours, _ = _load(GPTForCausalLM, path, "sdpa")
    ids = torch.randint(0, 100, (2, 10))
    try:
        with torch.no_grad():
            expected = ours(ids).logits
            _train_mode_without_dropout(ours)
            torch.manual_seed(1)
            assert max_diff(ours(ids).logits, expected) == 0.0
            for block in ours.transformer.h:
                block.attn.attn_dropout.p = 0.5  # only attention dropout on: it must act
            torch.manual_seed(1)
            assert max_diff(ours(ids).logits, expected) > 1e-3
    finally:
        ours.eval()


@pytest.mark.parametrize("activation", ["gelu_accurate", "swish", "relu2"])
def test_every_stock_activation_function_builds_and_matches_stock(tmp_path, activation):
    stock = save_stock_lm(tmp_path, activation_function=activation)
    ours, info = _load(GPTForCausalLM, tmp_path, "sdpa")
    _no_key_problems(info)
    ids = torch.randint(0, 100, (2, 11))
    with torch.no_grad():
        assert max_diff(ours(ids).logits, stock(ids).logits) < ATOL


def test_ids_with_an_extra_leading_dimension_give_stock_shapes_and_values(tiny_stock):
    """GPT-2 accepts (batch, choices, length) ids and returns (batch, choices, length, vocab) logits."""
    stock, path = tiny_stock
    ours, _ = _load(GPTForCausalLM, path, "sdpa")
    ids = torch.randint(0, 100, (2, 3, 10))
    with torch.no_grad():
        a, b = ours(ids, labels=ids), stock(ids, labels=ids)
    assert a.logits.shape == b.logits.shape == (2, 3, 10, 101)
    assert max_diff(a.logits, b.logits) < ATOL
    assert abs(a.loss.item() - b.loss.item()) < ATOL
