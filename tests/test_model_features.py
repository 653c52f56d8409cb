"""Features users expect of a transformers model, and the errors for bad input."""

import json
import os

import pytest
import torch
from helpers import max_diff, save_stock_lm
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2LMHeadModel

from hf_llm import GPT2_PRESETS, GPTConfig, GPTForCausalLM, GPTForSequenceClassification, GPTModel
from hf_llm.export import export_to_gpt2, main as export_main
from hf_llm.models.gpt.speed_paths import GPTLinear, chunked_causal_lm_loss, tied_head_gradient_for


def tiny_config(**overrides):
    base = dict(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=100, eos_token_id=100)
    return GPTConfig(**{**base, **overrides})


# --- config ------------------------------------------------------------------------------------


def test_config_defaults_and_aliases_match_gpt2():
    from transformers import GPT2Config

    ours, stock = GPTConfig(), GPT2Config()
    for field in [
        "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
        "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range",
        "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
        "bos_token_id", "eos_token_id", "summary_type", "summary_use_proj", "summary_activation",
        "summary_proj_to_labels", "summary_first_dropout", "tie_word_embeddings",
    ]:
        assert getattr(ours, field) == getattr(stock, field), field
    config = GPTConfig(hidden_size=128, num_attention_heads=8, num_hidden_layers=3, max_position_embeddings=256)
    assert (config.n_embd, config.n_head, config.n_layer, config.n_positions) == (128, 8, 3, 256)


