"""The benchmark scripts run end to end on a tiny architecture and write well-formed results.

Timings at this size mean nothing; what is checked is that every script still runs both contenders
(each training-type one in its own processes), reports a positive figure for each, writes its JSON,
and that its built-in equality check between ours and stock holds.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-embd", "32", "--n-layer", "2", "--n-head", "4", "--warmup", "1", "--repeats", "1"]
SCRIPTS = {
    "bench_train.py": ["--arch", "custom", "--vocab-size", "101", "--batch", "2", "--seq-len", "16", "--settle", "0"],
    "bench_lora.py": ["--vocab-size", "101", "--batch", "2", "--seq-len", "16", "--settle", "0", "--no-memory"],
    "bench_reward.py": ["--vocab-size", "101", "--pairs", "2", "--seq-len", "16", "--settle", "0", "--no-memory"],
    "bench_generate.py": ["--batches", "1", "2", "--prompt-len", "8", "--new-tokens", "4"],
}


def _values_named(payload, key):
    """Every value stored under `key` anywhere in the JSON payload."""
    if isinstance(payload, dict):
        for name, value in payload.items():
            if name == key:
                yield value
            yield from _values_named(value, key)
    elif isinstance(payload, list):
        for value in payload:
            yield from _values_named(value, key)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_script_runs_and_checks_equality(script, tmp_path):
    out = tmp_path / "result.json"
    command = [sys.executable, str(ROOT / "benchmarks" / script), *TINY, *SCRIPTS[script], "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["rows"], "no result rows"
    for row in result["rows"]:
        assert set(row["values"]) == {"ours", "stock"} and all(v >= 0 for v in row["values"].values()), row
    speeds = [row for row in result["rows"] if row["metric"].endswith("/s") and "GB" not in row["metric"]]
    assert speeds and all(v > 0 for row in speeds for v in row["values"].values()), speeds
    assert "ours/stock" in done.stdout
    identical = list(_values_named(result, "identical_tokens"))
    loss_diffs = list(_values_named(result, "loss_abs_diff"))
    assert identical or loss_diffs, "the script recorded no equality check"
    assert all(identical) and all(diff < 1e-4 for diff in loss_diffs), (identical, loss_diffs)
