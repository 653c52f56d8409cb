"""hf_llm.lora against PEFT: same weights give the same outputs and gradients, files load both ways."""

import copy
import json
import os
import warnings

import pytest
import torch
from helpers import max_diff
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

from hf_llm import GPTConfig, GPTForCausalLM, GPTForSequenceClassification
from hf_llm import lora
from hf_llm.lora import (
    LoRALinear,
    LoRASettings,
    disable_adapters,
    inject_lora,
    load_adapter,
    merge_and_unload_lora,
    merge_lora,
    save_adapter,
    set_adapter,
    trainable_parameters,
    trainable_parameters_report,
    unload_lora,
    unmerge_lora,
)

ATOL = 1e-6
TINY = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
ALL_PROJECTIONS = ["c_attn", "c_proj", "c_fc"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Every tensor here is tiny: extra threads only add synchronisation, which on a busy 2-core
    # machine turns a 20-microsecond matmul into milliseconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt(seed=0) -> GPTForCausalLM:
    torch.manual_seed(seed)
    return GPTForCausalLM(GPTConfig(**TINY)).eval()


def peft_and_ours(base: nn.Module, target_modules, r=4, alpha=8, dropout=0.0):
    """A PEFT model and an hf_llm.lora model on copies of `base`, with the same random (non-zero) A and B.

    The full state dicts have the same keys once PEFT's `base_model.model.` prefix is dropped, so
    PEFT's weights load into ours strictly: that is the layout being the same.
    """
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, init_lora_weights=False)
    theirs = get_peft_model(copy.deepcopy(base), config)
    ours = inject_lora(copy.deepcopy(base), target_modules, LoRASettings(r=r, alpha=alpha, dropout=dropout, init_lora_weights=False))
    state = {k.removeprefix("base_model.model."): v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    return theirs, ours


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {
        name.removeprefix("base_model.model."): param.grad
        for name, param in model.named_parameters()
        if "lora_" in name
    }


def assert_same_outputs_and_grads(theirs, ours, inputs, call):
    """Forward both on `inputs` (a tensor that needs grad), backprop the same random projection of
    the output, and compare outputs, input gradients and every LoRA gradient."""
    out = {}
    for key, model in (("theirs", theirs), ("ours", ours)):
        x = inputs.detach().clone().requires_grad_(True)
        y = call(model, x)
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
        (y * weights).sum().backward()
        out[key] = (y.detach(), x.grad, lora_grads(model))
    (y_t, gx_t, g_t), (y_o, gx_o, g_o) = out["theirs"], out["ours"]
    assert max_diff(y_t, y_o) < ATOL
    assert max_diff(gx_t, gx_o) < ATOL
    assert g_t.keys() == g_o.keys() and g_t
    for name in g_t:
        assert g_o[name] is not None and g_o[name].abs().sum() > 0, name
        assert max_diff(g_t[name], g_o[name]) < ATOL, name


# --------------------------------------------------------------------------------------------------
# Same weights, same maths as PEFT
# --------------------------------------------------------------------------------------------------


def test_one_linear_matches_peft():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 8))
    theirs, _ = peft_and_ours(base, ["0"])
    ours = LoRALinear(copy.deepcopy(base[0]), LoRASettings(r=4, alpha=8, init_lora_weights=False))
    peft_layer = theirs.base_model.model[0]
    ours.load_state_dict(peft_layer.state_dict(), strict=True)
    x = torch.randn(5, 16)
    assert_same_outputs_and_grads(peft_layer, ours, x, lambda m, x: m(x))
    # The wrapper still looks like a linear layer to code that reads its attributes.
    assert ours.weight is ours.base_layer.weight and ours.bias is ours.base_layer.bias
    assert (ours.in_features, ours.out_features) == (16, 8)
    assert not ours.base_layer.weight.requires_grad and ours.lora_A["default"].weight.requires_grad


def test_two_layer_mlp_matches_peft_with_dropout():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    theirs, ours = peft_and_ours(base, ["0", "2"], dropout=0.2)
    x = torch.randn(6, 16)
    assert_same_outputs_and_grads(theirs.eval(), ours.eval(), x, lambda m, x: m(x))
    # In training mode the dropout masks come from the same random stream in the same order.
    for model in (theirs, ours):
        model.zero_grad(set_to_none=True)
        model.train()

    def seeded(model, x):
        torch.manual_seed(123)
        return model(x)

    assert_same_outputs_and_grads(theirs, ours, x, seeded)


