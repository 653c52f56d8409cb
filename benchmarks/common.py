"""Shared helpers for the side-by-side benchmarks: hf_llm's GPT against stock transformers GPT-2.

Every benchmark script in this folder follows the same recipe, implemented here once:

* Same weights. A stock `GPT2LMHeadModel` (or `GPT2ForSequenceClassification`) is built from a
  `GPT2Config` with a fixed seed and written with `save_pretrained` to a temporary folder; both the
  stock class and hf_llm's class are then loaded from that folder with `from_pretrained`, so the two
  contenders hold identical weights (hf_llm transposes the Conv1D-layout projections on load).
* Same data. Inputs are drawn once from a seeded generator and shared by all contenders.
* Alternating timing. After warm-up, each round runs every contender once; the order flips every
  round (ours, stock / stock, ours / ...), so slow phases of a shared machine hit both alike. The
  reported figure is the median over rounds. Training-type benchmarks keep each contender in its
  own process (as in a real run: one model per process, the allocator's state its own), stepped one
  at a time, and every timed step follows `--settle` untimed steps of the same contender (default
  3): on a VM that returns freed pages to its host, the first steps after a switch re-fault memory
  the other contender released, a cost no real run pays, and it falls hardest on whichever model
  allocates more. `--same-process --settle 0` gives the plain in-process alternation.
  Wall-clock time is the headline; process CPU time (user + system) is recorded as well, because on
  a machine shared with other jobs wall time includes time spent waiting for a core and CPU time
  does not.
* A matrix-product peak measured in the same run (median of several square matmuls, by default
  fp32 2048 x 2048), so achieved GFLOP/s can be read against what this machine delivers right now.
  The peak is probed before and after the timed rounds; both probes are reported.

FLOP rules (stated in every report): N = non-embedding parameters (all parameters except the
token and position embeddings) + the output head's matmul parameters (the LM head, vocab x n_embd,
counts even though it is tied to the token embedding, because it is a real matrix product).
Full training = 6 N per token; LoRA (frozen base, no weight gradients) = 4 N per token; inference =
2 N per generated token (prompt prefill not counted). Attention score FLOPs are ignored.

Process and memory probes (CPU time, page faults, peak memory, environment) are in probes.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import torch

import probes

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

OURS, STOCK, VARIANT = "ours", "stock", "variant"


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser, *, warmup: int, repeats: int, settle: int = 3) -> None:
    """Flags every benchmark accepts."""
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
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="time all contenders in this one process (default: one process each, stepped in turn)",
    )
    parser.add_argument(
        "--settle", type=int, default=settle, help=f"untimed calls a contender makes before each timed one (default {settle})"
    )
    parser.add_argument("--timing-child", default=None, help=argparse.SUPPRESS)


def setup(args) -> torch.device:
    probes.apply_thread_setting(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    if args.attn == "flash_attention_2" and device.type != "cuda":
        raise SystemExit("--attn flash_attention_2 needs --device cuda")
    return device


def contenders(args) -> list[str]:
    return [OURS, STOCK] + ([VARIANT] if args.variant else [])


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
    """Build stock GPT-2 (`kind` "causal_lm" or "seq_cls") with seeded random weights and save it."""
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(seed)
    cls = GPT2LMHeadModel if kind == "causal_lm" else GPT2ForSequenceClassification
    cls(config).save_pretrained(folder)


def load_variant_module(path: str):
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

        return GPT2LMHeadModel if kind == "causal_lm" else GPT2ForSequenceClassification
    if name == OURS:
        from hf_llm import GPTForCausalLM, GPTForSequenceClassification

        return GPTForCausalLM if kind == "causal_lm" else GPTForSequenceClassification
    if name == VARIANT:
        module = load_variant_module(variant_path)
        return module.GPTForCausalLM if kind == "causal_lm" else module.GPTForSequenceClassification
    raise ValueError(name)


def load_model(name: str, kind: str, folder: str, args, device: torch.device):
    cls = model_class(name, kind, getattr(args, "variant", None))
    model = cls.from_pretrained(folder, attn_implementation=args.attn, dtype=DTYPES[args.dtype])
    return model.to(device)


def flop_params(model, kind: str) -> int:
    """N for the FLOP rules: parameters except the embeddings, plus the head's matmul parameters."""
    config = model.config
    # named_parameters lists a tied LM head once, under the embedding's name.
    n = sum(p.numel() for name, p in model.named_parameters() if not name.endswith(("wte.weight", "wpe.weight")))
    if kind == "causal_lm":
        n += config.vocab_size * config.n_embd  # the tied LM head is a real (vocab x n_embd) matmul
    return n


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


