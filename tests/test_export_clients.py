"""Clients that consume GPT-2 checkpoints work on ours as on stock: transformers' ExecuTorch export."""

import torch
from helpers import max_diff, save_stock_lm
from transformers import GenerationConfig

from hf_llm import GPTForCausalLM

from transformers.integrations import executorch


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
