"""Images as the model reads them: preprocessing, a decoded cache, and the dataset.

    datasets = load_splits(cfg.data, model.pretrained_cfg, seed=cfg.seed)
    x, y = datasets["train"][0]                        # (3, H, W) float, normalised; label
    x = datasets["train"].batch(idx, device, augment=True)   # (B, 3, H, W) on `device`

`load_splits` builds (or reuses) the folder's manifest (`vitlib.manifest`), or first generates
the synthetic set (`vitlib.synthetic`), then decodes each split once with `build_cache` to the
model's input size into a (n, H, W, 3) uint8 .npy read back as a memmap, keyed by the
manifest's content, the folder's file listing and the preprocessing; written to a temporary
name and renamed, so a killed build is never used, and checked against the sha256 sums beside
it on every open (size, header, a sample of images), so a damaged one is rebuilt.
`ImageDataset` serves it, by item or in batches that go to the device as uint8 and are
normalised there.

Preprocessing follows timm's eval transform from the model's `pretrained_cfg`: shorter side
resized to floor(size / crop_pct) with its interpolation, centre crop, then
(x / 255 - mean) / std.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vitlib.config import DataConfig
from vitlib.errors import DataError
from vitlib.files import atomic_path, atomic_write
from vitlib.images import load_image, parallel_map
from vitlib.manifest import CLASSES, GET_DATA, SPLITS, Manifest, build_manifest
from vitlib.synthetic import generate_synthetic, synthetic_boxes

__all__ = [
    "DataError",
    "ImageDataset",
    "build_cache",
    "data_provenance",
    "input_size",
    "load_splits",
    "normalise",
    "open_image",
    "preprocess",
]

log = logging.getLogger(__name__)


def input_size(pretrained_cfg: Mapping[str, Any]) -> int:
    """The model's square input side in pixels, from pretrained_cfg["input_size"] (3, H, W)."""
    _, h, w = pretrained_cfg["input_size"]
    if h != w:
        raise ValueError(f"only square inputs are supported, got input_size {(h, w)}")
    return int(h)


def _resize_size(pretrained_cfg: Mapping[str, Any]) -> int:
    # timm's transforms_imagenet_eval: scale_size = floor(img_size / crop_pct)
    return math.floor(input_size(pretrained_cfg) / pretrained_cfg.get("crop_pct", 1.0))


def preprocess(img: Image.Image, pretrained_cfg: Mapping[str, Any]) -> np.ndarray:
    """RGB PIL image -> (H, W, 3) uint8 at the model's input size, as timm's eval transform:
    shorter side to floor(size / crop_pct) with pretrained_cfg's interpolation, centre crop."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    size = input_size(pretrained_cfg)
    mode = InterpolationMode(pretrained_cfg.get("interpolation", "bicubic"))
    img = TF.resize(img, _resize_size(pretrained_cfg), interpolation=mode)
    return np.asarray(TF.center_crop(img, [size, size]), dtype=np.uint8).copy()


def normalise(images: Tensor | np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 images (B, H, W, 3) or (H, W, 3) -> float (B, 3, H, W): (x / 255 - mean) / std,
    the same float operations as torchvision's ToTensor + Normalize, on the images' device."""
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x[None]
    m, s = _channel_constants(tuple(mean), tuple(std), x.device)
    x = x.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    return x.div_(255).sub_(m).div_(s)  # (B, 3, H, W)


@functools.lru_cache(maxsize=8)
def _channel_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    """mean and std as (1, 3, 1, 1) float32 on `device`, made once rather than on every call."""
    return tuple(
        torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1) for v in (mean, std)
    )


# --------------------------------------------------------------------------------------------
# The decoded cache
# --------------------------------------------------------------------------------------------


_CACHE_VERSION = 1
_CHECKED_ROWS = 64  # images whose sha256 every open of a cache compares (spread over it)


