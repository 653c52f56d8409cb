"""What the benchmarks read from the process and the machine: CPU time, page faults, peak memory,
thread settings and the environment a report was measured in.

Peak memory. On CUDA: `torch.cuda.max_memory_allocated()` minus the allocation before the step
(after `reset_peak_memory_stats`). On CPU there is no allocator counter for torch's CPU tensors, so
the process's resident set is used: Linux lets a process reset its own high-water mark VmHWM by
writing "5" to /proc/self/clear_refs. Before the step, garbage is collected and glibc is asked to
return freed heap pages to the OS (`malloc_trim(0)`), so the resident set is what is live (weights,
gradients of the previous step are already freed, optimizer state); then VmHWM is reset, VmRSS is
read as the baseline, the step runs, and peak growth = VmHWM - baseline. The figure is thus "extra
resident memory the step needed on top of what was already live": activations, gradients, logits,
optimizer temporaries. Where clear_refs is not writable, the fallback is the process's ru_maxrss
minus its resident set before the first step, which then also includes optimizer state.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def apply_thread_setting(threads: int | None) -> None:
    """`torch.set_num_threads(threads)` when given; None leaves torch's own choice."""
    if threads:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# Process counters
# --------------------------------------------------------------------------------------------------


def _process_usage() -> tuple[float, int]:
    """(CPU seconds, user + system, and minor page faults) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def measure_call(fn: Callable[[], Any], device: torch.device) -> dict[str, float]:
    """Wall seconds, process CPU seconds and minor page faults of one call, synchronised on CUDA.

    CPU time is recorded beside wall time because on a machine shared with other jobs wall time
    includes waiting for a core and CPU time does not; page faults show the cost of memory freshly
    mapped (on VMs that return freed pages to the host, the first steps after a switch re-fault).
    """
    synchronize(device)
    cpu_before, faults_before = _process_usage()
    wall_before = time.perf_counter()
    fn()
    synchronize(device)
    wall = time.perf_counter() - wall_before
    cpu_after, faults_after = _process_usage()
    return {"wall": wall, "cpu": cpu_after - cpu_before, "minor_faults": faults_after - faults_before}


# --------------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def resident_kib() -> int | None:
    """This process's resident set (VmRSS), KiB; None where /proc is not readable."""
    return _proc_status_kib("VmRSS")


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so the resident set is what is live."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def step_peak_memory_mib(step: Callable[[], Any], device: torch.device, baseline_kib: int | None = None) -> dict:
    """Extra memory one call of `step` needs on top of what is live before it (see the module docstring).

    `baseline_kib` is the resident set before the first step, used only by the ru_maxrss fallback.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_step_mib": (peak - before) / 2**20, "method": "cuda max_memory_allocated"}
    release_freed_memory()
    if _reset_high_water_mark():
        before = resident_kib()
        step()
        peak = _proc_status_kib("VmHWM")
        return {
            "peak_step_mib": (peak - before) / 1024,
            "baseline_rss_mib": before / 1024,
            "method": "VmHWM reset via /proc/self/clear_refs, minus VmRSS before the step",
        }
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "peak_step_mib": (peak - (baseline_kib or 0)) / 1024,
        "method": "ru_maxrss minus RSS before the first step (includes optimizer state)",
    }


# --------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, thread count and hardware a report was measured with."""
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