def time_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call, synchronised on CUDA."""
    measured = probes.measure_call(fn, device)
    return measured["wall"], measured["cpu"]


def alternate(
    fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int, settle: int = 0,
    log: bool = True,
) -> dict[str, dict[str, list[float]]]:
    """Warm each contender up, then time `repeats` rounds, flipping the order every round; each
    timed call follows `settle` untimed calls of the same contender."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    probes.synchronize(device)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            for _ in range(settle):
                fns[name]()
            wall, cpu = time_call(fns[name], device)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
            if log:
                print(f"    round {r + 1}/{repeats} {name:8s} {wall:8.3f} s wall {cpu:8.3f} s cpu", file=sys.stderr)
    return times


class _StepWorker:
    """One contender in its own long-lived process (`script argv --timing-child NAME`), stepped on request."""

    def __init__(self, script: str, argv: list[str], name: str):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, script, *argv, "--timing-child", name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self._read("ready")

    def _read(self, expect: str) -> str:
        for line in self.proc.stdout:
            line = line.strip()
            if line == expect or (expect == "{" and line.startswith("{")):
                return line
        code = self.proc.wait()
        raise RuntimeError(f"timing process for {self.name} ended early (exit {code}); its stderr is above")

    def step(self, settle: int = 0) -> tuple[float, float]:
        self.proc.stdin.write(f"step {settle}\n")
        result = json.loads(self._read("{"))
        return result["wall"], result["cpu"]

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        self.proc.wait()


def alternate_in_processes(
    script: str, argv: list[str], names: list[str], warmup: int, repeats: int, settle: int = 1, log: bool = True
) -> dict[str, dict[str, list[float]]]:
    """Like `alternate`, but each contender lives in its own process, as in a real training run.

    On CPU the allocator's state is per process: large tensors are mapped and page-faulted afresh
    or reused depending on what ran before, and one contender's frees change the cost of the
    other's allocations. Separate processes, stepped one at a time, keep the alternation (both
    see the same machine load) without that cross-talk. Each timed step follows `settle` untimed
    steps of the same contender: in a VM that hands freed pages back to its host, the first step
    after a switch re-faults memory the other contender released, a cost no real run pays.
    """
    workers = {}
    try:
        for name in names:  # one at a time: a worker warms up while the others wait idle
            workers[name] = _StepWorker(script, [*argv, "--warmup", str(warmup)], name)
        times = {name: {"wall": [], "cpu": []} for name in names}
        for r in range(repeats):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                wall, cpu = workers[name].step(settle)
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
                if log:
                    print(f"    round {r + 1}/{repeats} {name:8s} {wall:8.3f} s wall {cpu:8.3f} s cpu", file=sys.stderr)
        return times
    finally:
        for worker in workers.values():
            worker.close()


def timing_child_main(step_factory: Callable[[], Callable[[], Any]], device: torch.device, warmup: int) -> None:
    """Body of a `--timing-child` process: build, warm up, then time one step per "step" line on stdin."""
    step = step_factory()
    for _ in range(warmup):
        step()
    probes.synchronize(device)
    print("ready", flush=True)
    for line in sys.stdin:
        command, *rest = line.split() or [""]
        if command != "step":
            continue
        for _ in range(int(rest[0]) if rest else 0):
            step()
        wall, cpu = time_call(step, device)
        print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


# AdamW implementations: "fused" is one kernel per parameter group (the Trainer's default optimizer,
# `adamw_torch_fused`, with torch >= 2.8); "for-loop" is torch's default outside the Trainer on CPU
# and allocates several parameter-sized temporaries per step.
OPTIMIZERS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


def add_optimizer_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--optimizer", default="fused", choices=sorted(OPTIMIZERS),
        help="AdamW implementation (default fused: what transformers' Trainer runs by default)",
    )


