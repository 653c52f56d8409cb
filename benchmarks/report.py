"""Reports: one row per (case, metric) with every contender's value and its ratio to stock, printed as a
table and written as JSON."""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any

from contenders import STOCK


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(value: float, stock: float) -> float:
    return value / stock if stock else float("nan")


def row(case: str, metric: str, values: dict[str, float]) -> dict[str, Any]:
    """A report row: each contender's value and, for each non-stock contender, value / stock."""
    return {
        "case": case,
        "metric": metric,
        "values": values,
        "ratio_to_stock": {name: ratio(value, values[STOCK]) for name, value in values.items() if name != STOCK},
    }


def print_table(title: str, rows: list[dict[str, Any]], names: list[str]) -> None:
    """One line per row: each contender's value, then each non-stock contender / stock."""
    others = [n for n in names if n != STOCK]
    header = ["case", "metric", *names, *[f"{n}/stock" for n in others]]
    lines = [header]
    for entry in rows:
        cells = [entry["case"], entry["metric"]]
        cells += [_format(entry["values"].get(n)) for n in names]
        cells += [_format(entry["ratio_to_stock"].get(n), ratio=True) for n in others]
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    print(f"\n{title}")
    for k, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def _format(value, ratio: bool = False) -> str:
    if value is None:
        return ""
    if ratio:
        return f"{value:.2f}x"
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2, default=float)
    print(f"\nwrote {path}")
