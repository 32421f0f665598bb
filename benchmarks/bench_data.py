"""Data speed: the decoded uint8 cache against decoding every JPEG every time, at 224 px.

    python -m benchmarks.bench_data [--quick]

On the real photographs of ../shared/data/dogs-vs-cats-128 when present (128 px JPEGs), else
on synthetic 128 px PNGs; then on the same pictures re-encoded at 500x375, the typical size of
Kaggle's originals, whose decoding the cache saves. The study's preprocessing (ViT-B/16:
224 px, crop_pct 0.9, bicubic, mean/std 0.5). Measured, single process unless a loader has
workers:

- item: `dataset[i]`, JPEG path (open, EXIF, RGB, resize, crop, normalise) vs cache (memmap
  read, normalise), each item dropped before the next is read, as a training loop uses it;
  the speed-up is the `cache vs JPEG` target (>= 10). Also with all items kept in a list, as
  this benchmark first measured: 512 outputs (308 MB) of fresh memory, so every item of
  either path faults in its 147 pages (about 1.5 us each on this VM), which costs the cache
  path as much as its own work.
- batch: 64 images as training reads them (`ImageDataset.batch` on the CPU: gather the
  uint8 rows, normalise) vs 64 JPEG items stacked. For a GPU run the uint8 batch goes to the
  GPU and is normalised there, so the CPU's share is the gather alone: measured too.
- loader: torch DataLoader, batch 64, 0 and 2 workers, over each dataset.
- build: the one-off cost of writing the cache (threads, as `load_splits` does).

torch runs single-threaded here: per-image tensors are small, and on a small shared CPU a
2-thread pool made `normalise` of one image 10-70x slower (3-20 ms instead of 0.3 ms).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import format_table, time_side_by_side, write_result
from vitlib.data import ImageDataset, build_cache, normalise, preprocess
from vitlib.images import load_image
from vitlib.manifest import build_manifest
from vitlib.synthetic import generate_synthetic

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-128"
CFG = dict(
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    input_size=(3, 224, 224),
    crop_pct=0.9,
    interpolation="bicubic",
)  # vit_base_patch16_224.orig_in21k_ft_in1k, the study's weights
BATCH = 64


class JpegDataset(torch.utils.data.Dataset):
    """The same items as ImageDataset, decoded and preprocessed from the file every time."""

    def __init__(self, paths: list[Path], labels: np.ndarray):
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = preprocess(load_image(self.paths[i]), CFG)
        return normalise(image, CFG["mean"], CFG["std"])[0], int(self.labels[i])


def _loader_rate(dataset: torch.utils.data.Dataset, workers: int, n: int) -> float:
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(n)), batch_size=BATCH, num_workers=workers
    )
    start = time.perf_counter()
    for _ in loader:
        pass
    return n / (time.perf_counter() - start)


def run(quick: bool = False) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool) -> dict[str, Any]:
    n = 256 if quick else 2000  # images in each cache
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if REAL.is_dir():
            root, source = REAL, "dogs-vs-cats-128: 128 px JPEG"
        else:
            root = generate_synthetic(scratch, per_class=n // 2 + 1, img_size=128)
            source = "synthetic: 128 px PNG (../shared absent)"
        manifest = build_manifest(root, split_sizes=(n, 0, 0), cache_dir=scratch, progress=False)
        rows += _measure(manifest, source, quick)
        # The same pictures at Kaggle's typical size (about 500x375), so decoding costs what
        # it does on the study's originals.
        big = scratch / "kaggle-size"
        big.mkdir()
        for p in manifest.split("train")[0]:
            img = load_image(manifest.root / p).resize((500, 375), Image.Resampling.BICUBIC)
            img.save(big / Path(p).name, quality=90)
        manifest = build_manifest(big, split_sizes=(n, 0, 0), cache_dir=scratch, progress=False)
        rows += _measure(manifest, f"{source.split(':')[0]}: re-encoded 500x375 JPEG", quick)
    result = {"images": n, "preprocessing": CFG, "torch": torch.__version__, "rows": rows}
    path = write_result("data", result)
    columns = [
        "source",
        "measure",
        "jpeg_img_s",
        "cache_img_s",
        "speedup",
        "speedup_all_kept",
        "loader_speedup",
    ]
    print(format_table(rows, columns))
    print(f"written {path}")
    return result


def _measure(manifest: Any, source: str, quick: bool) -> list[dict[str, Any]]:
    items = 64 if quick else 512  # items timed per call
    paths, labels = manifest.split("train")
    preprocess(load_image(manifest.root / paths[0]), CFG)  # imports done before timing
    start = time.perf_counter()
    images = build_cache(manifest, "train", CFG, progress=False)
    build_s = time.perf_counter() - start
    cached = ImageDataset(images, labels, paths, mean=CFG["mean"], std=CFG["std"])
    jpeg = JpegDataset([manifest.root / p for p in paths], labels)
    assert torch.equal(cached[0][0], jpeg[0][0])  # the same tensors, two ways
    idx = np.arange(BATCH)
    seconds = time_side_by_side(
        {
            "item_jpeg": lambda: [jpeg[i] is None for i in range(items)],
            "item_cache": lambda: [cached[i] is None for i in range(items)],
            "kept_jpeg": lambda: [jpeg[i] for i in range(items)],
            "kept_cache": lambda: [cached[i] for i in range(items)],
            "batch_jpeg": lambda: torch.stack([jpeg[i][0] for i in idx]),
            "batch_cache": lambda: cached.batch(idx, torch.device("cpu")),
            "batch_gather": lambda: torch.from_numpy(np.ascontiguousarray(images[idx])),
        },
        device="cpu",
        repeats=1 if quick else 3,
        warmup=1,
    )
    item = {k: items / seconds[f"item_{k}"] for k in ("jpeg", "cache")}
    kept = {k: items / seconds[f"kept_{k}"] for k in ("jpeg", "cache")}
    batch = {k: BATCH / seconds[f"batch_{k}"] for k in ("jpeg", "cache", "gather")}
    loader_n = min(len(paths), 256 if quick else 1024)
    loaders = {
        (name, workers): _loader_rate(ds, workers, loader_n)
        for name, ds in (("jpeg", jpeg), ("cache", cached))
        for workers in (0, 2)
    }
    rows = [
        {
            "source": source,
            "measure": "cache vs JPEG, dataset[i]",
            "jpeg_img_s": item["jpeg"],
            "cache_img_s": item["cache"],
            "speedup": item["cache"] / item["jpeg"],
        },
        {
            "source": source,
            "measure": f"dataset[i], all {items} kept",
            "jpeg_img_s": kept["jpeg"],
            "cache_img_s": kept["cache"],
            "speedup_all_kept": kept["cache"] / kept["jpeg"],
        },
        {
            "source": source,
            "measure": f"cache vs JPEG, batch of {BATCH}",
            "jpeg_img_s": batch["jpeg"],
            "cache_img_s": batch["cache"],
            "speedup": batch["cache"] / batch["jpeg"],
        },
        {
            "source": source,
            "measure": f"cache vs JPEG, batch of {BATCH}, CPU share of a GPU run",
            "jpeg_img_s": batch["jpeg"],
            "cache_img_s": batch["gather"],
            "speedup": batch["gather"] / batch["jpeg"],
        },
    ]
    rows += [
        {
            "source": source,
            "measure": f"DataLoader, {workers} workers",
            "jpeg_img_s": loaders["jpeg", workers],
            "cache_img_s": loaders["cache", workers],
            "loader_speedup": loaders["cache", workers] / loaders["jpeg", workers],
        }
        for workers in (0, 2)
    ]
    rows.append(
        {"source": source, "measure": "cache build, one-off", "cache_img_s": len(paths) / build_s}
    )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    run(quick=parser.parse_args().quick)