def build_cache(
    manifest: Manifest,
    split: str,
    pretrained_cfg: Mapping[str, Any],
    *,
    progress: bool = True,
    workers: int = DataConfig.num_workers,
) -> np.ndarray:
    """One split decoded and preprocessed once: (n, H, W, 3) uint8, memory-mapped from disk.

    The file (`<split>-<H>px-<key>.npy` beside the manifest) is keyed by the manifest's content,
    the folder's file listing and the preprocessing (size, crop_pct, interpolation); it is
    written under a temporary name and renamed when complete. Decoding runs in `workers`
    threads (0: one per CPU). Beside it, `<file>.json` holds the sha256 of its header, of all
    its pixels and of each image. Every open checks the file's size, its header and
    `_CHECKED_ROWS` images spread over it (milliseconds, whatever its size; reading all of a
    3 GB cache would take seconds); a cache that fails is rebuilt, with a warning.
    """
    paths, _ = manifest.split(split)
    size = input_size(pretrained_cfg)
    shape = (len(paths), size, size, 3)
    if not paths:
        return np.zeros(shape, dtype=np.uint8)
    out = _cache_path(manifest, split, pretrained_cfg)
    if out.exists():
        cached, problem = _open_cache(out, shape)
        if cached is not None:
            return cached
        log.warning("the decoded cache %s %s; decoding the images again", out, problem)
    _remove_stale(out.parent, f"{split}-{size}px-*.npy*")
    with atomic_path(out) as tmp:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        decoded = parallel_map(
            lambda p: _decode(manifest.root, p, pretrained_cfg),
            paths,
            desc=f"decoding {split} ({size}px)",
            progress=progress,
            workers=workers,
        )
        pixels, rows = hashlib.sha256(), []
        for i, image in enumerate(decoded):
            images[i] = image
            pixels.update(images[i])
            rows.append(_row_sha256(images[i]))
        images.flush()
        header = _header(tmp, images.offset)
        del images
    record = {"version": _CACHE_VERSION, "shape": list(shape), "header_sha256": header,
              "sha256": pixels.hexdigest(), "rows": rows}  # fmt: skip
    atomic_write(_record_path(out), json.dumps(record))
    return np.load(out, mmap_mode="r")


def _cache_path(manifest: Manifest, split: str, pretrained_cfg: Mapping[str, Any]) -> Path:
    """`<split>-<H>px-<key>.npy` beside the manifest, keyed by what decides its pixels."""
    size = input_size(pretrained_cfg)
    key = hashlib.sha256(
        b"".join(
            [
                manifest.path.read_bytes(),
                manifest.fingerprint.encode(),
                repr((size, pretrained_cfg.get("crop_pct", 1.0))).encode(),
                str(pretrained_cfg.get("interpolation", "bicubic")).encode(),
            ]
        )
    ).hexdigest()[:12]
    return manifest.path.with_name(f"{split}-{size}px-{key}.npy")


def _decode(root: Path, path: str, pretrained_cfg: Mapping[str, Any]) -> np.ndarray:
    try:
        return preprocess(load_image(root / path), pretrained_cfg)
    except OSError as exc:  # checked when the folder was scanned: gone or changed since
        raise DataError(
            f"{root / path} could not be decoded ({exc}), though it could when {root} was "
            "scanned: it changed or went away since. Run again to scan the folder afresh."
        ) from exc


def _open_cache(
    path: Path, shape: tuple[int, ...], *, every_row: bool = False
) -> tuple[np.ndarray | None, str]:
    """(the cache, "") if `path` and its checksum record agree, else (None, what is wrong).
    `every_row` hashes every image rather than `_CHECKED_ROWS` of them."""
    try:
        images = np.load(path, mmap_mode="r")
        record = json.loads(_record_path(path).read_text())
        digests, header = record["rows"], record["header_sha256"]
    except FileNotFoundError:
        return None, "has no checksum record beside it"
    except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        return None, f"is unreadable ({type(exc).__name__}: {exc})"
    if images.shape != shape or images.dtype != np.uint8 or len(digests) != shape[0]:
        return None, f"holds {images.dtype} {images.shape}, not uint8 {shape}"
    if path.stat().st_size != images.offset + images.nbytes:
        return None, "is not the size its header says (cut short or added to)"
    if _header(path, images.offset) != header:
        return None, "has a header other than the one it was written with"
    n = shape[0]
    sample = np.linspace(0, n - 1, min(n, _CHECKED_ROWS)).round().astype(int)
    rows = range(n) if every_row else sorted(set(sample.tolist()))
    changed = [i for i in rows if _row_sha256(images[i]) != digests[i]]
    if changed:
        return None, f"has images other than those it was built with (rows {changed[:5]}...)"
    return images, ""


def _record_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".json")  # matches the stale-cache pattern too


def _header(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(offset)).hexdigest()


def _row_sha256(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image)).hexdigest()[:16]