def test_config_reads_stock_gpt2_folder(tmp_path):
    save_stock_lm(tmp_path)
    config = GPTConfig.from_pretrained(tmp_path)
    assert config.model_type == "hf_llm_gpt"
    assert (config.n_embd, config.n_layer, config.vocab_size) == (32, 2, 101)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(n_embd=100, n_head=12), ["n_embd (100)", "divisible by n_head (12)"]),
        (dict(n_layer=0), ["n_layer", "positive"]),
        (dict(vocab_size=-3), ["vocab_size", "positive"]),
        (dict(activation_function="swish2"), ["swish2", "gelu_new"]),
        (dict(attn_pdrop=1.5), ["attn_pdrop"]),
    ],
)
def test_bad_config_is_refused_with_a_fix(kwargs, words):
    with pytest.raises(ValueError) as err:
        GPTConfig(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_presets_have_the_published_parameter_counts():
    for name, spec in GPT2_PRESETS.items():
        with torch.device("meta"):
            model = GPTForCausalLM(GPTConfig.from_preset(name))
        unique = {id(p): p.numel() for p in model.parameters()}
        assert sum(unique.values()) == spec["parameters"], name
    assert GPTConfig.from_preset("gpt2-medium").n_embd == 1024
    with pytest.raises(ValueError, match="Known presets"):
        GPTConfig.from_preset("gpt2-huge")


# --- model features -----------------------------------------------------------------------------


def test_lm_head_is_tied_and_resize_keeps_it_tied():
    model = GPTForCausalLM(tiny_config())
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120
    assert model.lm_head.weight.shape == (120, 32)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    out = model(torch.tensor([[119, 3, 5]])).logits
    assert out.shape == (1, 3, 120)


def test_logits_to_keep():
    model = GPTForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        last = model(ids, logits_to_keep=1).logits
        assert last.shape == (2, 1, 101)
        assert max_diff(last[:, 0], full[:, -1]) < 1e-6


def test_gradient_checkpointing_gives_same_loss_and_gradients():
    torch.manual_seed(0)
    config = tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPTForCausalLM(config).train()
    ids = torch.randint(0, 100, (2, 16))
    loss = model(ids, labels=ids).loss
    loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(block.gradient_checkpointing for block in model.transformer.h)
    loss2 = model(ids, labels=ids).loss
    loss2.backward()
    assert abs(loss.item() - loss2.item()) < 1e-6
    for name, param in model.named_parameters():
        assert max_diff(param.grad, reference[name]) < 1e-6, name


def _graph_node_names(grad_fn) -> set[str]:
    seen, stack = set(), [grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


@pytest.mark.parametrize(
    "case", ["tied", "untied", "token_type_ids", "accumulate", "frozen_embedding", "hidden_states_too"]
)
def test_chunked_loss_equals_plain_loss_and_gradients(case):
    torch.manual_seed(0)
    config = tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=case != "untied")
    model = GPTForCausalLM(config).train()
    if case == "frozen_embedding":
        model.transformer.wte.weight.requires_grad_(False)
    ids = torch.randint(0, 100, (3, 20))
    labels = ids.clone()
    labels[0, :7] = -100
    labels[2, 15:] = -100
    extra = {"token_type_ids": torch.randint(0, 100, (3, 20))} if case == "token_type_ids" else {}
    grads = []
    for chunked in (False, True):
        model.use_chunked_lm_loss(chunked)
        model.zero_grad(set_to_none=True)
        for _ in range(2 if case == "accumulate" else 1):  # gradient accumulation adds into .grad
            out = model(ids, labels=labels, output_hidden_states=True, **extra)
            assert (out.logits is None) == chunked
            loss = out.loss + out.hidden_states[2].sum() * 1e-3 if case == "hidden_states_too" else out.loss
            # With tied weights the chunked loss hands the head's gradient to the embedding lookup.
            handed_over = "_TokenEmbeddingBackward" in _graph_node_names(loss.grad_fn)
            assert handed_over == (chunked and case not in ("untied", "frozen_embedding"))
            loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (plain_loss, plain), (chunked_loss, chunked) = grads
    assert abs(plain_loss - chunked_loss) < 1e-5
    assert plain.keys() == chunked.keys()
    for name in plain:
        assert chunked[name].layout == torch.strided
        assert max_diff(plain[name], chunked[name]) < 1e-5, name


def test_embedding_gradient_without_the_loss_in_backward():
    # The loss is computed but only another output is back-propagated: the embedding lookup gets
    # no gradient from the loss and must still give the weight its own rows.
    torch.manual_seed(0)
    model = GPTForCausalLM(tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).train()
    ids = torch.randint(0, 100, (2, 12))
    hidden = model.use_chunked_lm_loss()(ids, labels=ids, output_hidden_states=True).hidden_states[1]
    hidden.pow(2).sum().backward()
    reference = model.transformer.wte.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    model.use_chunked_lm_loss(False)(ids, labels=ids, output_hidden_states=True).hidden_states[1].pow(2).sum().backward()
    assert max_diff(reference, model.transformer.wte.weight.grad) < 1e-6
    assert reference.abs().sum() > 0


@pytest.mark.parametrize("vocab", [50, 50257])
def test_chunked_loss_handles_num_items_in_batch_and_small_chunks(vocab):
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = (torch.randn(vocab, 16) * 0.1).requires_grad_()  # GPT-2-like scale: logits of order 1
    labels = torch.randint(0, vocab, (2, 9))
    labels[1, 2] = -100
    logits = hidden @ weight.t()
    shift = labels[:, 1:].reshape(-1)
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), shift, ignore_index=-100, reduction="sum") / 7
    chunked = chunked_causal_lm_loss(hidden, weight, labels, num_items_in_batch=7, chunk_size=3)
    assert abs(plain.item() - chunked.item()) < 1e-5
    g_plain = torch.autograd.grad(plain * 2.5, (hidden, weight))
    g_chunk = torch.autograd.grad(chunked * 2.5, (hidden, weight))
    for a, b in zip(g_plain, g_chunk):
        assert max_diff(a, b) < 1e-5


