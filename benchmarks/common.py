"""Shared benchmark plumbing: timing, machine description, JSON results, one printed table."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vitlib.files import atomic_write
from vitlib.runs import machine_info, versions

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], *, device: str, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `fn()` in seconds over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_side_by_side(
    fns: dict[str, Callable[[], Any]], *, device: str, repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each fn, runs interleaved (order rotating each round) so
    drift and cache effects hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        # rotate the order each round, so no variant always runs first or after another
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[name]
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak_flops(device: str, dtype: torch.dtype = torch.float32, n: int = 3072) -> float:
    """Measured FLOP/s of a large square matmul into a preallocated output (no allocation or
    page faults timed), best of 10: the machine's practical ceiling."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(10):
        sync(device)
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write benchmarks/results/<name>.json atomically, with the machine description."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {
        "machine": machine_info(),
        "versions": versions(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        **result,
    }
    atomic_write(path, json.dumps(payload, indent=2, default=str))
    return path


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table of `rows` (dicts) with the given columns."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
