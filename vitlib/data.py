"""Dogs vs Cats images: folder layouts, the study's split, bad files, preprocessing, a decoded
cache, and a synthetic two-class set for offline runs.

Report section 3.1: 20,000 / 2,000 / 2,000 train / val / test images of cats and dogs.

    datasets = load_splits(cfg.data, model.pretrained_cfg, seed=cfg.seed)
    x, y = datasets["train"][0]          # (3, H, W) float, normalised; 0 = cat, 1 = dog

    python -m vitlib.data inspect DIR    # layout, counts per split and class, skipped files
    python -m vitlib.data download --source petimages --dest data/

The pipeline, each step cached under `DataConfig.cache_dir` and redone only when its inputs
change:

1. `scan_folder` recognises the layout (`LAYOUTS`) from file and folder names alone and lists
   the labelled files. Hidden files, `Thumbs.db`, unlabelled names and files outside the layout
   are skipped with a reason.
2. `build_manifest` opens every image once, in threads with a progress bar; zero-byte,
   truncated, non-image and unreadable files are skipped with a reason, good ones never dropped.
   It then splits the labelled images (`split_items`): deterministic (a hash of seed and path
   orders each class, so every machine gets the same split from the same files), stratified,
   sized by `split_sizes`. It writes `manifest.csv` (path relative to the folder, label, split)
   and `skipped.csv` (path, reason) side by side.
3. `build_cache` decodes each split once to the model's input size into a (n, H, W, 3) uint8
   .npy read back as a memmap, keyed by the manifest's content, the folder's file listing and
   the preprocessing; written to a temporary name and renamed, so a killed build is never used.
4. `ImageDataset` serves normalised tensors from that cache, by item or in batches.

Preprocessing follows timm's eval transform from the model's `pretrained_cfg`: EXIF rotation
undone, any mode made RGB (transparency over white), shorter side resized to
floor(size / crop_pct) with its interpolation, centre crop, then (x / 255 - mean) / std.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import stat
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError
from torch import Tensor
from tqdm.auto import tqdm

from vitlib.config import DataConfig
from vitlib.files import atomic_write

__all__ = [
    "CLASSES",
    "LAYOUTS",
    "SPLITS",
    "DataError",
    "ImageDataset",
    "Manifest",
    "build_cache",
    "build_manifest",
    "data_provenance",
    "draw_synthetic",
    "generate_synthetic",
    "input_size",
    "load_image",
    "load_splits",
    "normalise",
    "open_image",
    "preprocess",
    "scan_folder",
    "split_items",
]

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("cat", "dog")  # label 0 = cat, 1 = dog
SPLITS: tuple[str, ...] = ("train", "val", "test")
UNUSED = "unused"  # manifest rows beyond split_sizes: listed, so no good image goes missing

LAYOUTS: dict[str, str] = {
    "kaggle": "flat files named <class>.<id>.<ext>: train/cat.123.jpg, dog.45.jpg (Kaggle)",
    "petimages": "PetImages/Cat/*.jpg and PetImages/Dog/*.jpg (Microsoft's kagglecatsanddogs zip)",
    "oxford-pets": "flat files named <Breed>_<n>.jpg, cat breeds capitalised (Oxford-IIIT Pet)",
    "imagefolder": "<root>/<class>/*.jpg, any class names in any case (Cat/, dogs/, ...)",
    "presplit": "<root>/train/ with val/ and/or test/ (or valid/), each in a layout above",
}
# The Oxford-IIIT Pet cat breeds; its file names capitalise exactly these (dogs are lower case).
OXFORD_CAT_BREEDS = (
    "Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau",
    "Maine_Coon", "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx",
)  # fmt: skip

GET_DATA = (
    "Get photos with `python -m vitlib.data download --source petimages --dest data/` (then "
    "--data data/petimages), or point vitlib at a folder you have with --data DIR "
    "(`make report DATA=DIR`, DataConfig.root); profile smoke needs no photos."
)

_SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}  # fmt: skip
_KAGGLE_NAME = re.compile(r"^([A-Za-z]+)\.[^./]+\.[A-Za-z0-9]+$")
_OXFORD_NAME = re.compile(r"^([A-Za-z]+(?:_[A-Za-z]+)*)_\d+\.[A-Za-z0-9]+$")
_SYSTEM_FILES = {
    "thumbs.db": "Thumbs.db (Windows thumbnail cache)",
    "desktop.ini": "desktop.ini (Windows folder settings)",
}
_SCAN_VERSION = 1
_SYNTHETIC_VERSION = 1


class DataError(ValueError):
    """The data folder is missing, unrecognised or unusable; the message says what to do."""


# --------------------------------------------------------------------------------------------
# One image: decoding and preprocessing
# --------------------------------------------------------------------------------------------


def load_image(source: str | Path | Image.Image) -> Image.Image:
    """An image file (or PIL image) as an upright RGB PIL image.

    EXIF orientation is applied (ImageOps.exif_transpose); grayscale, palette, CMYK and
    16-bit images become RGB; transparent pixels are composited over white.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        with Image.open(source) as f:
            f.load()
            img = f
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # a corrupt EXIF block: keep the pixels as stored
        log.debug("EXIF orientation of %s not applied: %s", source, exc)
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit grey: scale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        if arr.max(initial=0) > 255:
            arr = arr / 257.0
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")
    if "A" in img.mode or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


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


