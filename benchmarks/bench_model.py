"""Model speed: vitlib vs timm (same weights, same threads), utilisation, attention capture.

    python -m benchmarks.bench_model [--quick]

Per architecture and device: images/s for inference and forward+backward, the ratio
vitlib / timm (target >= 1.00), achieved FLOP/s (counted with FlopCounterMode) over the
machine's measured matmul peak, for both implementations, and the cost of
`return_attention=True` (target <= 1.3x).

Each (implementation, mode) is timed in a fresh Python process of its own, the processes
interleaved round by round (the order rotating each round), and a figure is the median over
rounds of each process's median call. Timed in one process, the models disturbed each other
through glibc's malloc, whose state (its moving mmap threshold, how much freed memory it has
returned to the kernel) depends on everything the process allocated before: a forward pass of
vit_tiny_patch16_224 at batch 32 took 50,000 to 120,000 minor page faults on this VM, at about
1 us each, depending on what ran before it. The faults per call are recorded beside the times.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import format_table, matmul_peak_flops, sync, write_result

PROJECT = Path(__file__).resolve().parents[1]

# (arch, batch for inference, batch for forward+backward), per device
CASES = {
    "cpu": [("vit_tiny_patch16_224", 32, 16), ("vit_base_patch16_224", 8, 4)],
    "cuda": [("vit_tiny_patch16_224", 256, 128), ("vit_base_patch16_224", 128, 64)],
}
# (implementation, mode): each timed in its own process
VARIANTS = (
    ("timm", "infer"),
    ("vitlib", "infer"),
    ("vitlib", "infer_attn"),
    ("timm", "train"),
    ("vitlib", "train"),
)
METHOD = (
    "each (implementation, mode) in a fresh process, processes interleaved with the order "
    "rotating each round; per process the median of `repeats` calls after `warmup`; reported: "
    "the median over rounds"
)


def _make_call(impl: str, mode: str, arch: str, batch: int, device: str) -> Callable[[], Any]:
    """One call of `impl`'s model in `mode` on a random batch (B, 3, 224, 224)."""
    import timm

    from vitlib.model import build_vit

    torch.manual_seed(0)
    reference = timm.create_model(arch, pretrained=False)
    if impl == "timm":
        model = reference
    else:
        model = build_vit(arch)
        model.load_state_dict(reference.state_dict())  # the same weights as timm's process
        del reference
    model = model.to(device).train(mode == "train")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    x = torch.randn(batch, 3, 224, 224, device=device)
    kwargs = {"return_attention": True} if mode == "infer_attn" else {}

    def infer() -> None:
        with torch.no_grad(), autocast:
            model(x, **kwargs)

    def train_step() -> None:
        with autocast:
            out = model(x)
        out.float().logsumexp(-1).mean().backward()

    return train_step if mode == "train" else infer


def measure(
    impl: str, mode: str, *, arch: str, batch: int, device: str, warmup: int, repeats: int
) -> dict[str, Any]:
    """In this process: median seconds per call, minor page faults per call, FLOPs per call."""
    call = _make_call(impl, mode, arch, batch, device)
    for _ in range(warmup):
        call()
    sync(device)
    seconds, faults = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        call()
        sync(device)
        seconds.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    with FlopCounterMode(display=False) as counter:
        call()
    return {
        "seconds": statistics.median(seconds),
        "faults": statistics.median(faults),
        "flops": counter.get_total_flops(),
    }


def measure_in_subprocess(**spec: Any) -> dict[str, Any]:
    """`measure(**spec)` in a fresh Python process."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_model", "--worker", json.dumps(spec)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"bench_model worker {spec} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_arch(
    arch: str,
    batch_infer: int,
    batch_train: int,
    *,
    device: str,
    rounds: int,
    warmup: int,
    repeats: int,
    peak: float,
) -> dict[str, Any]:
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        # rotate the order each round, so no variant always runs first or after another
        for impl, mode in VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]:
            runs[impl, mode].append(
                measure_in_subprocess(
                    impl=impl,
                    mode=mode,
                    arch=arch,
                    batch=batch_train if mode == "train" else batch_infer,
                    device=device,
                    warmup=warmup,
                    repeats=repeats,
                )
            )
    s = {v: statistics.median(m["seconds"] for m in runs[v]) for v in VARIANTS}
    faults = {v: statistics.median(m["faults"] for m in runs[v]) for v in VARIANTS}
    flops = {v: runs[v][0]["flops"] for v in VARIANTS}
    return {
        "arch": arch,
        "device": device,
        "batch_infer": batch_infer,
        "batch_train": batch_train,
        "infer_img_s_timm": batch_infer / s["timm", "infer"],
        "infer_img_s_vitlib": batch_infer / s["vitlib", "infer"],
        "infer_ratio": s["timm", "infer"] / s["vitlib", "infer"],
        "train_img_s_timm": batch_train / s["timm", "train"],
        "train_img_s_vitlib": batch_train / s["vitlib", "train"],
        "train_ratio": s["timm", "train"] / s["vitlib", "train"],
        "attention_capture_slowdown": s["vitlib", "infer_attn"] / s["vitlib", "infer"],
        "infer_utilisation": flops["vitlib", "infer"] / s["vitlib", "infer"] / peak,
        "infer_utilisation_timm": flops["timm", "infer"] / s["timm", "infer"] / peak,
        "train_utilisation": flops["vitlib", "train"] / s["vitlib", "train"] / peak,
        "train_utilisation_timm": flops["timm", "train"] / s["timm", "train"] / peak,
        "gflop_per_image": flops["vitlib", "infer"] / batch_infer / 1e9,
        "page_faults_per_call": {f"{impl} {mode}": faults[impl, mode] for impl, mode in VARIANTS},
        "seconds_per_round": {
            f"{impl} {mode}": [m["seconds"] for m in runs[impl, mode]] for impl, mode in VARIANTS
        },
    }


def run(quick: bool = False) -> dict[str, Any]:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    timing = dict(rounds=1, warmup=1, repeats=2) if quick else dict(rounds=3, warmup=2, repeats=3)
    rows, peaks = [], {}
    for device in devices:
        peak_dtype = torch.bfloat16 if device == "cuda" else torch.float32
        peaks[device] = matmul_peak_flops(device, peak_dtype, n=8192 if device == "cuda" else 3072)
        for arch, b_inf, b_train in CASES[device]:
            if quick and "base" in arch and device == "cpu":
                continue
            rows.append(
                bench_arch(arch, b_inf, b_train, device=device, peak=peaks[device], **timing)
            )
    result = {
        "method": METHOD,
        "timing": timing,
        "threads": torch.get_num_threads(),
        "matmul_peak_flops": peaks,
        "rows": rows,
    }
    path = write_result("model", result)
    print(
        format_table(
            rows,
            [
                "arch",
                "device",
                "infer_img_s_timm",
                "infer_img_s_vitlib",
                "infer_ratio",
                "train_img_s_timm",
                "train_img_s_vitlib",
                "train_ratio",
                "attention_capture_slowdown",
                "infer_utilisation",
                "train_utilisation",
            ],
        )
    )
    print(f"matmul peak: { {d: f'{p / 1e9:.1f} GFLOP/s' for d, p in peaks.items()} }  -> {path}")
    print(f"timing: {METHOD} ({timing})")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, tiny model only")
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(**json.loads(args.worker))))
    else:
        run(quick=args.quick)