def test_chunked_loss_with_every_label_ignored_is_zero_with_zero_gradients():
    hidden = torch.randn(2, 5, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    loss = chunked_causal_lm_loss(hidden, weight, torch.full((2, 5), -100))
    loss.backward()
    assert loss.item() == 0.0
    assert hidden.grad.abs().max().item() == 0.0 and weight.grad.abs().max().item() == 0.0


def test_chunked_loss_refuses_a_second_backward_with_a_clear_error():
    hidden = torch.randn(1, 6, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    loss = chunked_causal_lm_loss(hidden, weight, torch.randint(0, 30, (1, 6)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match=r"use_chunked_lm_loss\(False\)"):
        loss.backward()


def test_chunked_loss_in_bf16_follows_the_fp32_loss():
    torch.manual_seed(0)
    hidden = torch.randn(3, 40, 32)
    weight = torch.randn(200, 32) * 0.1
    labels = torch.randint(0, 200, (3, 40))
    reference = chunked_causal_lm_loss(hidden, weight, labels, chunk_size=16)
    h16 = hidden.bfloat16().requires_grad_()
    w16 = weight.bfloat16().requires_grad_()
    low = chunked_causal_lm_loss(h16, w16, labels, chunk_size=16)
    low.backward()
    assert low.dtype == torch.float32 and abs(low.item() - reference.item()) < 0.05
    assert h16.grad.dtype == torch.bfloat16 and w16.grad.dtype == torch.bfloat16
    assert torch.isfinite(h16.grad.float()).all() and w16.grad.float().abs().sum() > 0


def test_training_mode_returns_logits_as_stock_unless_the_chunked_loss_is_on(tmp_path):
    save_stock_lm(tmp_path)
    stock = GPT2LMHeadModel.from_pretrained(tmp_path).train()
    model = GPTForCausalLM.from_pretrained(tmp_path).train()
    ids = torch.randint(0, 100, (2, 5))
    assert model(ids, labels=ids).logits.shape == stock(ids, labels=ids).logits.shape == (2, 5, 101)
    assert GPTForCausalLM(tiny_config()).train()(ids, labels=ids).logits.shape == (2, 5, 101)
    assert model.use_chunked_lm_loss()(ids, labels=ids).logits is None
    assert model.eval()(ids, labels=ids).logits.shape == (2, 5, 101)  # evaluation keeps its logits
    assert model.train()(ids).logits.shape == (2, 5, 101)  # so do forwards without labels
    assert "chunked" not in (tmp_path / "config.json").read_text()  # the setting is not saved


def test_return_dict_false_gives_tuples():
    model = GPTForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 100, (1, 5))
    out = model(ids, labels=ids, return_dict=False, use_cache=False)
    assert isinstance(out, tuple) and out[0].ndim == 0 and out[1].shape == (1, 5, 101)


def test_device_map_and_no_split_modules(tmp_path):
    GPTForCausalLM(tiny_config()).save_pretrained(tmp_path)
    model = GPTForCausalLM.from_pretrained(tmp_path, device_map="cpu")
    assert set(model._no_split_modules) == {"GPTBlock"}
    assert model.device.type == "cpu"


def test_dtype_loading_bf16(tmp_path):
    GPTForCausalLM(tiny_config()).save_pretrained(tmp_path)
    model = GPTForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.dtype == torch.bfloat16


# --- errors -------------------------------------------------------------------------------------


def test_too_long_input_names_limit_and_length():
    model = GPTForCausalLM(tiny_config()).eval()
    with pytest.raises(ValueError) as err:
        model(torch.zeros(1, 65, dtype=torch.long))
    assert "n_positions=64" in str(err.value) and "65" in str(err.value)
    # Growing past the limit through the cache is caught too.
    out = model(torch.zeros(1, 60, dtype=torch.long), use_cache=True)
    with pytest.raises(ValueError, match="n_positions=64"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=out.cache)


def test_out_of_vocabulary_ids_are_refused():
    model = GPTForCausalLM(tiny_config()).eval()
    with pytest.raises(ValueError) as err:
        model(torch.tensor([[1, 2, 101]]))
    assert "101" in str(err.value) and "vocab_size=101" in str(err.value)
    with pytest.raises(ValueError, match="-1"):
        model(torch.tensor([[1, -1]]))


def test_classifier_without_pad_token_explains_fix():
    model = GPTForSequenceClassification(tiny_config(num_labels=1))
    with pytest.raises(ValueError, match="no padding token is defined"):  # transformers' own check, as in stock
        model(torch.randint(0, 100, (2, 4)))


# --- auto classes and export --------------------------------------------------------------------


def test_auto_classes_resolve_to_ours(tmp_path):
    config = tiny_config()
    assert type(AutoModelForCausalLM.from_config(config)) is GPTForCausalLM
    assert type(AutoModel.from_config(config)) is GPTModel
    assert type(AutoModelForSequenceClassification.from_config(tiny_config(num_labels=1))) is GPTForSequenceClassification
    # A config.json that names our model type (as hf_llm wrote before saving `gpt2`) still loads as ours.
    GPTForCausalLM(config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "model_type": GPTConfig.model_type}))
    assert isinstance(AutoConfig.from_pretrained(tmp_path), GPTConfig)
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path)) is GPTForCausalLM
    assert type(AutoModel.from_pretrained(tmp_path)) is GPTModel
    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=1)
    assert type(clf) is GPTForSequenceClassification