def _check_image(path: Path) -> str | None:
    """Why `path` is not a usable image, or None if it decodes fully."""
    try:
        st = path.stat()
    except OSError as exc:  # e.g. a dangling symlink
        return f"unreadable ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still every byte read
            img.load()
            _to_rgb(img)
    except UnidentifiedImageError:
        return "not an image (format not recognised)"
    except Image.DecompressionBombError:
        return "too large (over PIL's decompression-bomb limit)"
    except PermissionError:
        return "unreadable (permission denied)"
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        if "truncated" in str(exc).lower():
            return f"truncated image ({exc})"
        return f"corrupt image ({type(exc).__name__}: {exc})"
    return None


# --------------------------------------------------------------------------------------------
# Finding the labelled files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderScan:
    """What `scan_folder` found from names alone (images not opened yet)."""

    root: Path
    layout: str
    classes: tuple[str, ...]
    files: tuple[tuple[str, str, str | None], ...]  # (path under root, class, source split)
    skipped: tuple[tuple[str, str], ...]  # (path under root, reason)
    fingerprint: str  # sha256 of every file's path, size and mtime


def scan_folder(root: str | Path) -> FolderScan:
    """Recognise the layout of `root` (see LAYOUTS) and list its labelled files.

    Raises DataError naming the accepted layouts when the folder is missing, empty or in no
    layout vitlib knows.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist. {GET_DATA}")
    paths, skipped, fingerprint = _walk(root)
    splits = _split_folders(paths)
    if "train" in splits or len(splits) >= 2:
        return _scan_presplit(root, paths, skipped, splits, fingerprint)
    found = _scan_labelled(paths, "")
    if found is None:
        raise _unrecognised(root, paths)
    layout, files, more = found
    return _finish(root, layout, [(p, c, None) for p, c in files], skipped + more, fingerprint)


def _walk(root: Path) -> tuple[list[str], list[tuple[str, str]], str]:
    """Visible files under root (posix paths), hidden/system entries skipped, fingerprint."""
    paths: list[str] = []
    skipped: list[tuple[str, str]] = []
    digest = hashlib.sha256()

    def visit(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            rel = prefix + e.name
            is_dir = e.is_dir()  # follows symlinks
            if e.name == "__MACOSX":
                skipped.append((rel + "/", "macOS resource folder"))
                continue
            if e.name.startswith("."):
                skipped.append((rel + "/", "hidden folder") if is_dir else (rel, "hidden file"))
                continue
            if is_dir:
                visit(Path(e.path), rel + "/")
                continue
            try:
                st = e.stat()
                digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{rel}\t?\n".encode())  # dangling link: found unreadable later
            if e.name.lower() in _SYSTEM_FILES:
                skipped.append((rel, _SYSTEM_FILES[e.name.lower()]))
            else:
                paths.append(rel)

    visit(root, "")
    return paths, skipped, digest.hexdigest()


def _split_folders(paths: Iterable[str]) -> dict[str, list[str]]:
    """{split: [top-level folder names]} for the train/val/test folders among `paths`."""
    out: dict[str, list[str]] = {}
    for top in sorted({p.split("/", 1)[0] for p in paths if "/" in p}):
        if top.lower() in _SPLIT_NAMES:
            out.setdefault(_SPLIT_NAMES[top.lower()], []).append(top)
    return out


def _class_name(name: str) -> str:
    name = name.strip().lower()
    return name[:-1] if name.endswith("s") and name[:-1] in CLASSES else name  # "Cats" -> cat


def _scan_labelled(
    paths: Sequence[str], prefix: str
) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]] | None:
    """(layout, [(path, class)], [(path, reason)]) for the files under `prefix`, or None."""
    local = [p[len(prefix) :] for p in paths if p.startswith(prefix)]
    top = [p for p in local if "/" not in p]
    nested = [p for p in local if "/" in p]
    files: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    pets = {p.split("/", 1)[0] for p in nested if p.split("/", 1)[0].lower() == "petimages"}
    if pets:
        for p in local:
            parts = p.split("/")
            if parts[0] in pets and len(parts) >= 3:
                files.append((prefix + p, _class_name(parts[1])))
            else:
                skipped.append((prefix + p, "outside PetImages/<class>/"))
        return "petimages", files, skipped
    kaggle = sum(bool(_KAGGLE_NAME.match(p)) for p in top)
    oxford = sum(bool(_OXFORD_NAME.match(p)) for p in top)
    if max(kaggle, oxford) > 0 and max(kaggle, oxford) >= len(nested):
        layout = "kaggle" if kaggle >= oxford else "oxford-pets"
        for p in top:
            label = _flat_label(p, layout)
            if label is None:
                pattern = "<class>.<id>.<ext>" if layout == "kaggle" else "<Breed>_<n>.<ext>"
                skipped.append((prefix + p, f"name not of the form {pattern}: no label"))
            else:
                files.append((prefix + p, label))
        skipped += [(prefix + p, f"in a subfolder of a flat ({layout}) folder") for p in nested]
        return layout, files, skipped
    if nested:
        files = [(prefix + p, _class_name(p.split("/", 1)[0])) for p in nested]
        skipped = [(prefix + p, "outside the class folders") for p in top]
        return "imagefolder", files, skipped
    return None


def _flat_label(name: str, layout: str) -> str | None:
    if layout == "kaggle":
        m = _KAGGLE_NAME.match(name)
        return _class_name(m.group(1)) if m else None
    m = _OXFORD_NAME.match(name)
    if not m:
        return None
    return "cat" if name[0].isupper() else "dog"  # Oxford-IIIT Pet's naming convention


def _scan_presplit(
    root: Path,
    paths: list[str],
    skipped: list[tuple[str, str]],
    splits: dict[str, list[str]],
    fingerprint: str,
) -> FolderScan:
    if "train" not in splits:
        raise DataError(
            f"{root} has {', '.join(sorted(splits))} folders but no train/ folder; a pre-split "
            f"folder needs train/ (val/ and test/ are carved out of it when missing). {GET_DATA}"
        )
    files: list[tuple[str, str, str | None]] = []
    layouts = []
    in_split = set()
    for split in SPLITS:
        for folder in splits.get(split, []):
            prefix = folder + "/"
            found = _scan_labelled(paths, prefix)
            in_split.update(p for p in paths if p.startswith(prefix))
            if found is None:
                if split == "train":
                    raise _unrecognised(root / folder, [p for p in paths if p.startswith(prefix)])
                skipped += [
                    (p, f"{folder}/ is in no known layout") for p in paths if p.startswith(prefix)
                ]
                continue
            layout, labelled, more = found
            layouts.append(f"{folder}: {layout}")
            files += [(p, c, split) for p, c in labelled]
            skipped += more
    skipped += [(p, "not inside a train/val/test folder") for p in paths if p not in in_split]
    return _finish(root, f"presplit ({', '.join(layouts)})", files, skipped, fingerprint)


def _finish(
    root: Path,
    layout: str,
    files: list[tuple[str, str, str | None]],
    skipped: list[tuple[str, str]],
    fingerprint: str,
) -> FolderScan:
    if not files:
        raise _unrecognised(root, [])
    return FolderScan(
        root, layout, _classes(c for _, c, _ in files), tuple(sorted(files)),
        tuple(sorted(skipped)), fingerprint,
    )  # fmt: skip


def _classes(names: Iterable[str]) -> tuple[str, ...]:
    """CLASSES (cat = 0, dog = 1) when the names are among them, else the names sorted."""
    found = sorted(set(names))
    return CLASSES if set(found) <= set(CLASSES) else tuple(found)


def _unrecognised(root: Path, paths: Sequence[str]) -> DataError:
    what = (
        f"it holds {len(paths)} files, none named like <class>.<id>.jpg or <Breed>_<n>.jpg, "
        "and no class folders"
        if paths
        else "it holds no usable files"
    )
    accepted = "\n".join(f"  {name:12s} {text}" for name, text in LAYOUTS.items())
    return DataError(
        f"could not recognise the images in {root}: {what}. Accepted layouts:\n{accepted}\n"
        f"{GET_DATA}"
    )


# --------------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------------


def split_items(
    files: Iterable[tuple[str, str, str | None]],
    split_sizes: Sequence[int],
    *,
    seed: int = 0,
) -> list[tuple[str, str, str]]:
    """Assign (path, class, source split or None) items to train/val/test/unused.

    One pool (no source splits): val, then test, then train are drawn from it, each stratified
    (in proportion to the classes left in the pool, largest remainders) with `split_sizes`
    (train, val, test) images; the rest is "unused". Pre-split: each present split is kept
    (subsampled to its size when larger); a missing val or test is carved out of train,
    stratified, before train's own draw. If a pool is smaller than what is asked of it, the
    sizes are scaled down in proportion (logged). Each class is ordered by sha256(seed, path): the same seed and files
    give the same split everywhere, whatever order the files were listed in, and val/test do
    not change when only the train size does.
    """
    sizes = dict(zip(SPLITS, (int(s) for s in split_sizes), strict=True))
    pools: dict[str | None, list[tuple[str, str]]] = {}
    for path, cls, source in files:
        pools.setdefault(source, []).append((path, cls))
    if set(pools) == {None}:
        plan = {None: ["val", "test", "train"]}
    else:
        if None in pools or "train" not in pools:
            raise DataError("a pre-split folder needs usable images in train/ to split")
        missing = [s for s in ("val", "test") if s not in pools]
        plan = {s: ([*missing, "train"] if s == "train" else [s]) for s in pools}
    rows: list[tuple[str, str, str]] = []
    for source, targets in plan.items():
        rows += _draw(pools[source], [(t, sizes[t]) for t in targets], seed, source)
    order = {s: i for i, s in enumerate((*SPLITS, UNUSED))}
    return sorted(rows, key=lambda r: (order[r[2]], r[0]))


def _draw(
    pool: list[tuple[str, str]], targets: list[tuple[str, int]], seed: int, source: str | None
) -> list[tuple[str, str, str]]:
    asked = sum(n for _, n in targets)
    if len(targets) == 1:  # a split of a pre-split folder: kept whole, or subsampled
        targets = [(targets[0][0], min(asked, len(pool)))]
    elif asked > len(pool):  # val, test, train from one pool: scaled, train takes the rest
        scaled = [n * len(pool) // asked for _, n in targets]
        scaled[-1] += len(pool) - sum(scaled)
        log.warning(
            "%s has %d images, %d asked (%s); using %s",
            f"{source}/" if source else "the folder",
            len(pool),
            asked,
            ", ".join(f"{t} {n}" for t, n in targets),
            ", ".join(f"{t} {n}" for (t, _), n in zip(targets, scaled, strict=True)),
        )
        targets = [(t, n) for (t, _), n in zip(targets, scaled, strict=True)]
    by_class: dict[str, list[str]] = {}
    for path, cls in pool:
        by_class.setdefault(cls, []).append(path)
    classes = sorted(by_class)
    for cls in classes:
        by_class[cls].sort(key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).digest())
    counts = np.array([len(by_class[c]) for c in classes])
    taken = np.zeros_like(counts)
    rows = []
    for name, n in targets:
        quota = _apportion(n, counts - taken, counts - taken)  # in proportion to what is left
        for c, cls in enumerate(classes):
            rows += [(p, cls, name) for p in by_class[cls][taken[c] : taken[c] + quota[c]]]
        taken += quota
    for c, cls in enumerate(classes):
        rows += [(p, cls, UNUSED) for p in by_class[cls][taken[c] :]]
    return rows


def _apportion(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """`total` split in proportion to `weights` (largest remainders), each part <= its cap."""
    raw = total * weights / max(weights.sum(), 1)
    quota = np.minimum(np.floor(raw).astype(int), caps)
    order = sorted(range(len(weights)), key=lambda i: (-(raw[i] - math.floor(raw[i])), i))
    while quota.sum() < total:
        for i in order:
            if quota.sum() < total and quota[i] < caps[i]:
                quota[i] += 1
    return quota


# --------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A folder's labelled images with their split, and the files skipped with a reason."""

    root: Path
    layout: str
    classes: tuple[str, ...]
    rows: tuple[tuple[str, str, str], ...]  # (path relative to root, class, split)
    skipped: tuple[tuple[str, str], ...]  # (path relative to root, reason)
    path: Path  # manifest.csv; skipped.csv and manifest.json lie beside it
    seed: int
    split_sizes: tuple[int, int, int]
    fingerprint: str  # of the folder's file listing

    @property
    def skipped_path(self) -> Path:
        return self.path.with_name("skipped.csv")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def split(self, name: str) -> tuple[list[str], np.ndarray]:
        """(paths relative to root, labels (n,) int64) of one split, in manifest order."""
        rows = [(p, c) for p, c, s in self.rows if s == name]
        index = {c: i for i, c in enumerate(self.classes)}
        return [p for p, _ in rows], np.array([index[c] for _, c in rows], dtype=np.int64)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: images}} for train/val/test and the unused rest."""
        tally = Counter((s, c) for _, c, s in self.rows)
        return {s: {c: tally[s, c] for c in self.classes} for s in (*SPLITS, UNUSED)}


def build_manifest(
    root: str | Path,
    *,
    split_sizes: Sequence[int] = DataConfig.split_sizes,
    seed: int = 0,
    cache_dir: str | Path = DataConfig.cache_dir,
    progress: bool = True,
) -> Manifest:
    """Scan `root`, check every image once, split, and write the manifest under `cache_dir`.

    The image check is stored (scan.json, keyed by the folder's file listing) and the manifest
    per seed and sizes (`<cache_dir>/<folder>-<hash>/s<seed>-<train>-<val>-<test>/`); both are
    reused while the folder's files (names, sizes, mtimes) stay the same.
    """
    scan = scan_folder(root)
    work = Path(cache_dir) / _folder_key(scan.root)
    good, bad = _checked_files(scan, work / "scan.json", progress)
    if not good:
        raise DataError(f"no image in {scan.root} could be read ({len(bad)} tried). {GET_DATA}")
    found = {c for _, c, _ in good}
    classes = _classes(found)  # a name whose every file is bad is no class
    if len(found) < 2:
        log.warning("%s: images of one class only (%s)", scan.root, ", ".join(found))
    sizes = tuple(int(s) for s in split_sizes)
    rows = split_items(good, sizes, seed=seed)
    skipped = tuple(sorted((*scan.skipped, *bad)))
    out = work / f"s{seed}-{'-'.join(map(str, sizes))}"
    manifest = Manifest(
        scan.root.resolve(), scan.layout, classes, tuple(rows), skipped,
        out / "manifest.csv", seed, sizes, scan.fingerprint,
    )  # fmt: skip
    _write_if_changed(manifest.path, _csv(("path", "label", "split"), rows))
    _write_if_changed(manifest.skipped_path, _csv(("path", "reason"), skipped))
    meta = {
        "root": str(manifest.root),
        "layout": scan.layout,
        "classes": list(classes),
        "seed": seed,
        "split_sizes": list(sizes),
        "counts": manifest.counts(),
        "skipped": len(skipped),
        "fingerprint": scan.fingerprint,
    }
    _write_if_changed(out / "manifest.json", json.dumps(meta, indent=2) + "\n")
    return manifest


def _folder_key(root: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name) or "root"
    return f"{slug}-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]}"


def _checked_files(
    scan: FolderScan, record: Path, progress: bool
) -> tuple[list[tuple[str, str, str | None]], list[tuple[str, str]]]:
    """(good files, [(path, reason)] for bad ones), from `record` if the listing is unchanged."""
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("version") == _SCAN_VERSION and saved.get("fingerprint") == scan.fingerprint:
            return [tuple(f) for f in saved["good"]], [tuple(b) for b in saved["bad"]]
    reasons = list(
        _parallel(
            lambda f: _check_image(scan.root / f[0]),
            scan.files,
            desc=f"checking {scan.root.name}",
            progress=progress,
        )
    )
    good = [f for f, why in zip(scan.files, reasons, strict=True) if why is None]
    bad = [(f[0], why) for f, why in zip(scan.files, reasons, strict=True) if why is not None]
    if bad:
        tally = Counter(why.split(" (")[0] for _, why in bad)
        summary = ", ".join(f"{n} {reason}" for reason, n in tally.items())
        log.warning("%s: %d of %d images skipped: %s", scan.root, len(bad), len(reasons), summary)
    payload = {"version": _SCAN_VERSION, "fingerprint": scan.fingerprint, "good": good, "bad": bad}
    _write_if_changed(record, json.dumps(payload))
    return good, bad


T = TypeVar("T")
R = TypeVar("R")


def _parallel(
    fn: Callable[[T], R], items: Sequence[T], *, desc: str, progress: bool, chunk: int = 256
) -> Iterator[R]:
    """Yield fn(item) in order, computed in threads (PIL releases the GIL while decoding) a
    chunk at a time, so memory stays bounded; with a progress bar."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with (
        ThreadPoolExecutor(max(1, min(8, cpus or 1))) as pool,
        tqdm(total=len(items), desc=desc, unit="img", disable=not progress) as bar,
    ):
        for start in range(0, len(items), chunk):
            for result in pool.map(fn, items[start : start + chunk]):
                bar.update()
                yield result


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _write_if_changed(path: Path, text: str) -> None:
    """Write atomically, and not at all when the text is the same."""
    if path.exists() and path.read_text() == text:
        return
    atomic_write(path, text)


