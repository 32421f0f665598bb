"""Model speed: vitlib vs timm (same weights, same threads), utilisation, attention capture.

    python -m benchmarks.bench_model [--quick]

Per architecture and device: images/s for inference and forward+backward, the ratio
vitlib / timm (target >= 1.00), achieved FLOP/s (counted with FlopCounterMode) over the
machine's measured matmul peak, for both implementations, and the cost of
`return_attention=True` (target <= 1.3x).

Each (implementation, mode) runs in a process of its own, started for this run, which builds
both models (same weights) and keeps both; the processes take turns, one call each per round
with the order rotating each round, and a figure is the median over rounds. Each worker tells
glibc's malloc to keep the memory it frees (`keep_freed_memory`).

Why: on this VM a page fault costs about 1 us, and glibc's malloc, by default, returns freed
heap to the kernel whenever the free top of the heap passes a threshold that itself moves with
the largest block freed so far. Whether a 19 MB activation is given back and faulted in again
then depends on the order of every allocation before it, small ones included. A call of
vit_tiny_patch16_224 at batch 32 took anywhere from 0 to 120,000 faults, the same model from
one call to the next and from run to run: in one process vitlib / timm came out 0.905, in
separate processes 0.82 to 0.97 from one run to the next, with the same arithmetic. With the
memory kept, neither takes faults, both run 10-20% faster, and the ratio measures the code.
`--default-malloc` measures with glibc's defaults (results/model_default_malloc.json); the
faults per call are recorded beside the times.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
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
MALLOC = "glibc mallopt in each worker: mmap threshold 32 MiB, trim threshold 1 GiB"
METHOD = (
    "each (implementation, mode) in its own fresh process; after `warmup` calls the processes "
    "take turns, one timed call each per round, the order rotating each round; reported: the "
    "median over rounds"
)


def _make_call(impl: str, mode: str, arch: str, batch: int, device: str) -> Callable[[], Any]:
    """One call of `impl`'s model in `mode` on a random batch (B, 3, 224, 224)."""
    import timm

    from vitlib.model import build_vit

    # Every worker builds both models and keeps both, so that all start from the same heap:
    # a worker that freed timm's copy after loading its weights into vitlib's took twice the
    # page faults per call, whichever model it then ran.
    torch.manual_seed(0)
    models = {"timm": timm.create_model(arch, pretrained=False), "vitlib": build_vit(arch)}
    models["vitlib"].load_state_dict(models["timm"].state_dict())
    models = {name: m.to(device) for name, m in models.items()}
    model = models[impl].train(mode == "train")
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


