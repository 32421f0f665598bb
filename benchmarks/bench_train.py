"""Training: the cached-feature probe's speed against the naive one, and the `cpu` profile on
real photographs.

    python -m benchmarks.bench_train [--quick]                  # -> results/train.json
    OMP_NUM_THREADS=1 python -m benchmarks.bench_train --real-data DIR   # -> results/train_cpu.json

Both train the same 2-class head on the same frozen backbone for 5 epochs with the same
shuffles; the cached probe extracts each split's class-token features once, the naive one
runs the backbone on every batch of every epoch (and on every validation pass). Reports wall
seconds of each, their ratio (target well under 1; about 1/epochs in the limit), and the
largest difference between the two trained heads (should be float rounding). Splits in the
study's proportions (10:1:1); both probes are run once on a few images first, so that one-off
start-up costs fall on neither; on the CPU both extract and evaluate at batch 64
(CPU_EVAL_BATCH). CPU: the `cpu`
profile's ViT at 64 px; CUDA: the `full` profile's ViT-B/16 at 224 px, random init (speed
does not depend on the weights).

`--real-data DIR` trains the `cpu` profile (a small ViT from scratch at 64 px) on the photos in
DIR, e.g. the 10,000 + 1,000 Dogs vs Cats images at 128 px, and records its accuracies and
minutes. It runs `vitlib train --profile cpu --experiment finetune --resume` in the project's
runs/: a run already finished there is evaluated again, not retrained. On a small machine
shared with other work, one torch thread per process (OMP_NUM_THREADS=1) is much faster than
two threads fighting over two cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import format_table, sync, write_result
from vitlib.config import get_config
from vitlib.experiments import run_experiment
from vitlib.model import build_vit
from vitlib.train import linear_probe

PROJECT = Path(__file__).resolve().parents[1]

EPOCHS = 5
# Feature extraction and evaluation batch on the CPU, for both probes. The `cpu` profile's 256
# made extraction 1.8x slower per image than 64 here (4.3 vs 2.4 ms at 64 px): its 51 MB MLP
# activations pass glibc's largest mmap threshold (32 MiB), so every block maps fresh memory
# and faults it in (760 faults per image, against 170 at batch 64).
CPU_EVAL_BATCH = 64
# train / val / test images: the study's 20,000 / 2,000 / 2,000 (10:1:1) at a tenth of the size.
# The naive probe runs the backbone on train and val every epoch, the cached one once on all
# three, so the proportions set the best speed-up possible: 4.67 here (4.33 at 2000/500/500).
STUDY_PROPORTIONS = (2000, 200, 200)


class RandomImages(torch.utils.data.Dataset):
    """Random uint8 images with vitlib.data's ImageDataset interface (images, labels, normalise)."""

    classes = ("cat", "dog")
    boxes = None

    def __init__(self, n: int, size: int, seed: int):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.labels = rng.integers(0, 2, n).astype(np.int64)
        self.paths = [f"{self.classes[c]}.{i}.jpg" for i, c in enumerate(self.labels)]

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return images.permute(0, 3, 1, 2).float().div(127.5).sub(1)  # (B, 3, H, W) in [-1, 1]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.normalise(torch.from_numpy(self.images[i : i + 1]))[0], int(self.labels[i])