# --------------------------------------------------------------------------------------------
# The decoded cache
# --------------------------------------------------------------------------------------------


def build_cache(
    manifest: Manifest,
    split: str,
    pretrained_cfg: Mapping[str, Any],
    *,
    progress: bool = True,
) -> np.ndarray:
    """One split decoded and preprocessed once: (n, H, W, 3) uint8, memory-mapped from disk.

    The file (`<split>-<H>px-<key>.npy` beside the manifest) is keyed by the manifest's content,
    the folder's file listing and the preprocessing (size, crop_pct, interpolation); it is
    written under a temporary name and renamed when complete.
    """
    paths, _ = manifest.split(split)
    size = input_size(pretrained_cfg)
    shape = (len(paths), size, size, 3)
    if not paths:
        return np.zeros(shape, dtype=np.uint8)
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
    out = manifest.path.with_name(f"{split}-{size}px-{key}.npy")
    if out.exists():
        cached = np.load(out, mmap_mode="r")
        if cached.shape == shape and cached.dtype == np.uint8:
            return cached
    _remove_stale(out.parent, f"{split}-{size}px-*.npy*")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    try:
        decoded = _parallel(
            lambda p: preprocess(load_image(manifest.root / p), pretrained_cfg),
            paths,
            desc=f"decoding {split} ({size}px)",
            progress=progress,
        )
        for i, image in enumerate(decoded):
            images[i] = image
        images.flush()
        del images
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return np.load(out, mmap_mode="r")