def _remove_stale(folder: Path, pattern: str) -> None:
    """Delete caches a new build replaces, and temporaries of builds no longer running."""
    for old in [*folder.glob(pattern), *folder.glob(f".{pattern}")]:
        pid = old.name.rsplit(".tmp-", 1)[1] if ".tmp-" in old.name else None
        if pid is not None and pid.isdigit() and _running(int(pid)):
            continue  # another process is writing it
        old.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset):
    """Images of one split, served from the decoded uint8 cache.

    `dataset[i]` is (image (3, H, W) float normalised with mean/std, label int);
    `dataset.batch(idx, device)` is the images (B, 3, H, W) of positions `idx` on `device`, and
    `dataset.labels[idx]` their labels. With `augment` (DataConfig.augment, train split only)
    items, and batches asked for with `augment=True`, are randomly cropped (scale 0.5-1,
    resized back) and flipped.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        paths: Sequence[str],
        *,
        classes: Sequence[str] = CLASSES,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        boxes: np.ndarray | None = None,
        augment: bool = False,
        split: str = "",
        info: dict[str, Any] | None = None,
    ):
        if not len(images) == len(labels) == len(paths):
            raise ValueError(f"{len(images)} images, {len(labels)} labels, {len(paths)} paths")
        self.images = images  # (n, H, W, 3) uint8, un-normalised
        self.labels = np.asarray(labels, dtype=np.int64)  # (n,)
        self.paths = list(paths)  # the source file of each item
        self.classes = tuple(classes)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.boxes = boxes  # synthetic only: (n, 4) x0, y0, x1, y1 in cached-image pixels
        self.augment = augment
        self.split = split
        self.info = info if info is not None else {}  # shared by the splits of one load

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = torch.from_numpy(np.array(self.images[i]))[None]  # (1, H, W, 3)
        if self.augment:
            image = self.augment_batch(image)
        return self.normalise(image)[0], int(self.labels[i])

    def batch(
        self, idx: np.ndarray | Sequence[int], device: torch.device, *, augment: bool = False
    ) -> Tensor:
        """Normalised images (B, 3, H, W) of positions `idx` on `device`, read from the uint8
        cache (B, H, W, 3); with `augment`, randomly transformed first if this dataset augments
        (torch's global RNG, which checkpoints save, so a resumed run draws the same).

        The uint8 batch goes to the device and is normalised there: a quarter of the bytes to
        copy, and for a GPU run the CPU only gathers (a float batch of 64 at 224 px is 38 MB
        of fresh memory, whose page faults cost more than the arithmetic)."""
        images = torch.from_numpy(np.ascontiguousarray(self.images[np.asarray(idx)]))
        if augment and self.augment:
            images = self.augment_batch(images)
        return self.normalise(images.to(device, non_blocking=True))

    def normalise(self, images_uint8: Tensor | np.ndarray) -> Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, (x / 255 - mean) / std."""
        return normalise(images_uint8, self.mean, self.std)

    def augment_batch(self, images_uint8: Tensor) -> Tensor:
        """(B, H, W, 3) uint8 -> the same, each image randomly resized-cropped and flipped
        (torch's global RNG); unchanged when `augment` is off."""
        if not self.augment:
            return images_uint8
        from torchvision import transforms as T

        size = images_uint8.shape[1:3]
        aug = T.Compose([T.RandomResizedCrop(size, scale=(0.5, 1.0)), T.RandomHorizontalFlip()])
        chw = images_uint8.permute(0, 3, 1, 2)  # (B, 3, H, W)
        return torch.stack([aug(img) for img in chw]).permute(0, 2, 3, 1).contiguous()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if isinstance(self.images, np.memmap) and self.images.filename:
            state["images"] = Path(self.images.filename)  # workers reopen, not copy, the cache
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["images"], Path):
            state["images"] = np.load(state["images"], mmap_mode="r")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.images.shape[1:3]))
        counts = ", ".join(
            f"{c} {int((self.labels == k).sum())}" for k, c in enumerate(self.classes)
        )
        return f"ImageDataset({self.split or '?'}: {len(self)} images {shape}, {counts})"


def load_splits(
    data_cfg: DataConfig,
    pretrained_cfg: Mapping[str, Any],
    *,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, ImageDataset]:
    """Build or reuse the manifest and decoded cache; return {"train", "val", "test"} datasets.

    data_cfg.source "synthetic" generates the two-class shape set under data_cfg.cache_dir
    first; "folder" reads data_cfg.root in any layout of LAYOUTS. `seed` fixes the split.
    """
    synthetic = data_cfg.source == "synthetic"
    manifest = build_manifest(
        _source_folder(data_cfg),
        split_sizes=data_cfg.split_sizes,
        seed=seed,
        cache_dir=data_cfg.cache_dir,
        progress=progress,
        workers=data_cfg.num_workers,
    )
    boxes = None
    if synthetic:
        sizes = {"resized": _resize_size(pretrained_cfg), "size": input_size(pretrained_cfg)}
        boxes = synthetic_boxes(manifest.root, **sizes)
    info = _load_info(manifest, data_cfg, pretrained_cfg, seed)
    datasets = {}
    for split in SPLITS:
        paths, labels = manifest.split(split)
        images = build_cache(
            manifest, split, pretrained_cfg, progress=progress, workers=data_cfg.num_workers
        )
        if isinstance(images, np.memmap):
            info["cache"][split] = str(Path(images.filename).resolve())
        datasets[split] = ImageDataset(
            images,
            labels,
            [str(manifest.root / p) for p in paths],
            classes=manifest.classes,
            mean=pretrained_cfg["mean"],
            std=pretrained_cfg["std"],
            boxes=None if boxes is None else np.array([boxes[p] for p in paths], np.float32),
            augment=data_cfg.augment and split == "train",
            split=split,
            info=info,
        )
    return datasets


