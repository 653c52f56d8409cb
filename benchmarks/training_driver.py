"""One driver for the training-type benchmarks: a training step of hf_llm's GPT against stock GPT-2,
the step being one of the cases in training_cases.py (pretraining, LoRA SFT, reward model).

    python benchmarks/training_driver.py --case {train,lora,reward} [flags]

bench_train.py, bench_lora.py and bench_reward.py are this with --case preset; `--help` with a case
lists its flags.

Method, the same for every case:

* Same weights, same data. Every contender is loaded from one saved stock checkpoint (see
  contenders.py) and steps on one batch drawn from a seeded generator.
* Equality first. Without dropout, in training mode, each contender's loss and one gradient are
  compared with stock's (unless --no-check).
* Alternating rounds, one process per contender. Each contender lives in its own long-lived process
  (as in a real run: one model per process, the allocator's state its own), warmed up, then stepped
  on request: each round steps every contender once, in an order that flips every round (ours,
  stock / stock, ours / ...), so slow phases of a shared machine hit both alike. Every timed step
  follows `--settle` untimed steps of the same contender (default 3): on a VM that returns freed
  pages to its host, the first steps after a switch re-fault memory the other contender released,
  a cost no real run pays, and it falls hardest on whichever model allocates more.
  `--same-process --settle 0` gives the plain in-process alternation.
* Medians over rounds: wall seconds per step (the headline), process CPU seconds (on a machine
  shared with other jobs wall time includes waiting for a core, CPU time does not), tokens/s (pairs/s
  for the reward case) and GFLOP/s by the case's FLOP rule, against an fp32 matrix-product peak
  probed before and after the rounds.
* Peak step memory in one fresh process per contender, after warm-up steps (probes.py says how).

Why the steps are timed with a clock around each call (probes.measure_call) rather than
torch.utils.benchmark: the rounds alternate between processes, one step per contender per turn, and
each timed step must follow exactly `--settle` steps of its own; a Timer repeats its statement in
blocks of its own choosing, runs its own warm-up calls and reads wall time only, where these rows
also report CPU time. --same-process uses the same clock so that its figures differ from the
worker processes' only in where the contenders live.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch

import contenders
import inprocess_timing
import probes
import report
from contenders import STOCK
from training_cases import CASES, Setting, StepCase

DRIVER = os.path.abspath(__file__)

ARCHS = {
    "small": {"n_embd": 256, "n_layer": 4, "n_head": 4},
    "124m": {"n_embd": 768, "n_layer": 12, "n_head": 12},
}

# AdamW implementations: "fused" is one kernel per parameter group (the Trainer's default optimizer,
# `adamw_torch_fused`, with torch >= 2.8); "for-loop" is torch's default outside the Trainer on CPU
# and allocates several parameter-sized temporaries per step.
OPTIMIZERS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


# --------------------------------------------------------------------------------------------------
# Command line and settings
# --------------------------------------------------------------------------------------------------


def parse_args(case: StepCase, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=inspect.getdoc(case), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch", default=None, choices=[*ARCHS, "all", "custom"],
        help=f"architecture (default {case.default_arch}); --n-embd/--n-layer/--n-head alone mean custom",
    )
    parser.add_argument("--n-embd", type=int, default=None, help="custom architecture (unset sizes are 124M's)")
    parser.add_argument("--n-layer", type=int, default=None)
    parser.add_argument("--n-head", type=int, default=None)
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument(*case.batch_flags, dest="batch", type=int, default=None, metavar="N", help=case.batch_help)
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 256)")
    parser.add_argument("--dropout", type=float, default=None, help="resid/embd/attn dropout (default GPT-2's 0.1)")
    parser.add_argument(
        "--optimizer", default="fused", choices=sorted(OPTIMIZERS),
        help="AdamW implementation (default fused: what transformers' Trainer runs by default)",
    )
    parser.add_argument("--lr", type=float, default=case.lr)
    case.add_arguments(parser)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument(
        "--same-process", action="store_true",
        help="time all contenders in this one process (default: one process each, stepped in turn)",
    )
    parser.add_argument("--settle", type=int, default=3, help="untimed steps a contender makes before each timed one (default 3)")
    contenders.add_contender_args(parser, warmup=None, repeats=None)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)  # set for child processes
    parser.add_argument("--timing-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings(case: StepCase, args) -> list[Setting]:
    """The architectures this run covers, each with its batch, sequence length, warm-up and rounds."""
    custom = {key: getattr(args, key) for key in ("n_embd", "n_layer", "n_head") if getattr(args, key) is not None}
    arch = args.arch or ("custom" if custom else case.default_arch)
    if custom and arch != "custom":
        raise SystemExit(f"--n-embd/--n-layer/--n-head describe a custom architecture, not --arch {arch}")
    resolved = []
    for name in ARCHS if arch == "all" else [arch]:
        dims = {**ARCHS["124m"], **custom} if name == "custom" else ARCHS[name]
        defaults = dataclasses.asdict(case.defaults(name))
        chosen = {key: default if getattr(args, key) is None else getattr(args, key) for key, default in defaults.items()}
        resolved.append(Setting(arch_name=name, arch={**dims, "vocab_size": args.vocab_size}, **chosen))
    return resolved


def child_command(case: StepCase, argv: list[str], setting: Setting, folder: str) -> list[str]:
    """This run's command line for a child process at one setting (without --json)."""
    passed, skip = [], False
    for item in argv:
        if skip or item.startswith("--json="):
            skip = False
            continue
        if item == "--json":
            skip = True
            continue
        passed.append(item)
    return [sys.executable, DRIVER, "--case", case.name, *passed, "--arch", setting.arch_name, "--checkpoint", folder]


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------