@pytest.mark.parametrize("targets", [["c_attn"], ALL_PROJECTIONS], ids=["c_attn", "all-projections"])
def test_gpt_matches_peft(targets, capsys):
    theirs, ours = peft_and_ours(tiny_gpt(), targets)
    embeds = torch.randn(2, 10, TINY["n_embd"])
    assert_same_outputs_and_grads(theirs, ours, embeds, lambda m, x: m(inputs_embeds=x).logits)
    # Parameter counts and PEFT's report line.
    assert trainable_parameters(ours) == theirs.get_nb_trainable_parameters()
    theirs.print_trainable_parameters()
    assert trainable_parameters_report(ours) == capsys.readouterr().out.strip()
    lora.print_trainable_parameters(ours)
    assert capsys.readouterr().out.strip() == trainable_parameters_report(ours)
    # Everything but the adapter is frozen, in both.
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        n.removeprefix("base_model.model.") for n, p in theirs.named_parameters() if p.requires_grad
    }


def test_124m_parameter_counts_match_peft():
    config = GPTConfig.from_preset("gpt2-124m")
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised for real
        ours = inject_lora(GPTForCausalLM(config), ["c_attn"], LoRASettings(r=4, alpha=8))
        theirs = get_peft_model(GPTForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"]))
    assert trainable_parameters(ours) == (147_456, 124_587_264)
    assert theirs.get_nb_trainable_parameters() == (147_456, 124_587_264)
    assert trainable_parameters_report(ours) == (
        "trainable params: 147,456 || all params: 124,587,264 || trainable%: 0.1184"
    )


# --------------------------------------------------------------------------------------------------
# Initialisation, merging, disabling, unloading
# --------------------------------------------------------------------------------------------------


def test_init_modes():
    torch.manual_seed(0)
    linear, x = nn.Linear(16, 8), torch.randn(4, 16)
    zero = LoRALinear(copy.deepcopy(linear), LoRASettings(r=4, alpha=8))  # init_lora_weights=True
    assert torch.equal(zero.lora_B["default"].weight, torch.zeros(8, 4))
    assert zero.lora_A["default"].weight.abs().sum() > 0
    assert torch.equal(zero(x), linear(x))  # B = 0: starts exactly at the base layer
    gaussian = LoRALinear(nn.Linear(512, 8), LoRASettings(r=4, alpha=8, init_lora_weights="gaussian"))
    assert torch.equal(gaussian.lora_B["default"].weight, torch.zeros(8, 4))
    assert abs(gaussian.lora_A["default"].weight.std().item() - 1 / 4) < 0.02
    random = LoRALinear(copy.deepcopy(linear), LoRASettings(r=4, alpha=8, init_lora_weights=False))
    assert random.lora_B["default"].weight.abs().sum() > 0
    assert max_diff(random(x), linear(x)) > 1e-3
    with pytest.raises(ValueError, match="init_lora_weights"):
        LoRALinear(nn.Linear(4, 4), LoRASettings(r=2, alpha=2, init_lora_weights="pissa"))


def test_merge_unmerge_unload_and_disable():
    base = tiny_gpt()
    ids = torch.randint(0, 97, (2, 12))
    originals = {n: p.detach().clone() for n, p in base.named_parameters()}
    requires_grad = {n: p.requires_grad for n, p in base.named_parameters()}
    with torch.no_grad():
        base_logits = base(ids).logits
    model = inject_lora(copy.deepcopy(base), ALL_PROJECTIONS, LoRASettings(r=4, alpha=8, init_lora_weights=False))
    layer = model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        adapted = model(ids).logits
        assert max_diff(adapted, base_logits) > 1e-3
        with disable_adapters(model):
            assert torch.equal(model(ids).logits, base_logits)
        assert torch.equal(model(ids).logits, adapted)

        merge_lora(model)
        assert layer.merged_adapter == "default"
        assert not torch.equal(layer.weight, originals["transformer.h.0.attn.c_attn.weight"])
        assert max_diff(model(ids).logits, adapted) < ATOL
        with disable_adapters(model):  # unmerged for the duration, merged again after
            assert torch.equal(model(ids).logits, base_logits)
        assert layer.merged_adapter == "default"
        unmerge_lora(model)
        assert torch.equal(layer.weight, originals["transformer.h.0.attn.c_attn.weight"])
        assert torch.equal(model(ids).logits, adapted)

        merged = merge_and_unload_lora(copy.deepcopy(model))
        assert not lora.lora_layers(merged) and type(merged.transformer.h[0].attn.c_attn) is type(base.transformer.h[0].attn.c_attn)
        assert max_diff(merged(ids).logits, adapted) < ATOL

        merge_lora(model)  # unload must not fold the adapter in, even from the merged state
        unloaded = unload_lora(model)
    assert unloaded is model and not lora.lora_layers(model) and not hasattr(model, "_hf_llm_lora")
    assert type(model.transformer.h[1].mlp.c_fc) is type(base.transformer.h[1].mlp.c_fc)
    assert set(dict(model.named_parameters())) == set(originals)
    for name, param in model.named_parameters():
        assert torch.equal(param, originals[name]), name
        assert param.requires_grad == requires_grad[name], name
    assert model.lm_head.weight is model.transformer.wte.weight
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base_logits)