def bench_probe(
    profile: str, sizes: tuple[int, int, int], device: str, *, eval_batch_size: int | None = None
) -> dict[str, Any]:
    overrides: dict[str, Any] = {"probe.epochs": EPOCHS}
    if eval_batch_size:
        overrides["probe.eval_batch_size"] = eval_batch_size
    cfg = get_config(profile, overrides)
    m = cfg.model
    kwargs = {**m.arch_kwargs, **({"img_size": m.img_size} if m.img_size else {})}
    torch.manual_seed(0)
    reference = build_vit(m.arch, num_classes=2, **kwargs)
    img_size = reference.patch_embed.img_size
    data = {
        split: RandomImages(n, img_size, seed)
        for seed, (split, n) in enumerate(zip(("train", "val", "test"), sizes, strict=True))
    }
    # One-off start-up costs (kernels, imports, first allocations and saves) before timing,
    # which would otherwise fall on whichever probe runs first.
    warm = {split: RandomImages(64, img_size, seed) for seed, split in enumerate(data)}

    def probe(model: torch.nn.Module, splits: dict[str, RandomImages], cached: bool) -> float:
        """Wall seconds of one linear probe of `model` on `splits`, in a scratch run folder."""
        with tempfile.TemporaryDirectory() as tmp:
            sync(device)
            start = time.perf_counter()
            linear_probe(
                model,
                splits,
                cfg.probe,
                run_dir=Path(tmp),
                cached=cached,
                progress=False,
                device=device,
            )
            sync(device)
            return time.perf_counter() - start

    for cached in (True, False):
        probe(build_vit(m.arch, num_classes=2, **kwargs), warm, cached)
    heads, seconds = {}, {}
    for cached in (True, False):
        model = build_vit(m.arch, num_classes=2, **kwargs)
        model.load_state_dict(reference.state_dict())
        seconds[cached] = probe(model, data, cached)
        heads[cached] = model.head.weight.detach().float().cpu()
    return {
        "profile": profile,
        "arch": m.arch,
        "img_size": img_size,
        "device": device,
        "epochs": EPOCHS,
        "batch_size": cfg.probe.batch_size,
        "eval_batch_size": cfg.probe.eval_batch_size,
        "n_train": sizes[0],
        "n_val": sizes[1],
        "n_test": sizes[2],
        "cached_s": seconds[True],
        "naive_s": seconds[False],
        "ratio_cached_to_naive": seconds[True] / seconds[False],
        "speedup": seconds[False] / seconds[True],
        "head_max_abs_diff": float((heads[True] - heads[False]).abs().max()),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Time both probes (quick: a few hundred images) and write results/train.json."""
    rows = [
        bench_probe(
            "cpu",
            (256, 64, 64) if quick else STUDY_PROPORTIONS,
            "cpu",
            eval_batch_size=CPU_EVAL_BATCH,
        )
    ]
    if torch.cuda.is_available():
        rows.append(bench_probe("full", (512, 128, 128) if quick else (4000, 1000, 1000), "cuda"))
    result = {"quick": quick, "rows": rows}
    path = write_result("train", result)
    print(
        format_table(
            rows,
            [
                "profile",
                "device",
                "img_size",
                "n_train",
                "epochs",
                "cached_s",
                "naive_s",
                "ratio_cached_to_naive",
                "speedup",
                "head_max_abs_diff",
            ],
        )
    )
    print(f"-> {path}")
    return result


def run_real_data(data_dir: str | Path) -> dict[str, Any]:
    """The `cpu` profile's fine-tune (from scratch) on the photos in `data_dir`; writes
    results/train_cpu.json."""
    cfg = get_config("cpu", {"data.source": "folder", "data.root": str(data_dir)}, root=PROJECT)
    metrics = run_experiment(cfg, "finetune", resume=True, progress=False)
    run_info = json.loads((cfg.run_dir / "finetune" / "run.json").read_text())
    result = {
        "profile": "cpu",
        "experiment": "finetune",
        "data": str(data_dir),
        "model": run_info["config"]["model"],
        "train_config": run_info["config"]["finetune"],
        "n": metrics["n"],
        "epochs": metrics["epochs"],
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "confusion_matrix": metrics["confusion_matrix"],
        "train_minutes": metrics["train_minutes"],
        "history": metrics["history"],
        "trained_on": run_info["machine"],  # the machine and threads of the training run
    }
    path = write_result("train_cpu", result)
    print(
        format_table(
            [result], ["profile", "epochs", "val_accuracy", "test_accuracy", "train_minutes"]
        )
    )
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred images")
    parser.add_argument("--real-data", metavar="DIR", help="train the cpu profile on DIR")
    args = parser.parse_args()
    if args.real_data:
        run_real_data(args.real_data)
    else:
        run(quick=args.quick)
