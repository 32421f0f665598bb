"""The generated two-class set that `smoke` trains on: offline, seconds, learnable.

Three parallel bright bars on a textured dark background: horizontal for class 0 ("cat"),
vertical for class 1 ("dog"). Every other draw has the same distribution for both classes, so
only the object's shape tells them apart, and its box is known: the attention figures can be
checked against where the object is.

    root = generate_synthetic("data/cache", per_class=400, img_size=32)   # cat/*.png, dog/*.png
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vitlib.config import DataConfig
from vitlib.files import atomic_dir, csv_text
from vitlib.manifest import CLASSES

__all__ = ["draw_synthetic", "generate_synthetic", "synthetic_boxes"]

SYNTHETIC_VERSION = 1


def draw_synthetic(label: int, rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple]:
    """One synthetic image (size, size, 3) uint8 and its object's box (x0, y0, x1, y1) in pixels.

    The object is three parallel bright bars (one random colour; 65-90% of the side long,
    7-10% thick, gaps of 0.8-1.2 bar widths) at a random place, on a dark background: two
    random colours in sinusoidal stripes of random angle and frequency, plus pixel noise.
    Label 0 ("cat") has horizontal bars, a "≡"; label 1 ("dog") vertical ones, a "|||". Every
    other draw (colours, lengths, widths, place, texture) has the same distribution for both,
    so colour and size statistics cannot tell the classes apart: only the object's shape can.
    """
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    dark_a = rng.uniform(0, 90, 3)
    dark_b = np.clip(dark_a + rng.uniform(-45, 45, 3), 0, 90)
    background = dark_a * (1 - t[..., None]) + dark_b * t[..., None]  # (size, size, 3)
    background += rng.normal(0, 6, background.shape)
    colour = rng.uniform(150, 255, 3)
    length, bar = rng.uniform(0.65, 0.9) * size, rng.uniform(0.07, 0.10) * size
    gap = rng.uniform(0.8, 1.2) * bar
    width = 3 * bar + 2 * gap  # of the three bars together
    along = rng.uniform(length / 2, size - length / 2)
    across = rng.uniform(width / 2 + 1, size - width / 2 - 1)
    # Anti-aliased coverage: draw at 4x and average 4x4 blocks.
    ss = 4
    mask = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(mask)
    for k in range(3):
        a0 = across - width / 2 + k * (bar + gap)
        x0, y0, x1, y1 = (along - length / 2, a0, along + length / 2, a0 + bar)
        if label:
            x0, y0, x1, y1 = y0, x0, y1, x1
        x0, y0, x1, y1 = (round(v * ss) for v in (x0, y0, x1, y1))
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)  # PIL includes x1, y1
    cover = np.asarray(mask, dtype=np.float64).reshape(size, ss, size, ss).mean(axis=(1, 3))
    image = background * (1 - cover[..., None] / 255) + colour * cover[..., None] / 255
    box = (along - length / 2, across - width / 2, along + length / 2, across + width / 2)
    if label:
        box = (box[1], box[0], box[3], box[2])
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), tuple(round(v, 3) for v in box)


def generate_synthetic(
    out_dir: str | Path = DataConfig.cache_dir,
    *,
    per_class: int = 400,
    img_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write the synthetic set as an ImageFolder (cat/*.png, dog/*.png) with boxes.csv.

    Deterministic from `seed` (image i of class k draws from default_rng([seed, k, i])).
    Generated into a temporary folder and renamed, so a half-written set is never used.
    Returns the folder; an existing complete one is reused.
    """
    root = Path(out_dir) / f"synthetic-v{SYNTHETIC_VERSION}-s{seed}-{img_size}px-{per_class}"
    if root.is_dir():
        return root
    with atomic_dir(root) as tmp:
        rows = []
        for label, cls in enumerate(CLASSES):
            (tmp / cls).mkdir()
            for i in range(per_class):
                rng = np.random.default_rng([seed, label, i])
                image, box = draw_synthetic(label, rng, img_size)
                rel = f"{cls}/{i:05d}.png"
                Image.fromarray(image).save(tmp / rel)
                rows.append((rel, *box))
        (tmp / "boxes.csv").write_text(csv_text(("path", "x0", "y0", "x1", "y1"), rows))
        about = {
            "version": SYNTHETIC_VERSION,
            "seed": seed,
            "per_class": per_class,
            "img_size": img_size,
            "classes": {"cat": "three horizontal bars", "dog": "three vertical bars"},
        }
        (tmp / "synthetic.json").write_text(json.dumps(about, indent=2) + "\n")
    return root


def synthetic_boxes(root: Path, *, resized: int, size: int) -> dict[str, tuple]:
    """{path: box in cached-image pixels}: boxes.csv mapped through the preprocessing's resize
    (of the shorter side to `resized` px) and centre crop (to `size` px)."""
    about = json.loads((root / "synthetic.json").read_text())
    offset = int(round((resized - size) / 2.0))  # torchvision's center_crop
    scale = resized / about["img_size"]
    out = {}
    with open(root / "boxes.csv", newline="") as f:
        for row in csv.DictReader(f):
            box = np.array([float(row[k]) for k in ("x0", "y0", "x1", "y1")])
            out[row["path"]] = tuple(np.clip(box * scale - offset, 0, size))
    return out
