"""In-process timing with `torch.utils.benchmark`: alternating rounds of contenders that share one
process (generation and its ablations), and the machine's matrix-product peak and memory-read
bandwidth that achieved GFLOP/s and GB/s are read against.

Every `Timer` here is given this process's thread count: Timer runs on one thread unless told
otherwise, and the contenders must be timed as configured (--threads or torch's choice). Its
default clock synchronises an accelerator when one is present.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import benchmark


def _timer(stmt: str, **names: Any) -> benchmark.Timer:
    return benchmark.Timer(stmt, globals=names, num_threads=torch.get_num_threads())


def alternate_rounds(
    calls: dict[str, Callable[[], Any]], warmup: int, repeats: int, min_run_time: float, log: bool = True
) -> dict[str, dict[str, list[float]]]:
    """Warm each contender up (`warmup` calls), then time `repeats` rounds, each contender once per
    round in an order that flips every round (ours, stock / stock, ours / ...), so slow phases of a
    shared machine hit all alike.

    Each contender's turn is one `blocked_autorange(min_run_time)`: its block-size estimate runs the
    call at least once untimed (so a turn never starts cold after another contender's), then blocks
    of calls run until `min_run_time` seconds are spent; the turn's median seconds per call is
    recorded. Returns, per contender, those per-round medians ("wall") and the calls each timed.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    timers = {name: _timer("call()", call=call) for name, call in calls.items()}
    names = list(calls)
    rounds = {name: {"wall": [], "calls_timed": []} for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            measurement = timers[name].blocked_autorange(min_run_time=min_run_time)
            rounds[name]["wall"].append(measurement.median)
            rounds[name]["calls_timed"].append(measurement.number_per_run * len(measurement.times))
            if log:
                print(f"    round {r + 1}/{repeats} {name:16s} {measurement.median:8.3f} s per call", file=sys.stderr)
    return rounds


def peak_matmul_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048, min_run_time: float = 0.5) -> float:
    """GFLOP/s of a (size x size) @ (size x size) matrix product (2 size^3 FLOPs), median call."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    seconds = _timer("a @ b", a=a, b=b).blocked_autorange(min_run_time=min_run_time).median
    return 2 * size**3 / seconds / 1e9


def read_bandwidth_gbs(device: torch.device, megabytes: int = 512, min_run_time: float = 0.5) -> float:
    """GB/s of summing a `megabytes` float32 tensor, median call: the memory-read roofline that bounds
    batch-1 decoding, where every weight is streamed once per generated token."""
    x = torch.ones(megabytes * 2**20 // 4, device=device)
    seconds = _timer("x.sum()", x=x).blocked_autorange(min_run_time=min_run_time).median
    return x.numel() * 4 / seconds / 1e9