def training_step(
    model, compute_loss: Callable[[], torch.Tensor], lr: float, optimizer: str = "fused"
) -> Callable[[], torch.Tensor]:
    """A step function: `compute_loss()`, backward, AdamW on the trainable parameters, zero_grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, **OPTIMIZERS[optimizer])
    model.train()

    def step():
        loss = compute_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def time_training_steps(
    args, models: dict[str, Any], make_step: Callable[[Any, str], Callable[[], Any]], script: str,
    child_argv: list[str], device: torch.device, warmup: int, repeats: int,
) -> dict[str, dict[str, list[float]]]:
    """Time one step per contender: in this process with --same-process, else one worker process
    each (`script child_argv --timing-child NAME`). Empties `models` first in either case, so the
    in-process copies are freed before the timed steps or the workers start."""
    names = list(models)
    steps = {name: make_step(model, name) for name, model in models.items()} if args.same_process else None
    models.clear()
    if steps is not None:
        return alternate(steps, device, warmup, repeats, settle=args.settle)
    return alternate_in_processes(script, child_argv, names, warmup, repeats, settle=args.settle)


def child_main(args, step_factory: Callable[[str], Callable[[], Any]], device: torch.device,
               memory_warmup: int, timing_warmup: int) -> None:
    """Body of a `--memory-child` or `--timing-child` process; `step_factory(name)` builds its step."""
    name = args.memory_child or args.timing_child
    if args.memory_child:
        memory_child_main(lambda: step_factory(name), device, warmup=memory_warmup)
    else:
        timing_child_main(lambda: step_factory(name), device, warmup=timing_warmup)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def peak_matmul_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 7) -> float:
    """Median GFLOP/s of a (size x size) @ (size x size) matrix product: 2 size^3 FLOPs each."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    for _ in range(2):
        a @ b
    rates = []
    for _ in range(repeats):
        wall, _ = time_call(lambda: a @ b, device)
        rates.append(2 * size**3 / wall / 1e9)
    return median(rates)


def read_bandwidth_gbs(device: torch.device, megabytes: int = 512, repeats: int = 7) -> float:
    """Median GB/s of summing a `megabytes` float32 tensor: the memory-read roofline that bounds
    batch-1 decoding, where every weight is streamed once per generated token."""
    x = torch.ones(megabytes * 2**20 // 4, device=device)
    x.sum()
    rates = []
    for _ in range(repeats):
        wall, _ = time_call(lambda: x.sum(), device)
        rates.append(x.numel() * 4 / wall / 1e9)
    return median(rates)


# --------------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------------


def run_memory_children(script: str, argv: list[str], names: list[str], device: torch.device) -> dict[str, dict]:
    """Run `script argv --memory-child NAME` in a fresh process per contender; collect their JSON.

    On CUDA the children run too (one process per model keeps the allocator's state separate).
    """
    results = {}
    for name in names:
        cmd = [sys.executable, script, *argv, "--memory-child", name]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines()[::-1] if l.startswith("{")), None)
        if proc.returncode != 0 or line is None:
            sys.stderr.write(proc.stderr[-4000:])
            raise RuntimeError(f"memory measurement for {name} failed (exit {proc.returncode})")
        results[name] = json.loads(line)
    return results


def passthrough_argv(argv: list[str] | None, extra: list[str]) -> list[str]:
    """This process's flags (without --json) plus `extra`, for a memory child of the same script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--json":
            skip = True
            continue
        if item.startswith("--json="):
            continue
        out.append(item)
    return out + extra


def memory_child_main(step_factory: Callable[[], Callable[[], Any]], device: torch.device, warmup: int) -> None:
    """Body of a `--memory-child` process: build, warm up, measure one step, print JSON."""
    step = step_factory()
    probes.release_freed_memory()
    baseline = probes.resident_kib()
    for _ in range(warmup):
        step()
    result = probes.step_peak_memory_mib(step, device, baseline_kib=baseline)
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------


def ratio(ours: float, stock: float) -> float:
    return ours / stock if stock else float("nan")


def print_table(title: str, rows: list[dict[str, Any]], names: list[str]) -> None:
    """One line per metric: each contender's value, then each non-stock contender / stock."""
    others = [n for n in names if n != STOCK]
    header = ["case", "metric", *names, *[f"{n}/stock" for n in others]]
    lines = [header]
    for row in rows:
        values = row["values"]
        cells = [row["case"], row["metric"]]
        cells += [_fmt(values.get(n)) for n in names]
        cells += [_fmt(ratio(values[n], values[STOCK]), ratio=True) if n in values else "" for n in others]
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    print(f"\n{title}")
    for k, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value, ratio: bool = False) -> str:
    if value is None:
        return ""
    if ratio:
        return f"{value:.2f}x"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2, default=float)
    print(f"\nwrote {path}")


def temp_checkpoint_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="hf_llm_bench_")


def quiet_transformers() -> None:
    """Silence load-time chatter (missing attention buffers, loss_type notices) in benchmark output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import warnings

    warnings.filterwarnings("ignore")