def test_saved_folder_is_gpt2_to_transformers_and_ours_to_hf_llm(tmp_path):
    """config.json says model_type gpt2: Auto classes read stock GPT-2 with our numbers; our class and
    trust_remote_code=True read ours."""
    model = GPTForCausalLM(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "gpt2"
    assert saved["auto_map"]["AutoModelForCausalLM"] == "modeling_gpt.GPTForCausalLM"
    assert (tmp_path / "modeling_gpt.py").exists() and (tmp_path / "configuration_gpt.py").exists()
    assert GPTConfig.from_pretrained(tmp_path).to_dict() == model.config.to_dict()
    ids = torch.randint(0, 100, (1, 7))
    with torch.no_grad():
        expected = model(ids).logits
        stock = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert type(stock) is GPT2LMHeadModel
        assert max_diff(stock(ids).logits, expected) < 1e-5
        ours = GPTForCausalLM.from_pretrained(tmp_path).eval()
        assert max_diff(ours(ids).logits, expected) == 0
        remote = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
        assert type(remote).__name__ == "GPTForCausalLM" and type(remote).__module__.startswith("transformers_modules")
        assert max_diff(remote(ids).logits, expected) == 0
    # The in-memory config keeps our type, so Auto classes built from it stay ours.
    assert model.config.model_type == GPTConfig.model_type


def test_export_to_gpt2_writes_a_plain_gpt2_checkpoint(tmp_path):
    model = GPTForCausalLM(tiny_config()).eval()
    model.save_pretrained(tmp_path / "ours")
    export_main([str(tmp_path / "ours"), str(tmp_path / "gpt2")])
    config = (tmp_path / "gpt2" / "config.json").read_text()
    assert '"model_type": "gpt2"' in config and "auto_map" not in config
    # llama.cpp's convert_hf_to_gguf.py reads the context length from n_ctx.
    assert json.loads(config)["n_ctx"] == 64
    assert not (tmp_path / "gpt2" / "modeling_gpt.py").exists()
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2").eval()
    assert type(stock) is GPT2LMHeadModel
    ids = torch.randint(0, 100, (1, 7))
    with torch.no_grad():
        assert max_diff(stock(ids).logits, model(ids).logits) < 1e-5
    with pytest.raises(FileExistsError, match="not empty"):
        export_to_gpt2(model, tmp_path / "gpt2")
    # An ordinary folder, readable as the user's umask allows (not the private mode of a temp folder).
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "gpt2").stat().st_mode & 0o777 == 0o777 & ~umask


def test_export_refuses_adapters_and_names_the_fix(tmp_path, capsys):
    from hf_llm import lora

    model = GPTForCausalLM(tiny_config()).eval()
    lora.inject_lora(model, ["c_attn"], lora.LoRASettings(r=2))
    with pytest.raises(ValueError, match="merge_and_unload"):
        export_to_gpt2(model, tmp_path / "out")
    lora.save_adapter(model, tmp_path / "adapter")
    with pytest.raises(SystemExit) as err:
        export_main([str(tmp_path / "adapter"), str(tmp_path / "out")])
    assert err.value.code == 2 and "holds a LoRA adapter" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    lora.merge_and_unload_lora(model).save_pretrained(tmp_path / "merged")
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "merged"), str(tmp_path / "busy")])
    assert "pass --overwrite" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("product", ["plain", "transposed", None])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 24), (1, 1, 24), (2, 1, 24), (2, 24), (3, 1, 24), (4, 5, 24), (0, 24)])