def _source_folder(data_cfg: DataConfig) -> Path:
    """The folder to read: the synthetic set (generated first if missing), or data_cfg.root."""
    if data_cfg.source == "synthetic":
        return generate_synthetic(
            data_cfg.cache_dir,
            per_class=data_cfg.synthetic_per_class,
            img_size=data_cfg.synthetic_img_size,
            seed=data_cfg.synthetic_seed,
        )
    if data_cfg.source == "folder":
        if not data_cfg.root:
            raise DataError(f"no data folder given (DataConfig.root is empty). {GET_DATA}")
        return Path(data_cfg.root)
    raise DataError(f"unknown data source {data_cfg.source!r}; expected 'synthetic' or 'folder'")


def _load_info(
    manifest: Manifest, data_cfg: DataConfig, pretrained_cfg: Mapping[str, Any], seed: int
) -> dict[str, Any]:
    """What one load_splits read (the splits share it; `data_provenance` reports it)."""
    synthetic = data_cfg.source == "synthetic"
    info: dict[str, Any] = {
        "source": "synthetic" if synthetic else str(manifest.root),
        "root": str(manifest.root),
        "layout": manifest.layout,
        "classes": list(manifest.classes),
        "seed": seed,
        "split_sizes": list(manifest.split_sizes),
        "manifest": str(manifest.path.resolve()),
        "manifest_sha256": manifest.sha256,
        "skipped": len(manifest.skipped),
        "skipped_list": str(manifest.skipped_path.resolve()),
        "preprocessing": {
            k: pretrained_cfg.get(k)
            for k in ("input_size", "crop_pct", "interpolation", "mean", "std")
        },
        "augment": data_cfg.augment,
        "cache": {},
    }
    if synthetic:
        info["synthetic"] = json.loads((manifest.root / "synthetic.json").read_text())
    return info


def data_provenance(datasets: Mapping[str, ImageDataset] | ImageDataset) -> dict[str, Any]:
    """Where the images came from: source ("synthetic" or the folder), layout, manifest path and
    sha256, images per split and class, skipped-file count and list, preprocessing, caches."""
    if isinstance(datasets, ImageDataset):
        datasets = {datasets.split or "data": datasets}
    first = next(iter(datasets.values()))
    out = json.loads(json.dumps(first.info, default=list))  # a deep, JSON-ready copy
    out["counts"] = {
        split: {c: int((ds.labels == k).sum()) for k, c in enumerate(ds.classes)}
        for split, ds in datasets.items()
    }
    return out


def open_image(
    source: str | Path | Image.Image | int,
    pretrained_cfg: Mapping[str, Any],
    dataset: ImageDataset | None = None,
) -> tuple[Tensor, np.ndarray]:
    """Any image for the attention figures: a path, a PIL image, or an index into `dataset`.

    Returns (normalised tensor (3, H, W), display image (H, W, 3) uint8) at the model's input
    size, preprocessed exactly as the datasets are.
    """
    if isinstance(source, (int, np.integer)):
        if dataset is None:
            raise ValueError("an index needs the dataset it indexes: open_image(i, cfg, dataset)")
        display = np.array(dataset.images[int(source)])
        if display.shape[0] != input_size(pretrained_cfg):
            raise ValueError(
                f"dataset images are {display.shape[0]}px, the model takes "
                f"{input_size(pretrained_cfg)}px"
            )
    else:
        display = preprocess(load_image(source), pretrained_cfg)
    tensor = normalise(display, pretrained_cfg["mean"], pretrained_cfg["std"])[0]
    return tensor, display


if __name__ == "__main__":  # `python -m vitlib.data ...`, the older spelling of `vitlib data`
    from vitlib.__main__ import main

    sys.exit(main(["data", *sys.argv[1:]]))