def keep_freed_memory() -> str:
    """Tell glibc's malloc to keep the memory it frees (a fixed 32 MiB mmap threshold, no heap
    trimming), so a call reuses the pages of the last instead of faulting in fresh ones.
    Returns what was set, for the results."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallopt"):
        return "default (no mallopt here)"
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    ok = libc.mallopt(m_mmap_threshold, 32 * 2**20) and libc.mallopt(m_trim_threshold, 2**30)
    return MALLOC if ok else "default (mallopt refused)"


def serve(
    impl: str, mode: str, *, arch: str, batch: int, device: str, warmup: int, keep_memory: bool
) -> None:
    """Worker loop: build, warm up, print {"malloc"}; then per input line "time" one timed
    call as JSON {"seconds", "faults"} (minor page faults), "flops" the FLOPs of one call."""
    malloc = keep_freed_memory() if keep_memory else "glibc default"
    call = _make_call(impl, mode, arch, batch, device)
    for _ in range(warmup):
        call()
    sync(device)
    print(json.dumps({"malloc": malloc}), flush=True)
    for line in sys.stdin:
        if line.strip() == "time":
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            call()
            sync(device)
            seconds = time.perf_counter() - start
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            print(json.dumps({"seconds": seconds, "faults": faults}), flush=True)
        elif line.strip() == "flops":
            with FlopCounterMode(display=False) as counter:
                call()
            print(json.dumps({"flops": counter.get_total_flops()}), flush=True)


class Worker:
    """One (implementation, mode) served by a fresh Python process (`serve`)."""

    def __init__(self, **spec: Any):
        self.spec = spec
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_model", "--worker", json.dumps(spec)],
            cwd=PROJECT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, request: str) -> Any:
        if request:
            self.process.stdin.write(request + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"bench_model worker {self.spec} exited ({self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def bench_arch(
    arch: str,
    batch_infer: int,
    batch_train: int,
    *,
    device: str,
    rounds: int,
    warmup: int,
    peak: float,
    keep_memory: bool = True,
) -> dict[str, Any]:
    workers = {
        (impl, mode): Worker(
            impl=impl,
            mode=mode,
            arch=arch,
            batch=batch_train if mode == "train" else batch_infer,
            device=device,
            warmup=warmup,
            keep_memory=keep_memory,
        )
        for impl, mode in VARIANTS
    }
    try:
        # wait until each has built its models and warmed up
        malloc = {worker.ask("")["malloc"] for worker in workers.values()}
        calls: dict[tuple[str, str], list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for r in range(rounds):
            # rotate the order each round, so no variant always runs first or after another
            for v in VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]:
                calls[v].append(workers[v].ask("time"))
        flops = {v: workers[v].ask("flops")["flops"] for v in VARIANTS}
    finally:
        for worker in workers.values():
            worker.close()
    s = {v: statistics.median(c["seconds"] for c in calls[v]) for v in VARIANTS}

    def quartiles_of_ratio(mode: str) -> list[float]:
        """Quartiles of timm / vitlib round by round: how far one round's ratio can be off."""
        per_round = [
            t["seconds"] / v["seconds"]
            for t, v in zip(calls["timm", mode], calls["vitlib", mode], strict=True)
        ]
        q1, _, q3 = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
        return [q1, q3]

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
        "infer_ratio_quartiles_by_round": quartiles_of_ratio("infer"),
        "train_ratio_quartiles_by_round": quartiles_of_ratio("train"),
        "attention_capture_slowdown": s["vitlib", "infer_attn"] / s["vitlib", "infer"],
        "infer_utilisation": flops["vitlib", "infer"] / s["vitlib", "infer"] / peak,
        "infer_utilisation_timm": flops["timm", "infer"] / s["timm", "infer"] / peak,
        "train_utilisation": flops["vitlib", "train"] / s["vitlib", "train"] / peak,
        "train_utilisation_timm": flops["timm", "train"] / s["timm", "train"] / peak,
        "gflop_per_image": flops["vitlib", "infer"] / batch_infer / 1e9,
        "malloc": " / ".join(sorted(malloc)),
        "seconds_per_round": {
            f"{impl} {mode}": [c["seconds"] for c in calls[impl, mode]] for impl, mode in VARIANTS
        },
        "page_faults_per_round": {
            f"{impl} {mode}": [c["faults"] for c in calls[impl, mode]] for impl, mode in VARIANTS
        },
    }


def run(quick: bool = False, keep_memory: bool = True) -> dict[str, Any]:
    """Time every case; write results/model.json (results/model_default_malloc.json when
    glibc's malloc keeps its default behaviour)."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    timing = dict(rounds=2, warmup=1) if quick else dict(rounds=7, warmup=2)
    rows, peaks = [], {}
    for device in devices:
        peak_dtype = torch.bfloat16 if device == "cuda" else torch.float32
        peaks[device] = matmul_peak_flops(device, peak_dtype, n=8192 if device == "cuda" else 2048)
        for arch, b_inf, b_train in CASES[device]:
            if quick and "base" in arch and device == "cpu":
                continue
            rows.append(
                bench_arch(
                    arch,
                    b_inf,
                    b_train,
                    device=device,
                    peak=peaks[device],
                    keep_memory=keep_memory,
                    **timing,
                )
            )
    result = {
        "method": METHOD,
        "timing": timing,
        "threads": torch.get_num_threads(),
        "matmul_peak_flops": peaks,
        "rows": rows,
    }
    path = write_result("model" if keep_memory else "model_default_malloc", result)
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
    print(f"timing: {METHOD} ({timing}); malloc: {rows[0]['malloc'] if rows else '-'}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two rounds, tiny model only")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc as it is (page faults included) -> model_default_malloc.json",
    )
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve(**json.loads(args.worker))
    else:
        run(quick=args.quick, keep_memory=not args.default_malloc)
