"""The contenders every benchmark compares, on identical weights: hf_llm's GPT ("ours"), stock
transformers GPT-2 ("stock") and, optionally, a modified copy of modeling_gpt.py ("variant").

Same weights: a stock `GPT2LMHeadModel` (or `GPT2ForSequenceClassification`) is built from a
`GPT2Config` with a fixed seed and written with `save_pretrained` to a temporary folder; every
contender is then loaded from that folder with `from_pretrained` (hf_llm transposes the
Conv1D-layout projections on load), so all hold identical weights.

FLOP rule shared by the reports: N = non-embedding parameters (all parameters except the token and
position embeddings) + the output head's matmul parameters (the LM head, vocab x n_embd, counts
even though it is tied to the token embedding, because it is a real matrix product). Attention
score FLOPs are ignored.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from typing import Any

import torch

import probes

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

OURS, STOCK, VARIANT = "ours", "stock", "variant"
CAUSAL_LM, SEQ_CLS = "causal_lm", "seq_cls"  # which head the contenders carry


def add_contender_args(parser: argparse.ArgumentParser, *, warmup: int | None, repeats: int | None) -> None:
    """Flags every benchmark accepts: device and dtype, the contenders, rounds, output."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weights/compute dtype")
    parser.add_argument(
        "--attn", default="sdpa", help="attention implementation for both models: eager, sdpa, flash_attention_2"
    )
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls per contender before timing")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds (each contender once per round)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON here")
    parser.add_argument(
        "--variant",
        default=None,
        metavar="MODELING_PY",
        help="a modified copy of hf_llm/models/gpt/modeling_gpt.py to time as a third contender "
        "(for trying changes without touching the package)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the ours-equals-stock output check")


def setup(args) -> torch.device:
    """Apply --threads and validate --device/--attn; returns the device."""
    probes.apply_thread_setting(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    if args.attn == "flash_attention_2" and device.type != "cuda":
        raise SystemExit("--attn flash_attention_2 needs --device cuda")
    return device


def contender_names(args) -> list[str]:
    return [OURS, STOCK] + ([VARIANT] if args.variant else [])


def quiet_transformers() -> None:
    """Silence load-time chatter (missing attention buffers, loss_type notices) in benchmark output."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


# --------------------------------------------------------------------------------------------------
# Models with identical weights
# --------------------------------------------------------------------------------------------------


def gpt2_config(arch: dict[str, Any], dropout: float | None = None, **extra):
    """A stock `GPT2Config` for `arch` (n_embd, n_layer, n_head, optionally vocab_size, n_positions)."""
    from transformers import GPT2Config

    kwargs = dict(arch)
    if dropout is not None:
        kwargs.update(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    kwargs.update(extra)
    return GPT2Config(**kwargs)


def save_reference_checkpoint(config, kind: str, folder: str, seed: int) -> None:
    """Build stock GPT-2 with head `kind` and seeded random weights, and save it to `folder`."""
    torch.manual_seed(seed)
    model_class(STOCK, kind)(config).save_pretrained(folder)


def temp_checkpoint_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="hf_llm_bench_")


def _load_variant_module(path: str):
    """Import a modified copy of modeling_gpt.py as `hf_llm.models.gpt._bench_variant`.

    It is placed inside the hf_llm.models.gpt package so its relative import of the config works.
    """
    name = "hf_llm.models.gpt._bench_variant"
    if name in sys.modules:
        return sys.modules[name]
    import hf_llm.models.gpt  # noqa: F401  (the parent package must exist)

    spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def model_class(name: str, kind: str, variant_path: str | None = None):
    if name == STOCK:
        from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

        return GPT2LMHeadModel if kind == CAUSAL_LM else GPT2ForSequenceClassification
    if name == OURS:
        from hf_llm import GPTForCausalLM, GPTForSequenceClassification

        return GPTForCausalLM if kind == CAUSAL_LM else GPTForSequenceClassification
    if name == VARIANT:
        module = _load_variant_module(variant_path)
        return module.GPTForCausalLM if kind == CAUSAL_LM else module.GPTForSequenceClassification
    raise ValueError(name)


def load_model(name: str, kind: str, folder: str, args, device: torch.device):
    cls = model_class(name, kind, getattr(args, "variant", None))
    model = cls.from_pretrained(folder, attn_implementation=args.attn, dtype=DTYPES[args.dtype])
    return model.to(device)


def flop_params(model, kind: str) -> int:
    """N for the FLOP rule: parameters except the embeddings, plus the head's matmul parameters."""
    config = model.config
    # named_parameters lists a tied LM head once, under the embedding's name.
    n = sum(p.numel() for name, p in model.named_parameters() if not name.endswith(("wte.weight", "wpe.weight")))
    if kind == CAUSAL_LM:
        n += config.vocab_size * config.n_embd  # the tied LM head is a real (vocab x n_embd) matmul
    return n