def test_gpt_linear_few_row_products_equal_nn_linear(shape, bias, product, monkeypatch):
    monkeypatch.setattr(GPTLinear, "few_rows_choices", {})
    torch.manual_seed(0)
    layer = GPTLinear(24, 40, bias=bias)
    layer.few_rows, layer.few_rows_product = 3, product
    x = torch.randn(*shape, requires_grad=True)
    out = layer(x)
    ref = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert out.shape == ref.shape and out.is_contiguous()
    rows = x.numel() // 24
    # Without a forced product, the first input of 1-3 rows times both and records the faster.
    timed = product is None and 0 < rows <= 3
    key = (40, 24, bias, 1 << (rows - 1).bit_length(), x.dtype, torch.get_num_threads()) if timed else None
    assert list(GPTLinear.few_rows_choices) == ([key] if timed else [])
    assert set(GPTLinear.few_rows_choices.values()) <= {"plain", "transposed"}
    if x.numel():
        assert max_diff(out, ref) < 1e-5
        grad_out, grad_ref = torch.autograd.grad(out.square().sum(), x)[0], torch.autograd.grad(ref.square().sum(), x)[0]
        assert max_diff(grad_out, grad_ref) < 1e-4


def test_gpt_linear_uses_the_recorded_choice(monkeypatch):
    layer = GPTLinear(24, 40)
    x = torch.randn(2, 24)
    key = (40, 24, True, 2, x.dtype, torch.get_num_threads())
    calls = []
    def transposed(self, input, rows):
        calls.append(rows)
        return input @ self.weight.t()

    monkeypatch.setattr(GPTLinear, "_transposed_product", transposed)
    for choice, expected_calls in [("plain", []), ("transposed", [2])]:
        calls.clear()
        monkeypatch.setattr(GPTLinear, "few_rows_choices", {key: choice})
        layer(x)
        assert calls == expected_calls
    layer.few_rows_product = "fast"
    with pytest.raises(ValueError, match="few_rows_product must be 'plain', 'transposed' or None"):
        layer(x)


def test_tied_head_gradient_handover_survives_the_input_require_grads_hook():
    """Gradient checkpointing and PEFT call enable_input_require_grads, which hooks the token embedding
    only to mark its output as requiring grad: the handover stays on; any other hook turns it off."""
    model = GPTForCausalLM(tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).train().use_chunked_lm_loss()
    wte, lm_head = model.transformer.wte, model.lm_head
    assert tied_head_gradient_for(wte, lm_head) is not None
    model.gradient_checkpointing_enable()
    assert model.transformer.wte._forward_hooks and tied_head_gradient_for(wte, lm_head) is not None
    ids = torch.randint(0, 100, (2, 12))
    loss = model(ids, labels=ids).loss
    loss.backward()
    with_handover = model.transformer.wte.weight.grad.clone()
    model.zero_grad()
    handle = model.transformer.wte.register_forward_hook(lambda module, args, output: output)
    assert tied_head_gradient_for(wte, lm_head) is None
    model(ids, labels=ids).loss.backward()
    handle.remove()
    assert max_diff(model.transformer.wte.weight.grad, with_handover) < 1e-6


def test_trainer_predictions_hold_logits_not_the_cache(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = GPTForCausalLM(tiny_config()).eval()
    rows = [{"input_ids": torch.randint(0, 100, (6,)), "labels": torch.randint(0, 100, (6,))} for _ in range(3)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to="none", use_cpu=True)
    predictions = Trainer(model=model, args=args).predict(rows).predictions
    assert predictions.shape == (3, 6, 101)  # logits alone: the KV cache is left out, as for stock GPT-2
