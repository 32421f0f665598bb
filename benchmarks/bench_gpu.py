"""GPU: the `full` fine-tune step (ViT-B/16, 224 px) at the study's batch and at a large one.

    python -m benchmarks.bench_gpu

bf16 autocast and fused attention, with and without `torch.compile`. For each setting:
images/s, achieved FLOP/s over the measured bf16 matmul peak, and the projected minutes for the
study's 5 epochs x 20,000 images (targets: >= 40% utilisation at the large batch; 5 epochs in
<= 3 minutes). Also whether the loader keeps up: images/s of `ImageDataset.batch` (gather
uint8 rows of an in-memory cache, copy to the GPU, normalise there) over the step's images/s.
Needs a CUDA GPU; without one it says so and writes nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import format_table, matmul_peak_flops, time_call, write_result
from vitlib.data import ImageDataset
from vitlib.model import build_vit

STUDY_IMAGES = 5 * 20_000
BATCHES = (16, 256)
CACHE_IMAGES = 1024  # an in-memory uint8 cache (B, 224, 224, 3), 154 MB
DEVICE = torch.device("cuda")


def random_cache() -> ImageDataset:
    """CACHE_IMAGES random uint8 images (n, 224, 224, 3) in memory, as a dataset."""
    images = np.random.default_rng(0).integers(0, 256, (CACHE_IMAGES, 224, 224, 3), dtype=np.uint8)
    return ImageDataset(images, np.zeros(CACHE_IMAGES), [""] * CACHE_IMAGES)


def loader_rate(dataset: ImageDataset, batch: int, repeats: int) -> float:
    """Images/s of training's batch reading on the GPU, from random rows of `dataset`."""
    rng = np.random.default_rng(0)
    seconds = time_call(
        lambda: dataset.batch(np.sort(rng.choice(CACHE_IMAGES, batch)), DEVICE),
        device=DEVICE.type,
        repeats=repeats,
    )
    return batch / seconds


def make_step(model: torch.nn.Module, batch: int, compiled: bool):
    """One Adam fine-tune step on random images: forward, loss, backward, update."""
    images = torch.randn(batch, 3, 224, 224, device="cuda")
    labels = torch.randint(0, 2, (batch,), device="cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    forward = torch.compile(model) if compiled else model

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def step_flops(model: torch.nn.Module, batch: int) -> int:
    images = torch.randn(batch, 3, 224, 224, device="cuda")
    with FlopCounterMode(display=False) as counter, torch.autocast("cuda", dtype=torch.bfloat16):
        model(images).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def run(quick: bool = False) -> dict[str, Any]:
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here; nothing measured")
        return {"rows": [], "skipped": "no CUDA GPU"}
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_peak_flops("cuda", torch.bfloat16, n=8192)
    cache = random_cache()
    loaders = {batch: loader_rate(cache, batch, repeats=5 if quick else 20) for batch in BATCHES}
    del cache
    rows = []
    for compiled in (False, True):
        for batch in BATCHES:
            model = build_vit("vit_base_patch16_224", num_classes=2).cuda().train()
            flops = step_flops(model, batch)
            seconds = time_call(
                make_step(model, batch, compiled),
                device="cuda",
                repeats=5 if quick else 20,
                warmup=3 if compiled else 2,
            )
            rows.append(
                {
                    "batch": batch,
                    "compile": compiled,
                    "img_s": batch / seconds,
                    "utilisation": flops / seconds / peak,
                    "study_minutes": STUDY_IMAGES / (batch / seconds) / 60,
                    "loader_img_s": loaders[batch],
                    "loader_over_train": loaders[batch] / (batch / seconds),
                }
            )
            del model
            torch.cuda.empty_cache()
    result = {"gpu": torch.cuda.get_device_name(), "bf16_matmul_peak_flops": peak, "rows": rows}
    path = write_result("gpu", result)
    print(format_table(rows, list(rows[0])))
    print(f"bf16 matmul peak {peak / 1e12:.0f} TFLOP/s -> {path}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(quick=parser.parse_args().quick)
