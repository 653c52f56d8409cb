"""Every benchmark entry point runs end to end on a tiny architecture and reports what it claims.

Timings at this size mean nothing and none is asserted; what is checked is that each entry point
still times every contender (the training-type ones in their own processes, or in one with
--same-process), reports each metric for each contender with a positive, finite ratio to stock,
records the rounds it was asked for, writes its JSON, and that its built-in equality check between
ours and stock holds (loss and gradient, or identical generated tokens).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-embd", "32", "--n-layer", "2", "--n-head", "4", "--warmup", "1", "--repeats", "2"]
TINY_STEP = [*TINY, "--vocab-size", "101", "--seq-len", "16", "--settle", "0"]
STEP_METRICS = ["step s (wall)", "step s (cpu)", "GFLOP/s", "% of matmul peak"]
GENERATE_METRICS = ["new tokens/s", "GFLOP/s", "weight GB/s", "% of read bandwidth"]

# entry point and its flags -> (contenders, metrics every case reports)
RUNS = {
    "train": (
        ["bench_train.py", *TINY_STEP, "--batch", "2"],
        ["ours", "stock"], ["tokens/s", *STEP_METRICS, "peak step MiB"],
    ),
    "lora": (
        ["bench_lora.py", *TINY_STEP, "--batch", "2", "--no-memory"],
        ["ours", "stock"], ["tokens/s", *STEP_METRICS],
    ),
    "reward": (
        ["bench_reward.py", *TINY_STEP, "--pairs", "2", "--no-memory"],
        ["ours", "stock"], ["pairs/s", *STEP_METRICS],
    ),
    # The driver itself, all contenders in one process, a modified modeling file as a third
    # contender (here an unmodified copy), and ours on TRL's fused LM head.
    "driver-same-process": (
        ["training_driver.py", "--case", "train", *TINY_STEP, "--batch", "2", "--no-memory", "--same-process",
         "--lm-loss", "trl-fused", "--variant", str(ROOT / "hf_llm" / "models" / "gpt" / "modeling_gpt.py")],
        ["ours", "stock", "variant"], ["tokens/s", *STEP_METRICS],
    ),
    "generate": (
        ["bench_generate.py", *TINY, "--batches", "1", "2", "--prompt-len", "8", "--new-tokens", "4",
         "--ablate", "few_rows", "--min-run-time", "0.05"],
        ["ours", "stock", "ours-no-few_rows"], GENERATE_METRICS,
    ),
}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_benchmark_entry_point_reports_ratios_and_checks_equality(run, tmp_path):
    (script, *flags), names, metrics = RUNS[run]
    out = tmp_path / "result.json"
    command = [sys.executable, str(ROOT / "benchmarks" / script), *flags, "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    others = [name for name in names if name != "stock"]
    assert "/stock" in done.stdout  # the printed table has its ratio columns

    by_case = {}
    for row in result["rows"]:
        by_case.setdefault(row["case"], []).append(row["metric"])
        assert sorted(row["values"]) == sorted(names), row
        assert all(math.isfinite(v) and v >= 0 for v in row["values"].values()), row
        assert sorted(row["ratio_to_stock"]) == sorted(others), row
        if row["metric"] != "peak step MiB":  # a tiny step's extra memory may round to nothing
            assert all(math.isfinite(r) and r > 0 for r in row["ratio_to_stock"].values()), row
    assert sorted(by_case) == sorted(result["cases"])
    for case_metrics in by_case.values():
        assert sorted(case_metrics) == sorted(metrics)

    for label, case in result["cases"].items():
        for name in names:
            assert len(case["times"][name]["wall"]) == 2, (label, case["times"])  # one per round (--repeats 2)
        assert sorted(case["median_wall_s"]) == sorted(names)
        if "identical_tokens_by_contender" in case:
            assert case["identical_tokens_by_contender"] == {name: True for name in others}, (label, case)
        else:
            assert sorted(case["check"]) == sorted(others), (label, case["check"])
            for diff in case["check"].values():
                assert diff["loss_abs_diff"] < 1e-4 and diff["grad_max_abs_diff"] < 1e-4, (label, diff)
