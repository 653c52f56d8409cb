"""torch.compile: a compiled training step and compiled StaticCache decoding equal the eager ones.

Inductor on CPU compiles generated C++, so these need a C++ compiler on the machine.
"""

import shutil
from types import SimpleNamespace

import pytest
import torch
from transformers import GenerationConfig

from hf_llm import GPTConfig, GPTForCausalLM
from hf_llm.training.generation import cache_settings, decoding_compile_config
from hf_llm.training import RecipeError

needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile on CPU (inductor) needs a C++ compiler",
)


def tiny_model(dropout: float = 0.0) -> GPTForCausalLM:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                       resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return GPTForCausalLM(config)


@needs_compiler
def test_compiled_training_step_equals_eager():
    model = tiny_model().train()
    ids = torch.randint(0, 97, (2, 24))
    labels = ids.clone()
    labels[1, :5] = -100

    eager_loss = model(ids, labels=labels).loss
    eager_loss.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    compiled = torch.compile(model)
    loss = compiled(ids, labels=labels).loss
    loss.backward()
    assert abs(loss.item() - eager_loss.item()) < 1e-5
    for name, param in model.named_parameters():
        assert (param.grad - eager_grads[name]).abs().max().item() < 1e-5, name

    # A few optimizer steps through the compiled module keep training (the loss falls).
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        step_loss = compiled(ids, labels=labels).loss
        step_loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss.item())
    assert losses[-1] < losses[0]


@needs_compiler
def test_compiled_static_cache_decoding_gives_the_eager_tokens():
    model = tiny_model().eval()
    prompt = torch.randint(0, 97, (2, 7))
    common = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    eager = model.generate(prompt, generation_config=GenerationConfig(**common, disable_compile=True))
    compiled = model.generate(
        prompt,
        generation_config=GenerationConfig(
            **common, cache_implementation="static", compile_config=decoding_compile_config(model.device)
        ),
    )
    assert torch.equal(eager, compiled)
    assert hasattr(model, "_compiled_call"), "generate did not use a compiled decoding step"


def test_generate_recipe_cache_flags():
    cpu = torch.device("cpu")
    settings = cache_settings(SimpleNamespace(cache_implementation=None, compile=True), cpu)
    assert settings["cache_implementation"] == "static" and settings["compile_config"].fullgraph
    assert cache_settings(SimpleNamespace(cache_implementation="static", compile=False), cpu) == {
        "cache_implementation": "static", "disable_compile": True}
    with pytest.raises(RecipeError, match="cache_implementation static"):
        cache_settings(SimpleNamespace(cache_implementation="dynamic", compile=True), cpu)
    with pytest.raises(RecipeError, match="not known"):
        cache_settings(SimpleNamespace(cache_implementation="paged", compile=False), cpu)


@needs_compiler
def test_pretrain_recipe_with_torch_compile(tmp_path, shared_data):
    from test_recipes import char_pretrain_args, outputs, run_recipe

    out = tmp_path / "compiled"
    run_recipe("pretrain", *char_pretrain_args(out, shared_data), "--sample_max_new_tokens", "4", "--torch_compile", "true")
    result = outputs(out)
    assert result["losses"][-1] < result["losses"][0] - 0.5
    # The saved checkpoint is the plain model (no torch.compile wrapper prefixes in its keys).
    reloaded = GPTForCausalLM.from_pretrained(out)
    assert reloaded.config.n_layer == 2


@needs_compiler
def test_generate_recipe_with_compile_prints_the_eager_text(capsys):
    from test_recipes import run_recipe

    run_recipe("generate", "--prompt", "def add(a, b):", "--max_new_tokens", "10", "--stream", "false")
    eager = capsys.readouterr().out
    run_recipe("generate", "--prompt", "def add(a, b):", "--max_new_tokens", "10", "--stream", "false", "--compile", "true")
    assert capsys.readouterr().out == eager


def test_decoding_compile_config_takes_a_device_or_its_name():
    assert decoding_compile_config("cpu").mode == decoding_compile_config(torch.device("cpu")).mode == "default"
    assert decoding_compile_config("cuda:0").mode == "reduce-overhead"
