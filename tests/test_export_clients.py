"""Clients that consume GPT-2 checkpoints work on ours as on stock: torch.export, transformers' ExecuTorch
export, EleutherAI's lm-evaluation-harness (lm-eval) on the model object and on a folder we save, and
llama.cpp's GGUF converter on our `export_to_gpt2` folder.

llama.cpp publishes its GGUF converter (`convert_hf_to_gguf.py`) in no package; `.ci/gguf-converter`
fetches it into a cache folder outside the clone and prints its path, and the test reads that path from
`$HF_LLM_GGUF_CONVERTER`, which `.ci/run` always sets. Without it the test is skipped outside CI (the
reason says how to get the converter) and fails in CI. The converter runs on the test's own Python,
offline, and its `gguf-py` reads the files back.
"""

import filecmp
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import max_diff, save_stock_lm
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from transformers import GenerationConfig, GPT2LMHeadModel

from hf_llm import GPTForCausalLM, load_gpt2_tokenizer
from hf_llm.export import main as export_main

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


# --- llama.cpp's GGUF converter ---------------------------------------------------------------------

GGUF_CONVERTER = "HF_LLM_GGUF_CONVERTER"


def _gguf_converter() -> Path:
    path = os.environ.get(GGUF_CONVERTER)
    fetch = f'export {GGUF_CONVERTER}="$(bash .ci/gguf-converter)" fetches llama.cpp\'s convert_hf_to_gguf.py'
    if not path:
        if os.environ.get("CI"):
            pytest.fail(f"{GGUF_CONVERTER} is not set; .ci/run sets it ({fetch})")
        pytest.skip(f"{GGUF_CONVERTER} is not set: {fetch} (CI always sets it)")
    if not Path(path).is_file():
        pytest.fail(f"{GGUF_CONVERTER}={path} is not a file; {fetch}")
    return Path(path)


def _run_converter(converter: Path, folder: Path):
    out = folder.parent / f"{folder.name}.gguf"
    # general.name would otherwise come from the folder's name, the one field that may differ.
    command = [sys.executable, str(converter), str(folder), "--outfile", str(out), "--outtype", "f32", "--model-name", "gpt2"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300), out


def _convert_to_gguf(converter: Path, folder: Path) -> Path:
    done, out = _run_converter(converter, folder)
    assert done.returncode == 0, f"convert_hf_to_gguf.py {folder.name}:\n" + (done.stdout + done.stderr)[-3000:]
    return out


def _read_gguf(path: Path):
    """(metadata, tensors): every key-value field, and each tensor's (type, shape, values), in file order."""
    import gguf  # llama.cpp's gguf-py, from beside the converter

    reader = gguf.GGUFReader(path)
    metadata = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {t.name: (t.tensor_type, [int(n) for n in t.shape], np.asarray(t.data)) for t in reader.tensors}
    return metadata, tensors


def _gguf_differences(path: Path, reference: Path) -> str:
    (metadata, tensors), (ref_metadata, ref_tensors) = _read_gguf(path), _read_gguf(reference)
    fields = {
        k: (repr(metadata.get(k))[:200], repr(ref_metadata.get(k))[:200])
        for k in sorted(metadata.keys() | ref_metadata.keys()) if metadata.get(k) != ref_metadata.get(k)
    }
    unequal = sorted(
        n for n in tensors.keys() | ref_tensors.keys()
        if n not in tensors or n not in ref_tensors or tensors[n][:2] != ref_tensors[n][:2]
        or not np.array_equal(tensors[n][2], ref_tensors[n][2])
    )
    return (
        f"{path.name} differs from {reference.name}: fields (ours, stock) {fields}; tensors differing or missing on "
        f"one side {unequal}; same tensor order: {list(tensors) == list(ref_tensors)}"
    )


def test_llama_cpp_converts_our_gpt2_export_as_it_converts_stock_gpt2(tmp_path, shared_data, monkeypatch):
    converter = _gguf_converter()
    monkeypatch.syspath_prepend(str(converter.parent / "gguf-py"))
    # The converter recognises a tokenizer by hashing how it tokenizes a fixed text: the real GPT-2 vocabulary.
    tokenizer = load_gpt2_tokenizer(shared_data / "gpt2-tokenizer")
    eos = tokenizer.eos_token_id
    # A model trained from scratch (transformers 5 writes no n_ctx for it), loaded and saved by ours,
    # then exported with the README's command.
    stock = save_stock_lm(tmp_path / "trained", vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos)
    GPTForCausalLM.from_pretrained(tmp_path / "trained").save_pretrained(tmp_path / "ours")
    tokenizer.save_pretrained(tmp_path / "ours")
    export_main([str(tmp_path / "ours"), str(tmp_path / "export")])
    # The same weights saved as stock GPT-2 is on the Hub, its config.json with n_ctx.
    stock.config.n_ctx = stock.config.n_positions
    stock.save_pretrained(tmp_path / "stock")
    tokenizer.save_pretrained(tmp_path / "stock")

    ours_gguf = _convert_to_gguf(converter, tmp_path / "export")
    stock_gguf = _convert_to_gguf(converter, tmp_path / "stock")
    # The same file, byte for byte: every field, every tensor's name, type, shape and values, in the same order.
    assert filecmp.cmp(ours_gguf, stock_gguf, shallow=False), _gguf_differences(ours_gguf, stock_gguf)
    # And it is GPT-2 with this model's context, vocabulary and weights.
    metadata, tensors = _read_gguf(ours_gguf)
    assert metadata["general.architecture"] == "gpt2"
    assert metadata["gpt2.context_length"] == stock.config.n_positions
    assert metadata["gpt2.block_count"] == stock.config.n_layer
    assert (metadata["tokenizer.ggml.model"], metadata["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert metadata["tokenizer.ggml.tokens"] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert metadata["tokenizer.ggml.eos_token_id"] == eos
    assert np.array_equal(tensors["token_embd.weight"][2], stock.transformer.wte.weight.detach().numpy())

    # A folder saved by ours names GPTForCausalLM in `architectures`, which the converter refuses: hence the export.
    refused, _ = _run_converter(converter, tmp_path / "ours")
    assert refused.returncode != 0 and "Model GPTForCausalLM is not supported" in refused.stdout + refused.stderr
