"""Model speed: vitlib vs timm (same weights, same threads), utilisation, attention capture.

    python -m benchmarks.bench_model [--quick]

Per architecture and device: images/s for inference and forward+backward, the ratio
vitlib / timm (target >= 1.00), achieved FLOP/s (counted with FlopCounterMode) over the
machine's measured matmul peak, and the cost of `return_attention=True` (target <= 1.3x).
"""

from __future__ import annotations

import argparse
from typing import Any

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import format_table, matmul_peak_flops, time_side_by_side, write_result
from vitlib.model import build_vit

# (arch, batch for inference, batch for forward+backward), per device
CASES = {
    "cpu": [("vit_tiny_patch16_224", 32, 16), ("vit_base_patch16_224", 8, 4)],
    "cuda": [("vit_tiny_patch16_224", 256, 128), ("vit_base_patch16_224", 128, 64)],
}


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bench_arch(
    arch: str, batch_infer: int, batch_train: int, *, device: str, repeats: int, peak: float
) -> dict[str, Any]:
    torch.manual_seed(0)
    reference = timm.create_model(arch, pretrained=False).to(device)
    ours = build_vit(arch).to(device)
    ours.load_state_dict(reference.state_dict())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    x_infer = torch.randn(batch_infer, 3, 224, 224, device=device)
    x_train = torch.randn(batch_train, 3, 224, 224, device=device)

    def infer(model, **kwargs):
        def run():
            with torch.no_grad(), autocast:
                model(x_infer, **kwargs)

        return run

    def train_step(model):
        def run():
            with autocast:
                out = model(x_train)
            out.float().logsumexp(-1).mean().backward()

        return run

    for m in (reference, ours):
        m.eval()
    infer_s = time_side_by_side(
        {
            "timm": infer(reference),
            "vitlib": infer(ours),
            "vitlib_attn": infer(ours, return_attention=True),
        },
        device=device,
        repeats=repeats,
    )
    for m in (reference, ours):
        m.train()
    train_s = time_side_by_side(
        {"timm": train_step(reference), "vitlib": train_step(ours)}, device=device, repeats=repeats
    )
    flops_infer = count_flops(infer(ours))
    flops_train = count_flops(train_step(ours))
    return {
        "arch": arch,
        "device": device,
        "batch_infer": batch_infer,
        "batch_train": batch_train,
        "infer_img_s_timm": batch_infer / infer_s["timm"],
        "infer_img_s_vitlib": batch_infer / infer_s["vitlib"],
        "infer_ratio": infer_s["timm"] / infer_s["vitlib"],
        "train_img_s_timm": batch_train / train_s["timm"],
        "train_img_s_vitlib": batch_train / train_s["vitlib"],
        "train_ratio": train_s["timm"] / train_s["vitlib"],
        "attention_capture_slowdown": infer_s["vitlib_attn"] / infer_s["vitlib"],
        "infer_utilisation": flops_infer / infer_s["vitlib"] / peak,
        "train_utilisation": flops_train / train_s["vitlib"] / peak,
        "gflop_per_image": flops_infer / batch_infer / 1e9,
    }


def run(quick: bool = False) -> dict[str, Any]:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows, peaks = [], {}
    for device in devices:
        peak_dtype = torch.bfloat16 if device == "cuda" else torch.float32
        peaks[device] = matmul_peak_flops(device, peak_dtype, n=8192 if device == "cuda" else 3072)
        for arch, b_inf, b_train in CASES[device]:
            if quick and "base" in arch and device == "cpu":
                continue
            rows.append(
                bench_arch(
                    arch,
                    b_inf,
                    b_train,
                    device=device,
                    repeats=3 if quick else 7,
                    peak=peaks[device],
                )
            )
    result = {"matmul_peak_flops": peaks, "rows": rows}
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
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, tiny model only")
    run(quick=parser.parse_args().quick)
