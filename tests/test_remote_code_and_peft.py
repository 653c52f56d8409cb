"""Checkpoints load as Hub remote code without hf_llm; pipelines and PEFT work on our model."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import max_diff
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import GPT2LMHeadModel, pipeline

from hf_llm import GPTConfig, GPTForCausalLM

REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["hf_llm"] = None  # any `import hf_llm` now raises ImportError
    import json, torch
    from transformers import AutoModelForCausalLM
    try:
        import hf_llm  # noqa: F401
        raise SystemExit("hf_llm is importable: the test would prove nothing")
    except ImportError:
        pass
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    ids = torch.tensor([[5, 17, 42, 3, 99]])
    with torch.no_grad():
        logits = model(ids).logits
    generated = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=100)
    print(json.dumps({"class": type(model).__name__, "module": type(model).__module__,
                      "logits": logits[0, -1].tolist(), "generated": generated[0].tolist()}))
    """
)


def test_remote_code_loads_in_a_process_without_hf_llm(tmp_path):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=100, eos_token_id=100)
    model = GPTForCausalLM(config).eval()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")  # a fresh copy of the remote code
    result = subprocess.run(
        [sys.executable, str(script), str(checkpoint)], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["class"] == "GPTForCausalLM"
    assert report["module"].startswith("transformers_modules"), report["module"]
    ids = torch.tensor([[5, 17, 42, 3, 99]])
    with torch.no_grad():
        assert max_diff(torch.tensor(report["logits"]), model(ids).logits[0, -1]) < 1e-5
    expected = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=100)
    assert report["generated"] == expected[0].tolist()


NO_PROMPT_SCRIPT = textwrap.dedent(
    """
    import builtins, sys
    sys.modules["hf_llm"] = None  # any `import hf_llm` now raises ImportError

    def refuse_prompt(*args, **kwargs):
        raise SystemExit("prompted: " + str(args[0] if args else ""))

    builtins.input = refuse_prompt  # transformers asks "run the custom code? [y/N]" through input()
    import json, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
    ids = tokenizer("Hello, world", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    print(json.dumps({"model": type(model).__name__, "ids": ids[0].tolist(), "logits": logits[0, -1].tolist()}))
    """
)


def test_saved_folder_loads_with_its_tokenizer_without_hf_llm_or_a_prompt(tmp_path, shared_data):
    from transformers import GPT2Tokenizer

    tokenizer = GPT2Tokenizer.from_pretrained(shared_data / "gpt2-tokenizer")
    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig(n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    model.save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    script = tmp_path / "load_plain.py"
    script.write_text(NO_PROMPT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "checkpoint")], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"] == "GPT2LMHeadModel"
    ids = tokenizer("Hello, world", return_tensors="pt").input_ids
    assert report["ids"] == ids[0].tolist()
    with torch.no_grad():
        assert max_diff(torch.tensor(report["logits"]), model(ids).logits[0, -1]) < 1e-5


def test_text_generation_pipeline(tmp_path, shared_data):
    from transformers import GPT2Tokenizer

    tokenizer = GPT2Tokenizer.from_pretrained(shared_data / "gpt2-tokenizer")
    config = GPTConfig(n_positions=128, n_embd=32, n_layer=2, n_head=4)
    GPTForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=GPTForCausalLM.from_pretrained(tmp_path), tokenizer=str(tmp_path))
    assert type(generator.model) is GPTForCausalLM
    out = generator("What is the capital of China?", max_new_tokens=8, do_sample=False)
    text = out[0]["generated_text"]
    assert text.startswith("What is the capital of China?") and len(text) > len("What is the capital of China?")


# --- PEFT ---------------------------------------------------------------------------------------


def _tiny_lm(seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=100, eos_token_id=100, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return GPTForCausalLM(config)


def test_peft_lora_trains_saves_and_loads_onto_stock(tmp_path):
    base = _tiny_lm()
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "c_attn" in n for n in trainable)

    torch.manual_seed(1)
    data = torch.randint(0, 100, (8, 24))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for step in range(20):
        batch = data[(step % 4) * 2 : (step % 4) * 2 + 2]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses

    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        expected = model(input_ids=ids).logits

        # Reload onto our model.
        reloaded = PeftModel.from_pretrained(GPTForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
        assert max_diff(reloaded(input_ids=ids).logits, expected) < 1e-6

        # The same adapter folder onto stock GPT-2 holding the same base weights.
        stock = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
        assert max_diff(stock(input_ids=ids).logits, expected) < 1e-5

        # And the adapter really changes the outputs.
        with reloaded.disable_adapter():
            assert max_diff(reloaded(input_ids=ids).logits, expected) > 1e-3


@pytest.mark.parametrize("targets", [["c_attn"], ["c_attn", "c_proj", "c_fc"]])
def test_peft_target_names_match_stock_gpt2(targets):
    ours = get_peft_model(_tiny_lm(), LoraConfig(r=2, target_modules=targets))
    from transformers import GPT2Config

    stock_config = GPT2Config(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    stock = get_peft_model(GPT2LMHeadModel(stock_config), LoraConfig(r=2, target_modules=targets, fan_in_fan_out=True))
    names = lambda m: sorted(n for n, _ in m.named_parameters() if "lora_" in n)  # noqa: E731
    assert names(ours) == names(stock)
    shapes = lambda m: [p.shape for n, p in sorted(m.named_parameters()) if "lora_" in n]  # noqa: E731
    assert shapes(ours) == shapes(stock)


def test_peft_lora_on_the_lm_head_takes_part_in_the_training_loss():
    """The training-mode loss must run the head's own forward when PEFT wraps it, not just read its weight."""
    model = get_peft_model(
        _tiny_lm(), LoraConfig(r=4, target_modules=["c_attn", "lm_head"], lora_dropout=0.0, init_lora_weights=False)
    )
    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        eval_loss = model.eval()(input_ids=ids, labels=ids).loss
    train_loss = model.train()(input_ids=ids, labels=ids).loss
    assert abs(train_loss.item() - eval_loss.item()) < 1e-5
    train_loss.backward()
    head = model.base_model.model.lm_head
    assert head.lora_B["default"].weight.grad is not None and head.lora_B["default"].weight.grad.abs().sum() > 0


def test_training_loss_runs_forward_hooks_on_the_lm_head():
    model = _tiny_lm().train()
    ids = torch.randint(0, 100, (2, 12))
    plain = model(input_ids=ids, labels=ids).loss
    handle = model.lm_head.register_forward_hook(lambda module, args, output: output * 2.0)
    try:
        hooked = model(input_ids=ids, labels=ids).loss
        with torch.no_grad():
            expected = model.eval()(input_ids=ids, labels=ids).loss
    finally:
        handle.remove()
    assert abs(hooked.item() - expected.item()) < 1e-5
    assert abs(hooked.item() - plain.item()) > 1e-3
