"""`make bench`: every benchmark in one run, then one table of the targets.

    python -m benchmarks [--quick] [--only model,data,train,attention,report,gpu]

Each module writes its own benchmarks/results/<name>.json; this prints the headline numbers
against their targets. Benchmarks measure: they never fail a test run.
"""

from __future__ import annotations

import argparse
import importlib
import time
from typing import Any

from benchmarks.common import format_table, write_result

MODULES = ("model", "data", "train", "attention", "report", "gpu")


def headline(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The numbers the targets are about, one row each, with the absolute figures behind them."""
    rows = []

    def add(
        measure: str, value: float | None, target: str, met: bool | None, detail: str = ""
    ) -> None:
        rows.append(
            {
                "measure": measure,
                "value": value,
                "target": target,
                "met": "-" if met is None else ("yes" if met else "NO"),
                "detail": detail,
            }
        )

    for row in results.get("model", {}).get("rows", []):
        name = f"{row['arch']} {row['device']}"
        for mode, label in (("infer", "inference"), ("train", "fwd+bwd")):
            ratio = row[f"{mode}_ratio"]
            q1, q3 = row[f"{mode}_ratio_quartiles_by_round"]
            add(
                f"{name}: {label} vitlib/timm",
                ratio,
                ">= 1.00",
                ratio >= 1.0,
                f"{row[f'{mode}_img_s_vitlib']:.1f} vs {row[f'{mode}_img_s_timm']:.1f} img/s, "
                f"batch {row[f'batch_{mode}']}; by round {q1:.2f}-{q3:.2f}",
            )
        add(
            f"{name}: return_attention slowdown",
            row["attention_capture_slowdown"],
            "<= 1.3",
            row["attention_capture_slowdown"] <= 1.3,
        )
        for mode, label in (("infer", "inference"), ("train", "fwd+bwd")):
            add(
                f"{name}: {label} utilisation of matmul peak",
                row[f"{mode}_utilisation"],
                "-",
                None,
                f"vitlib; timm {row[f'{mode}_utilisation_timm']:.3g}",
            )
    for row in results.get("data", {}).get("rows", []):
        if "speedup" in row:
            add(
                f"data ({row['source'].split(': ')[-1]}): {row['measure']}",
                row["speedup"],
                ">= 10",
                row["speedup"] >= 10,
                f"{row['cache_img_s']:,.0f} vs {row['jpeg_img_s']:,.0f} img/s",
            )
    loader_rows = [
        r for r in results.get("data", {}).get("rows", [])
        if r["measure"] == "cache vs JPEG, batch of 64"
    ]  # fmt: skip
    train_rows = [
        r for r in results.get("model", {}).get("rows", []) if r["arch"] == "vit_base_patch16_224"
    ]
    if loader_rows and train_rows:
        loader, trained = loader_rows[0]["cache_img_s"], train_rows[0]["train_img_s_vitlib"]
        add(
            "loader keeps up: batch reading / ViT-B/16 fwd+bwd img/s (cpu)",
            loader / trained,
            ">= 1",
            loader >= trained,
            f"{loader:,.0f} vs {trained:.1f} img/s",
        )
    for row in results.get("train", {}).get("rows", []):
        if "speedup" in row:
            add(
                "probe: naive / cached wall time",
                row["speedup"],
                ">= 4",
                row["speedup"] >= 4,
                f"{row['naive_s']:.1f} s / {row['cached_s']:.1f} s, "
                f"{row['n_train']}/{row['n_val']}/{row['n_test']} images, "
                f"head diff {row['head_max_abs_diff']:.1g}",
            )
    for row in results.get("attention", {}).get("rows", []):
        if row["kind"] == "performer" and row["time_growth"] is not None:
            growth = max(row["time_growth"], row["memory_growth"])
            add(
                f"performer: time and memory x per 4x tokens (N={row['tokens']})",
                growth,
                "linear, < 8",
                growth < 8,
            )
    for row in results.get("report", {}).get("rows", []):
        add(f"{row['measure']} (s)", row["seconds"], "<= 90", row["met"])
    for row in results.get("gpu", {}).get("rows", []):
        label = f"GPU batch {row['batch']}{' compiled' if row['compile'] else ''}"
        add(f"{label}: utilisation", row["utilisation"], ">= 0.40", row["utilisation"] >= 0.4)
        add(f"{label}: study minutes", row["study_minutes"], "<= 3", row["study_minutes"] <= 3)
        add(
            f"{label}: loader keeps up (loader / train img/s)",
            row["loader_over_train"],
            ">= 1",
            row["loader_over_train"] >= 1,
            f"{row['loader_img_s']:,.0f} vs {row['img_s']:,.0f} img/s",
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller cases")
    parser.add_argument("--only", default=",".join(MODULES), help="comma-separated subset")
    args = parser.parse_args()
    results, seconds = {}, {}
    for name in args.only.split(","):
        started = time.perf_counter()
        print(f"\n=== {name} ===")
        results[name] = importlib.import_module(f"benchmarks.bench_{name}").run(quick=args.quick)
        seconds[name] = time.perf_counter() - started
    rows = headline(results)
    print("\n=== targets ===")
    print(format_table(rows, ["measure", "value", "target", "met", "detail"]))
    if "model" in results:
        print(f"model timings: {results['model']['method']}")
    methods = {name: r["method"] for name, r in results.items() if "method" in r}
    write_result("summary", {"rows": rows, "methods": methods, "seconds_per_benchmark": seconds})


if __name__ == "__main__":
    main()