def test_two_adapters_only_active_one_trains():
    model = inject_lora(tiny_gpt(), ["c_attn"], LoRASettings(r=4, alpha=8, init_lora_weights=False), adapter_name="first")
    inject_lora(model, ["c_attn", "c_fc"], LoRASettings(r=2, alpha=4, init_lora_weights=False), adapter_name="second")
    assert lora.adapter_names(model) == ["first", "second"]
    layer = model.transformer.h[0].attn.c_attn
    assert set(layer.lora_A) == {"first", "second"} and layer.active_adapter == "second"
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        out_second = model(ids).logits
    set_adapter(model, "first")
    with torch.no_grad():
        out_first = model(ids).logits
    assert max_diff(out_first, out_second) > 1e-3

    model(ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        if ".first." in name:
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name
    # c_fc has only "second": with "first" active it runs as the plain layer.
    c_fc = model.transformer.h[0].mlp.c_fc
    x = torch.randn(3, TINY["n_embd"])
    assert torch.equal(c_fc(x), c_fc.base_layer(x))
    with pytest.raises(ValueError, match="third"):
        set_adapter(model, "third")
    with pytest.raises(ValueError, match="already exists"):
        inject_lora(model, ["c_attn"], LoRASettings(r=2, alpha=4), adapter_name="first")


# --------------------------------------------------------------------------------------------------
# Files: PEFT's format, both ways
# --------------------------------------------------------------------------------------------------


def _batch():
    torch.manual_seed(5)
    return torch.randint(0, 97, (4, 16))


def _train(model, steps, lr=1e-2):
    ids = _batch()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def _assert_adapter_loads_in_peft_stock_and_here(model, base, folder, stock_class, tmp_path):
    """The adapter in `folder` (trained on `model`, a copy of `base`) gives `model`'s outputs when PEFT
    loads it onto `base`, when PEFT loads it onto stock transformers GPT-2 (`stock_class`, Conv1D
    layers) holding the same base weights, and when `load_adapter` loads it back here (frozen)."""
    ids = _batch()
    with torch.no_grad():
        ours = model(ids).logits
        theirs = PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()
        assert max_diff(theirs(ids).logits, ours) < ATOL
        base.save_pretrained(tmp_path / "base")
        stock = stock_class.from_pretrained(tmp_path / "base").eval()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")  # PEFT notes the Conv1D layout
            stock_adapted = PeftModel.from_pretrained(stock, folder).eval()
        assert max_diff(stock_adapted(ids).logits, ours) < 1e-5
        again = load_adapter(copy.deepcopy(base), folder)
        assert torch.equal(again(ids).logits, ours)
    assert trainable_parameters(again)[0] == 0  # loaded for inference, as PEFT does by default


def test_adapter_trained_here_loads_in_peft_and_stock_gpt2(tmp_path):
    base = tiny_gpt()
    model = inject_lora(copy.deepcopy(base), ["c_attn", "c_proj"], LoRASettings(r=4, alpha=8))
    model, losses = _train(model, steps=30)
    assert losses[-1] < losses[0] - 0.2, losses  # 4.57 -> 4.22 with these seeds

    folder = save_adapter(model, tmp_path / "adapter")
    assert sorted(os.listdir(folder)) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (4, 8, ["c_attn", "c_proj"])
    from safetensors import safe_open

    with safe_open(folder / "adapter_model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in keys
    assert "base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight" in keys and len(keys) == 2 * 2 * 3

    _assert_adapter_loads_in_peft_stock_and_here(model, base, folder, GPT2LMHeadModel, tmp_path)


def test_adapter_trained_with_peft_loads_here(tmp_path):
    base = tiny_gpt()
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn", "c_fc"], task_type="CAUSAL_LM")
    theirs, losses = _train(get_peft_model(copy.deepcopy(base), config), steps=5)
    assert losses[-1] < losses[0]
    theirs.save_pretrained(tmp_path / "peft")
    model = load_adapter(copy.deepcopy(base), tmp_path / "peft", is_trainable=True)
    assert trainable_parameters(model) == theirs.get_nb_trainable_parameters()
    ids = _batch()
    with torch.no_grad():
        assert max_diff(model(ids).logits, theirs(ids).logits) < ATOL
        assert max_diff(model(ids).logits, base(ids).logits) > 1e-4


def tiny_reward_model(seed=0) -> GPTForSequenceClassification:
    torch.manual_seed(seed)
    return GPTForSequenceClassification(GPTConfig(**TINY, num_labels=1, pad_token_id=0)).eval()


def _train_scores(model, steps=10, lr=1e-2):
    """A few steps pushing the first sequence's score above the second's (a pairwise loss)."""
    ids = _batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        scores = model(input_ids=ids).logits.squeeze(-1)
        loss = -torch.nn.functional.logsigmoid(scores[0::2] - scores[1::2]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_modules_to_save_train_save_and_load_like_peft(tmp_path):
    """A reward model: LoRA on c_attn plus the score head trained in full and saved with the adapter."""
    base = tiny_reward_model()
    model = inject_lora(copy.deepcopy(base), ["c_attn"], LoRASettings(r=4, alpha=8), modules_to_save=["score"])
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], modules_to_save=["score"], task_type="SEQ_CLS")
    # Same trainable count; PEFT's total also counts its trained copy of the score head.
    peft_counts = get_peft_model(copy.deepcopy(base), peft_config).get_nb_trainable_parameters()
    assert trainable_parameters(model) == (peft_counts[0], peft_counts[1] - base.score.weight.numel())
    model = _train_scores(model)
    assert not torch.equal(model.score.weight, base.score.weight)

    folder = save_adapter(model, tmp_path / "rm", task_type="SEQ_CLS")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["score"]
    from safetensors import safe_open

    with safe_open(folder / "adapter_model.safetensors", "pt") as f:
        assert "base_model.model.score.weight" in set(f.keys()) and len(list(f.keys())) == 2 * 2 + 1

    _assert_adapter_loads_in_peft_stock_and_here(model, base, folder, GPT2ForSequenceClassification, tmp_path)
    ids = _batch()
    # The other way: trained with PEFT (whose SEQ_CLS config also lists "classifier"), loaded here.
    peft_model = _train_scores(get_peft_model(copy.deepcopy(base), peft_config))
    peft_model.save_pretrained(tmp_path / "peft_rm")
    loaded = load_adapter(copy.deepcopy(base), tmp_path / "peft_rm", is_trainable=True)
    assert trainable_parameters(loaded)[0] == peft_model.get_nb_trainable_parameters()[0]
    with torch.no_grad():
        assert max_diff(loaded(ids).logits, peft_model(ids).logits) < ATOL
    with pytest.raises(ValueError, match="modules_to_save .* matches no module"):
        inject_lora(copy.deepcopy(base), ["c_attn"], modules_to_save=["classifier"])


def test_save_is_atomic(tmp_path, monkeypatch):
    model = inject_lora(tiny_gpt(), ["c_attn"], LoRASettings(r=2, alpha=2))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, tmp_path / "adapter")
    assert os.listdir(tmp_path) == []  # no folder, no temporary left behind
    # Into an existing folder: other files stay, a failed save changes nothing.
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "trainer_state.json").write_text("{}")
    with pytest.raises(OSError):
        save_adapter(model, tmp_path / "ckpt")
    assert os.listdir(tmp_path / "ckpt") == ["trainer_state.json"] and os.listdir(tmp_path) == ["ckpt"]
    monkeypatch.undo()
    save_adapter(model, tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["adapter_config.json", "adapter_model.safetensors", "trainer_state.json"]


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_missing_target_names_it_and_lists_linear_layers():
    model = tiny_gpt()
    with pytest.raises(ValueError, match=r"q_proj.*c_attn, c_fc, c_proj, lm_head"):
        inject_lora(model, ["c_attn", "q_proj"], LoRASettings(r=4, alpha=8))
    assert not lora.lora_layers(model)  # nothing was changed
    with pytest.raises(ValueError, match="GPTAttention"):
        inject_lora(model, ["attn"], LoRASettings(r=4, alpha=8))
    with pytest.raises(ValueError, match="not found"):
        inject_lora(model, r"transformer\.h\.\d+\.attn\.q_proj", LoRASettings(r=4, alpha=8))
    # Regex strings must match whole names, as in PEFT.
    inject_lora(model, r"transformer\.h\.1\.mlp\.c_.*", LoRASettings(r=4, alpha=8))
    assert sorted(lora.lora_layers(model)) == ["transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]


def test_load_adapter_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tiny_gpt(), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        load_adapter(tiny_gpt(), tmp_path)


@pytest.mark.parametrize("targets", [ALL_PROJECTIONS, ["c_attn"]])
@pytest.mark.parametrize("backend", ["hf_llm", "peft"])
def test_full_save_of_a_model_with_adapters_injected_loads_back_exactly(tmp_path, backend, targets):
    """What the Trainer writes and reads when it checkpoints and resumes a model whose adapters are
    injected: save_pretrained, then a plain load_state_dict of that file into a fresh injected model."""
    from safetensors.torch import load_file

    def injected(seed):
        model = tiny_gpt(seed)
        if backend == "hf_llm":
            inject_lora(model, target_modules=targets, settings=LoRASettings(r=4, alpha=8, init_lora_weights=False))
            return model
        return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)).base_model.model

    trained, fresh = injected(0), injected(1)
    trained.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    # The model converts only its own weight names to GPT-2's (in, out) layout; a wrapper's stay nn.Linear's.
    assert saved["transformer.h.0.attn.c_attn.base_layer.weight"].shape == (3 * TINY["n_embd"], TINY["n_embd"])
    assert saved["transformer.h.0.attn.c_attn.lora_A.default.weight"].shape == (4, TINY["n_embd"])
    result = fresh.load_state_dict(saved, strict=False)  # as the Trainer does: the tied head is not in the file
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys
    for (name, a), b in zip(trained.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_merge_onto_a_bf16_base_rounds_once_as_peft_does():
    theirs, ours = peft_and_ours(tiny_gpt().to(torch.bfloat16), ALL_PROJECTIONS)
    theirs.merge_adapter()
    merge_lora(ours)
    merged_theirs = {k.removeprefix("base_model.model."): v for k, v in theirs.state_dict().items()}
    for name, weight in ours.state_dict().items():
        if name.endswith("base_layer.weight"):
            assert torch.equal(weight, merged_theirs[name]), name


@pytest.mark.parametrize(
    "setting",
    [
        {"alora_invocation_tokens": [7]},
        {"init_lora_weights": "pissa"},
        {"init_lora_weights": "olora"},
        {"use_bdlora": True},
        {"layers_to_transform": 0},
    ],
    ids=lambda s: next(iter(s)) + "=" + str(next(iter(s.values()))),
)
def test_adapters_using_settings_this_lora_lacks_are_refused(tmp_path, setting):
    """Loading them as plain LoRA would give other outputs than PEFT without any error."""
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], **setting}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=next(iter(setting))):
        load_adapter(tiny_gpt(), tmp_path)