def training_step(model, compute_loss: Callable[[], torch.Tensor], lr: float, optimizer: str) -> Callable[[], Any]:
    """A step function: `compute_loss()`, backward, AdamW on the trainable parameters, zero_grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    adamw = torch.optim.AdamW(params, lr=lr, **OPTIMIZERS[optimizer])
    model.train()

    def step():
        loss = compute_loss()
        loss.backward()
        adamw.step()
        adamw.zero_grad(set_to_none=True)
        return loss

    return step


def build_step(case: StepCase, name: str, folder: str, setting: Setting, args, device) -> Callable[[], Any]:
    model = case.load(name, folder, args, device)
    batch = case.make_batch(setting, args, device)
    return training_step(model, lambda: case.loss(model, batch, name, args), args.lr, args.optimizer)


def check_equal(case: StepCase, models: dict[str, Any], batch, args) -> dict[str, dict]:
    """Each contender's loss and checked gradient against stock's, without dropout, in training mode
    (the mode the steps are timed in, and where ours' chunked LM loss runs)."""
    results = {}
    for name, model in models.items():
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.train()
        loss = case.loss(model, batch, name, args)
        loss.backward()
        results[name] = (loss.item(), case.checked_parameter(model).grad.detach().float().clone())
        model.zero_grad(set_to_none=True)
    stock_loss, stock_grad = results[STOCK]
    return {
        name: {"loss_abs_diff": abs(loss - stock_loss), "grad_max_abs_diff": (grad - stock_grad).abs().max().item(),
               "gradient": case.checked_gradient}
        for name, (loss, grad) in results.items() if name != STOCK
    }


# --------------------------------------------------------------------------------------------------
# Child processes: one contender each
# --------------------------------------------------------------------------------------------------


def settled_step_measurement(step: Callable[[], Any], settle: int, device: torch.device) -> dict[str, float]:
    """`settle` untimed steps, then one measured: wall, CPU seconds, minor page faults."""
    for _ in range(settle):
        step()
    return probes.measure_call(step, device)


def serve_timed_steps(step: Callable[[], Any], device: torch.device, warmup: int) -> None:
    """Body of a `--timing-child`: warm up, say "ready", then for each "step SETTLE" line on stdin
    print `settled_step_measurement(step, SETTLE)` as a JSON line."""
    for _ in range(warmup):
        step()
    probes.synchronize(device)
    print("ready", flush=True)
    for line in sys.stdin:
        command, *rest = line.split() or [""]
        if command == "step":
            settle = int(rest[0]) if rest else 0
            print(json.dumps(settled_step_measurement(step, settle, device)), flush=True)


def measure_step_memory(step: Callable[[], Any], device: torch.device, warmup: int) -> None:
    """Body of a `--memory-child`: warm up (so optimizer state exists), measure one step, print JSON."""
    probes.release_freed_memory()
    baseline = probes.resident_kib()
    for _ in range(warmup):
        step()
    print(json.dumps(probes.step_peak_memory_mib(step, device, baseline_kib=baseline)))


class StepWorker:
    """One contender in its own long-lived `--timing-child` process, stepped on request."""

    def __init__(self, command: list[str], name: str):
        self.name = name
        self.proc = subprocess.Popen(
            [*command, "--timing-child", name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self._read_line(lambda line: line == "ready")

    def _read_line(self, wanted: Callable[[str], bool]) -> str:
        for line in self.proc.stdout:
            if wanted(line.strip()):
                return line
        code = self.proc.wait()
        raise RuntimeError(f"timing process for {self.name} ended early (exit {code}); its stderr is above")

    def step(self, settle: int) -> dict[str, float]:
        self.proc.stdin.write(f"step {settle}\n")
        return json.loads(self._read_line(lambda line: line.startswith("{")))

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        self.proc.wait()


def alternate_rounds(turns: dict[str, Callable[[], dict[str, float]]], repeats: int) -> dict[str, dict[str, list]]:
    """`repeats` rounds of one turn per contender, the order flipping every round; each turn returns
    one step's measurement (wall, cpu, minor_faults), collected per contender."""
    names = list(turns)
    times = {name: {} for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            measured = turns[name]()
            for key, value in measured.items():
                times[name].setdefault(key, []).append(value)
            print(f"    round {r + 1}/{repeats} {name:8s} {measured['wall']:8.3f} s wall {measured['cpu']:8.3f} s cpu",
                  file=sys.stderr)
    return times


def time_steps(case, args, argv, setting, folder, names, device) -> dict[str, dict[str, list]]:
    """Alternating timed steps, one worker process per contender (or all here with --same-process)."""
    if args.same_process:
        steps = {name: build_step(case, name, folder, setting, args, device) for name in names}
        for step in steps.values():
            for _ in range(setting.warmup):
                step()
        turns = {name: functools.partial(settled_step_measurement, step, args.settle, device) for name, step in steps.items()}
        return alternate_rounds(turns, setting.repeats)
    workers = {}
    try:
        command = child_command(case, argv, setting, folder)
        for name in names:  # one at a time: a worker warms up while the others wait idle
            workers[name] = StepWorker(command, name)
        turns = {name: (lambda worker=worker: worker.step(args.settle)) for name, worker in workers.items()}
        return alternate_rounds(turns, setting.repeats)
    finally:
        for worker in workers.values():
            worker.close()


def measure_memory(case, argv, setting, folder, names) -> dict[str, dict]:
    """Peak step memory of each contender, each in a fresh `--memory-child` process (on CUDA too:
    one process per model keeps the allocator's state separate)."""
    results = {}
    for name in names:
        proc = subprocess.run([*child_command(case, argv, setting, folder), "--memory-child", name],
                              capture_output=True, text=True)
        line = next((line for line in proc.stdout.splitlines()[::-1] if line.startswith("{")), None)
        if proc.returncode != 0 or line is None:
            sys.stderr.write(proc.stderr[-4000:])
            raise RuntimeError(f"memory measurement for {name} failed (exit {proc.returncode})")
        results[name] = json.loads(line)
    return results


def run_child(case: StepCase, args, device: torch.device) -> None:
    (setting,) = settings(case, args)
    name = args.timing_child or args.memory_child
    step = build_step(case, name, args.checkpoint, setting, args, device)
    if args.timing_child:
        serve_timed_steps(step, device, setting.warmup)
    else:
        measure_step_memory(step, device, case.memory_warmup)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def measure_setting(case, args, argv, setting, names, device) -> dict[str, Any]:
    """Check, time and measure memory at one setting, on a freshly saved reference checkpoint."""
    with contenders.temp_checkpoint_dir() as folder:
        config = contenders.gpt2_config(setting.arch, dropout=args.dropout, **case.config_overrides(args))
        contenders.save_reference_checkpoint(config, case.kind, folder, args.seed)
        batch = case.make_batch(setting, args, device)
        models = {name: case.load(name, folder, args, device) for name in names}
        n_flop = contenders.flop_params(models[STOCK], case.kind)
        trainable = {name: sum(p.numel() for p in m.parameters() if p.requires_grad) for name, m in models.items()}
        check = {} if args.no_check else check_equal(case, models, batch, args)
        del models  # the timed steps load fresh copies, dropout on, wherever they run
        times = time_steps(case, args, argv, setting, folder, names, device)
        memory = {} if args.no_memory else measure_memory(case, argv, setting, folder, names)
    return {
        "arch": setting.arch, "batch": setting.batch, "seq_len": setting.seq_len, "warmup": setting.warmup,
        "repeats": setting.repeats, "settle": args.settle, "items_per_step": case.items_per_step(setting, batch),
        "flop_tokens_per_step": case.flop_tokens(setting, batch), "flop_params_N": n_flop,
        "trainable_params": trainable, "times": times,
        "median_wall_s": {n: report.median(times[n]["wall"]) for n in names},
        "median_cpu_s": {n: report.median(times[n]["cpu"]) for n in names},
        "memory": memory, "check": check,
    }


def setting_rows(case: StepCase, label: str, measured: dict[str, Any], peak_gflops: float) -> list[dict]:
    wall, cpu = measured["median_wall_s"], measured["median_cpu_s"]
    flops = case.flop_factor * measured["flop_params_N"] * measured["flop_tokens_per_step"]
    gflops = {n: flops / wall[n] / 1e9 for n in wall}
    rows = [
        report.row(label, case.throughput_metric, {n: measured["items_per_step"] / wall[n] for n in wall}),
        report.row(label, "step s (wall)", wall),
        report.row(label, "step s (cpu)", cpu),
        report.row(label, "GFLOP/s", gflops),
        report.row(label, "% of matmul peak", {n: 100 * g / peak_gflops for n, g in gflops.items()}),
    ]
    if measured["memory"]:
        rows.append(report.row(label, "peak step MiB", {n: m["peak_step_mib"] for n, m in measured["memory"].items()}))
    return rows


def main(case_name: str, argv: list[str] | None = None) -> None:
    case = CASES[case_name]
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(case, argv)
    contenders.quiet_transformers()
    device = contenders.setup(args)
    if args.timing_child or args.memory_child:
        return run_child(case, args, device)
    names = contenders.contender_names(args)
    dtype = contenders.DTYPES[args.dtype]
    print(f"{case.title(args)}: ours vs stock GPT-2 on {device} {args.dtype}, attn={args.attn}", file=sys.stderr)
    peak_before = inprocess_timing.peak_matmul_gflops(device, dtype)
    measured = {}
    for setting in settings(case, args):
        print(f"  {case.label(setting)}: {setting.arch}", file=sys.stderr)
        measured[case.label(setting)] = measure_setting(case, args, argv, setting, names, device)
    peak_after = inprocess_timing.peak_matmul_gflops(device, dtype)
    peak = report.median([peak_before, peak_after])

    rows = [row for label, m in measured.items() for row in setting_rows(case, label, m, peak)]
    dropout = args.dropout if args.dropout is not None else 0.1
    report.print_table(
        f"{case.title(args)}, {device} {args.dtype}, attn={args.attn}, dropout={dropout}; FLOPs = {case.flop_formula}; "
        f"matmul peak {peak_before:.0f}/{peak_after:.0f} GFLOP/s (before/after)",
        rows, names,
    )
    for label, m in measured.items():
        for name, diff in m["check"].items():
            print(f"  check {label} {name} vs stock: loss diff {diff['loss_abs_diff']:.2e}, "
                  f"{diff['gradient']} grad max diff {diff['grad_max_abs_diff']:.2e}")
    report.write_json(args.json, {
        "benchmark": case.benchmark, "environment": probes.environment(device), "args": vars(args),
        "flop_rule": case.flop_rule, "matmul_peak_gflops": {"before": peak_before, "after": peak_after, "size": 2048},
        "rows": rows, "cases": measured,
    })


if __name__ == "__main__":
    chooser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    chooser.add_argument("--case", required=True, choices=sorted(CASES))
    known, rest = chooser.parse_known_args()
    main(known.case, rest)
