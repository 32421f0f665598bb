"""What the training tests share: a real ImageDataset over images made here, a tiny ViT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vitlib.checkpoints import create_model
from vitlib.config import TrainConfig
from vitlib.data import ImageDataset

TINY = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2)


TC = TrainConfig(epochs=3, batch_size=8, lr=3e-3, eval_batch_size=16)


def FakeImages(n: int, *, seed: int, size: int = 16, augment: bool = False) -> ImageDataset:
    """A real ImageDataset over images made here: dogs are redder; mean = std = 0.5."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int64)
    images = rng.integers(0, 150, (n, size, size, 3))
    images[labels == 1, :, :, 0] += 100
    classes = ("cat", "dog")
    return ImageDataset(
        images.astype(np.uint8),
        labels,
        [f"{classes[c]}.{i}.jpg" for i, c in enumerate(labels)],
        classes=classes,
        augment=augment,
        info={"source": "FakeImages", "seed": seed},
    )


def tiny_model(seed: int = 0, num_classes: int = 2):
    torch.manual_seed(seed)
    return create_model("vit_custom", num_classes=num_classes, **TINY)


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if ".tmp" in p.name]


def comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def fake_splits(*, augment: bool = False) -> dict:
    """The `data` fixture's splits, for code that cannot take a fixture (a subprocess); with
    `augment`, the train split is randomly cropped and flipped (ImageDataset's own)."""
    return {
        "train": FakeImages(48, seed=0, augment=augment),
        "val": FakeImages(16, seed=1),
        "test": FakeImages(16, seed=2),
    }


def hold_lock(run_dir, ready, release) -> None:
    """Hold vitlib.runs.lock_run(run_dir) in another process until `release` is set."""
    from vitlib.runs import lock_run

    with lock_run(run_dir):
        ready.set()
        release.wait(60)