def test_all_linear_on_a_classifier_leaves_its_head_as_peft_does(tmp_path):
    model = tiny_reward_model()
    theirs = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules="all-linear", task_type="SEQ_CLS"))
    peft_targets = {n.removeprefix("base_model.model.").removesuffix(".lora_A") for n, _ in theirs.named_modules() if n.endswith(".lora_A")}
    inject_lora(model, target_modules="ALL-LINEAR", modules_to_save=["score"], settings=LoRASettings(r=2))
    assert set(lora.lora_layers(model)) == peft_targets and "score" not in peft_targets
    save_adapter(model, tmp_path, task_type="SEQ_CLS")
    PeftModel.from_pretrained(tiny_reward_model(), tmp_path)  # loads: no adapter on the head it cannot find


def test_adapter_whose_targets_only_partly_exist_loads_as_in_peft(tmp_path):
    theirs = get_peft_model(tiny_gpt(), LoraConfig(r=2, target_modules=["c_attn", "q_proj"], init_lora_weights=False))
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(tiny_gpt(), tmp_path)
    ids = torch.randint(0, 90, (2, 9))
    with torch.no_grad():
        assert max_diff(ours(ids).logits, theirs.eval()(ids).logits) < ATOL
    with pytest.raises(ValueError, match=r"\['q_proj'\] not found"):
        inject_lora(tiny_gpt(), target_modules=["c_attn", "q_proj"])  # asked for by hand, every target must exist


def test_adapter_initialised_with_eva_loads_as_plain_lora(tmp_path):
    """EVA only initialises A and B (the base weight is untouched), so the saved adapter is plain LoRA."""
    from hf_llm.lora import read_adapter_config

    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "init_lora_weights": "eva"}
    ))
    assert read_adapter_config(tmp_path)["init_lora_weights"] == "eva"