def _remove_stale(folder: Path, pattern: str) -> None:
    """Delete caches a new build replaces, and temporaries of builds no longer running."""
    for old in folder.glob(pattern):
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

    `dataset[i]` is (image (3, H, W) float normalised with mean/std, label int); for batches,
    `dataset.normalise(torch.from_numpy(dataset.images[idx]))`. With `augment` (DataConfig.
    augment, train split only) items are randomly cropped (scale 0.5-1, resized back) and
    flipped; batch readers call `augment_batch` themselves.
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
    if synthetic:
        root = generate_synthetic(
            data_cfg.cache_dir,
            per_class=data_cfg.synthetic_per_class,
            img_size=data_cfg.synthetic_img_size,
            seed=data_cfg.synthetic_seed,
        )
    elif data_cfg.source == "folder":
        if not data_cfg.root:
            raise DataError(f"no data folder given (DataConfig.root is empty). {GET_DATA}")
        root = Path(data_cfg.root)
    else:
        raise DataError(
            f"unknown data source {data_cfg.source!r}; expected 'synthetic' or 'folder'"
        )
    manifest = build_manifest(
        root,
        split_sizes=data_cfg.split_sizes,
        seed=seed,
        cache_dir=data_cfg.cache_dir,
        progress=progress,
    )
    boxes = _synthetic_boxes(manifest.root, pretrained_cfg) if synthetic else None
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
    datasets = {}
    for split in SPLITS:
        paths, labels = manifest.split(split)
        images = build_cache(manifest, split, pretrained_cfg, progress=progress)
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


