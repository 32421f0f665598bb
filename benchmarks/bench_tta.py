"""Time to accuracy on this machine: validation accuracy against wall-clock minutes of training,
the `cpu` profile's ViT and a ResNet-18 side by side, in one run (DAWNBench ranks training so).

    python -m benchmarks.bench_tta --data ../shared/data/cats-dogs-bench-128   # -> results/tta.json
    python -m benchmarks.bench_tta --quick                  # the smoke profile's synthetic set

Both models train by the `cpu` profile's fine-tune recipe (`vitlib.train.fine_tune`: AdamW,
warm-up + cosine sized to `--epochs`, label smoothing, crops and flips) on the same images in
the same order, one after the other in this process; each epoch's validation accuracy is
plotted at the training minutes spent so far (evaluation time not counted). `--train-images`
takes a stratified-by-nothing random subset of the training split (seed 0) so that several
epochs of the slower model fit a short run. The figure is results/tta.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, format_table, write_result
from vitlib.checkpoints import build_model
from vitlib.config import get_config
from vitlib.data import ImageDataset, load_splits

MODELS = ("vit", "resnet18")


def subset(ds: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """`n` random items of `ds` (all of them if n is 0 or too large), in a fixed order."""
    if not n or n >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    return ImageDataset(
        np.asarray(ds.images[idx]), ds.labels[idx], [ds.paths[i] for i in idx],
        classes=ds.classes, mean=ds.mean, std=ds.std, augment=ds.augment, split=ds.split,
    )  # fmt: skip


def build(name: str, cfg: Any) -> torch.nn.Module:
    if name == "vit":
        return build_model(cfg.model, seed=cfg.seed)
    import timm

    torch.manual_seed(cfg.seed)
    return timm.create_model(name, pretrained=False, num_classes=cfg.model.num_classes)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from vitlib.train import fine_tune

    if args.quick:
        cfg = get_config("smoke")
    else:
        cfg = get_config("cpu", {"data.root": str(args.data)})
    tc = dataclasses.replace(cfg.finetune, epochs=args.epochs or cfg.finetune.epochs)
    vit = build("vit", cfg)
    datasets = dict(load_splits(cfg.data, vit.pretrained_cfg, seed=cfg.seed, progress=True))
    datasets["train"] = subset(datasets["train"], args.train_images)
    curves, rows = {}, []
    for name in MODELS:
        model = build(name, cfg)
        with tempfile.TemporaryDirectory() as tmp:
            result = fine_tune(model, datasets, tc, run_dir=tmp, seed=cfg.seed, device="cpu")
        minutes = np.cumsum([h["seconds"] for h in result["history"]]) / 60
        accuracy = [h["val_accuracy"] for h in result["history"]]
        curves[name] = {"minutes": minutes.tolist(), "val_accuracy": accuracy}
        rows.append({
            "model": name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "epochs": tc.epochs, "train_images": len(datasets["train"]),
            "minutes": float(minutes[-1]), "best_val": max(accuracy),
            "test": result["test"]["accuracy"],
        })  # fmt: skip
    for row in rows:  # minutes each model took to reach the accuracy the slower one ends at
        target = min(r["best_val"] for r in rows)
        curve = curves[row["model"]]
        row["minutes_to_common_acc"] = next(
            m for m, a in zip(curve["minutes"], curve["val_accuracy"]) if a >= target
        )
    return {
        "profile": cfg.profile,
        "recipe": dataclasses.asdict(tc),
        "curves": curves,
        "rows": rows,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, curve in result["curves"].items():
        ax.plot(curve["minutes"], curve["val_accuracy"], marker="o", label=name)
    ax.set_xlabel("training minutes (this machine)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"time to accuracy, profile {result['profile']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="photo folder for the cpu profile")
    parser.add_argument("--epochs", type=int, default=0, help="default: the profile's")
    parser.add_argument("--train-images", type=int, default=0, help="0 = the whole split")
    parser.add_argument("--quick", action="store_true", help="smoke profile, synthetic images")
    args = parser.parse_args(argv)
    if not args.quick and args.data is None:
        parser.error("--data DIR is needed (or --quick)")
    result = run(args)
    name = "tta_quick" if args.quick else "tta"
    write_result(name, result)
    plot(result, RESULTS_DIR / f"{name}.png")
    print(format_table(result["rows"], list(result["rows"][0])))
    return result


if __name__ == "__main__":
    main()
