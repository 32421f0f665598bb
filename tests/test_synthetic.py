"""Tests of vitlib.synthetic: the generated two-class set."""

from __future__ import annotations

import csv

import numpy as np
from helpers import CFG32, JAX_CFG
from PIL import Image

from vitlib.config import get_config
from vitlib.data import (
    data_provenance,
    load_splits,
)
from vitlib.manifest import CLASSES
from vitlib.synthetic import generate_synthetic


def test_synthetic_set_is_deterministic_balanced_and_boxed(tmp_path):
    a = generate_synthetic(tmp_path / "a", per_class=20, img_size=32, seed=3)
    b = generate_synthetic(tmp_path / "b", per_class=20, img_size=32, seed=3)
    c = generate_synthetic(tmp_path / "c", per_class=20, img_size=32, seed=4)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.png"))
    assert len(files) == 40 and {f.split("/")[0] for f in files} == {"cat", "dog"}
    same = [
        np.array_equal(np.asarray(Image.open(a / f)), np.asarray(Image.open(b / f))) for f in files
    ]
    assert all(same)
    assert (
        (a / "boxes.csv").read_text()
        == (b / "boxes.csv").read_text()
        != (c / "boxes.csv").read_text()
    )
    with open(a / "boxes.csv", newline="") as f:
        boxes = {
            r["path"]: np.array([float(r[k]) for k in ("x0", "y0", "x1", "y1")])
            for r in csv.DictReader(f)
        }
    assert sorted(boxes) == files
    for path, (x0, y0, x1, y1) in boxes.items():
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
        img = np.asarray(Image.open(a / path), dtype=float).mean(-1)
        inside = np.zeros_like(img, bool)
        inside[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
        bright = img > 140
        assert bright[~inside].sum() == 0  # the object lies in its box
        assert bright[inside].mean() > 0.3  # and fills a good part of it (bars and gaps)
        # cat: horizontal bars (wide box), dog: vertical bars (tall box)
        assert ((x1 - x0) > (y1 - y0)) == path.startswith("cat/")


def test_synthetic_classes_differ_in_shape_not_in_colour_or_size(tmp_path):
    root = generate_synthetic(tmp_path, per_class=150, img_size=32, seed=0)
    feats, orient, labels = [], [], []
    with open(root / "boxes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        img = np.asarray(Image.open(root / r["path"]), dtype=float)
        w, h = float(r["x1"]) - float(r["x0"]), float(r["y1"]) - float(r["y0"])
        bright = img.mean(-1) > 140
        # colour and size statistics, orientation-free: mean/std colour, object and box area
        feats.append([*img.mean((0, 1)), *img.std((0, 1)), bright.sum(), w * h])
        grey = img.mean(-1)
        orient.append(np.abs(np.diff(grey, axis=0)).sum() - np.abs(np.diff(grey, axis=1)).sum())
        labels.append(int(r["path"].startswith("dog/")))
    X, y = np.array(feats), np.array(labels)
    X = (X - X.mean(0)) / X.std(0)
    # Nearest class mean on colour/size, fitted on half, tested on the other half.
    train, test = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    means = np.stack([X[train & (y == k)].mean(0) for k in (0, 1)])
    pred = np.argmin(((X[test][:, None] - means[None]) ** 2).sum(-1), 1)
    assert abs((pred == y[test]).mean() - 0.5) < 0.12
    # One orientation number separates them almost perfectly.
    assert ((np.array(orient) < 0) == (y == 1)).mean() > 0.97


def test_synthetic_splits_carry_boxes_in_cached_pixels(tmp_path):
    cfg = get_config("smoke", {"data.cache_dir": str(tmp_path), "data.synthetic_per_class": 30,
                               "data.split_sizes": [36, 12, 12]}).data  # fmt: skip
    small = load_splits(cfg, CFG32, progress=False)
    big = load_splits(cfg, dict(JAX_CFG, input_size=(3, 64, 64)), progress=False)
    assert small["train"].boxes.shape == (36, 4) and small["train"].classes == CLASSES
    assert data_provenance(small)["source"] == "synthetic"
    assert data_provenance(small)["synthetic"]["classes"]["cat"] == "three horizontal bars"
    # 32 px -> resized to floor(64 / 0.9) = 71 -> centre crop 64 (offset 4)
    expected = np.clip(small["train"].boxes * 71 / 32 - 4, 0, 64)
    assert np.allclose(big["train"].boxes, expected, atol=1e-3)
    for ds in (small, big):
        for box, img in zip(ds["val"].boxes, ds["val"].images, strict=True):
            x0, y0, x1, y1 = box
            g = np.asarray(img, float).mean(-1)
            cy, cx = np.unravel_index(np.argmax(g), g.shape)
            assert x0 - 1 <= cx <= x1 + 1 and y0 - 1 <= cy <= y1 + 1