# --------------------------------------------------------------------------------------------
# The synthetic set
# --------------------------------------------------------------------------------------------


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
    root = Path(out_dir) / f"synthetic-v{_SYNTHETIC_VERSION}-s{seed}-{img_size}px-{per_class}"
    if root.is_dir():
        return root
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for label, cls in enumerate(CLASSES):
        (tmp / cls).mkdir(parents=True)
        for i in range(per_class):
            image, box = draw_synthetic(label, np.random.default_rng([seed, label, i]), img_size)
            rel = f"{cls}/{i:05d}.png"
            Image.fromarray(image).save(tmp / rel)
            rows.append((rel, *box))
    (tmp / "boxes.csv").write_text(_csv(("path", "x0", "y0", "x1", "y1"), rows))
    about = {
        "version": _SYNTHETIC_VERSION,
        "seed": seed,
        "per_class": per_class,
        "img_size": img_size,
        "classes": {"cat": "three horizontal bars", "dog": "three vertical bars"},
    }
    (tmp / "synthetic.json").write_text(json.dumps(about, indent=2) + "\n")
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _synthetic_boxes(root: Path, pretrained_cfg: Mapping[str, Any]) -> dict[str, tuple]:
    """{path: box in cached-image pixels}: boxes.csv mapped through resize + centre crop."""
    about = json.loads((root / "synthetic.json").read_text())
    source = about["img_size"]
    resized, size = _resize_size(pretrained_cfg), input_size(pretrained_cfg)
    offset = int(round((resized - size) / 2.0))  # torchvision's center_crop
    scale = resized / source
    out = {}
    with open(root / "boxes.csv", newline="") as f:
        for row in csv.DictReader(f):
            box = np.array([float(row[k]) for k in ("x0", "y0", "x1", "y1")])
            out[row["path"]] = tuple(np.clip(box * scale - offset, 0, size))
    return out


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def describe(manifest: Manifest, *, max_listed: int = 50) -> str:
    """A readable account of a manifest: layout, counts per split and class, skipped files."""
    counts = manifest.counts()
    width = max(6, *(len(c) for c in manifest.classes))
    head = "split   " + "".join(f"{c:>{width}}" for c in manifest.classes) + f"{'total':>{width}}"
    lines = [
        f"folder:   {manifest.root}",
        f"layout:   {manifest.layout}",
        f"classes:  {', '.join(f'{i} = {c}' for i, c in enumerate(manifest.classes))}",
        f"split:    seed {manifest.seed}, sizes asked {manifest.split_sizes}",
        "",
        head,
    ]
    for split, per_class in counts.items():
        cells = "".join(f"{n:>{width}}" for n in per_class.values())
        lines.append(f"{split:8s}{cells}{sum(per_class.values()):>{width}}")
    n = len(manifest.skipped)
    lines += ["", f"skipped:  {n} file{'' if n == 1 else 's'} (listed in {manifest.skipped_path})"]
    for path, reason in manifest.skipped[:max_listed]:
        lines.append(f"  {path}: {reason}")
    if len(manifest.skipped) > max_listed:
        lines.append(f"  ... {len(manifest.skipped) - max_listed} more")
    lines += ["", f"manifest: {manifest.path} (sha256 {manifest.sha256[:16]}...)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vitlib.data inspect DIR` / `python -m vitlib.data download --source NAME`."""
    from vitlib.download import SOURCES, DownloadError, download_source

    parser = argparse.ArgumentParser(
        prog="python -m vitlib.data", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="recognise a folder, write its manifest, list skipped files")
    p.add_argument("folder")
    p.add_argument("--profile", help="take split sizes and cache folder from this profile")
    p.add_argument("--split-sizes", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir")
    p.add_argument("--max-listed", type=int, default=50, help="skipped files printed")
    d = sub.add_parser("download", help="download and unpack a public cat/dog photo set")
    d.add_argument("--source", required=True, choices=sorted(SOURCES))
    d.add_argument("--dest", default="data")
    d.add_argument("--url", help="another URL for the same file (a mirror)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "inspect":
            from vitlib.config import get_config

            data = get_config(args.profile).data if args.profile else DataConfig()
            manifest = build_manifest(
                args.folder,
                split_sizes=args.split_sizes or data.split_sizes,
                seed=args.seed,
                cache_dir=args.cache_dir or data.cache_dir,
            )
            print(describe(manifest, max_listed=args.max_listed))
        else:
            folder = download_source(args.source, args.dest, url=args.url)
            print(f"{args.source}: images in {folder}; use them with --data {folder}")
    except (DataError, DownloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
