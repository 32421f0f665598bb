"""Which photos a folder holds and which split each goes to: layouts, the scan, the split, the
manifest.

Report section 3.1: 20,000 / 2,000 / 2,000 train / val / test images of cats and dogs.

1. `scan_folder` lists the folder (`vitlib.images.list_files`: hidden and system files, names
   not in UTF-8, unreadable entries, symlink loops skipped with a reason), recognises the layout
   (`LAYOUTS`) from names alone and lists the labelled files. Files outside the layout are
   skipped with a reason, never a whole class: a folder read either way is a DataError.
2. `build_manifest` opens every image once (`vitlib.images.check_image`, in threads with a
   progress bar); zero-byte, truncated, non-image and unreadable files are skipped with a
   reason, good ones never dropped. It then splits the labelled images (`vitlib.split`):
   deterministic (a hash of seed and path orders each class, so every machine gets the same
   split from the same files), stratified, sized by `split_sizes`. It writes `manifest.csv`
   (path relative to the folder, label, split) and `skipped.csv` (path, reason) side by side.

    manifest = build_manifest("data/dogs-vs-cats/train", split_sizes=(20_000, 2_000, 2_000))
    print(describe(manifest))            # = python -m vitlib data inspect DIR
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitlib.config import DataConfig
from vitlib.errors import DataError
from vitlib.files import atomic_write, csv_text, write_if_changed
from vitlib.images import check_image, is_image_name, list_files, parallel_map, printable
from vitlib.split import SPLITS, UNUSED, split_items

__all__ = [
    "CLASSES",
    "GET_DATA",
    "LAYOUTS",
    "SPLITS",
    "UNUSED",
    "DataError",
    "FolderScan",
    "Manifest",
    "build_manifest",
    "describe",
    "scan_folder",
    "split_items",
]

log = logging.getLogger(__name__)

# Dogs vs Cats' label order (0 = cat, 1 = dog), used when a folder's classes are among these
# names; any other class names are sorted. Runs read their classes from the dataset.
CLASSES: tuple[str, ...] = ("cat", "dog")
LAYOUTS: dict[str, str] = {
    "kaggle": "flat files named <class>.<id>.<ext>: train/cat.123.jpg, dog.45.jpg (Kaggle)",
    "petimages": "PetImages/Cat/*.jpg and PetImages/Dog/*.jpg (Microsoft's kagglecatsanddogs zip)",
    "oxford-pets": "flat files named <Breed>_<n>.jpg, cat breeds capitalised (Oxford-IIIT Pet)",
    "imagefolder": "<root>/<class>/*.jpg, any class names in any case (Cat/, dogs/, ...)",
    "mixed": "<class>.<id>.jpg files beside <class>/ folders, when both use a class name (or "
    "are cat and dog): eight cat.*.jpg beside dog/",
    "presplit": "<root>/train/ with val/ and/or test/ (or valid/), each in a layout above",
}
OXFORD_CAT_BREEDS = (
    "Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau",
    "Maine_Coon", "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx",
)  # fmt: skip
GET_DATA = (
    "Get photos with `python -m vitlib data download --source petimages --dest data/` (then "
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
_SCAN_VERSION = 1
# (layout, [(path, class)], [(path, reason)]): what one layout makes of the files of a folder
_Found = tuple[str, list[tuple[str, str]], list[tuple[str, str]]]


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
    paths, skipped, fingerprint = list_files(root)
    splits = _split_folders(paths)
    if "train" in splits or len(splits) >= 2:
        layout, files, more = _scan_presplit(root, paths, splits)
    else:
        found = _scan_labelled(root, paths, "")
        if found is None:
            raise _unrecognised(root, paths)
        layout, labelled, more = found
        files = [(p, c, None) for p, c in labelled]
    named = [(p, _flat_label(p.rsplit("/", 1)[-1], "kaggle"), why) for p, why in more]
    _check_classes_kept(
        root, {c for _, c, _ in files}, [f for f in named if f[1]], f"read as {layout} leaves out",
        "Move them to where that layout expects them (or out of the folder)",
    )  # fmt: skip
    return _finish(root, layout, files, skipped + more, fingerprint)


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


def _scan_labelled(root: Path, paths: Sequence[str], prefix: str) -> _Found | None:
    """(layout, [(path, class)], [(path, reason)]) for the files under `prefix`, or None.

    Flat <class>.<id> files beside class folders are used together when their class names
    agree (see `_mixed`); any other mix of flat labelled files and folders of images is a
    DataError naming the files that one reading or the other would drop.
    """
    local = [p[len(prefix) :] for p in paths if p.startswith(prefix)]
    top = [p for p in local if "/" not in p]
    nested = [p for p in local if "/" in p]
    pets = {p.split("/", 1)[0] for p in nested if p.split("/", 1)[0].lower() == "petimages"}
    if pets:
        return _petimages(local, prefix, pets)
    images_below = [p for p in nested if is_image_name(p)]
    kaggle = [p for p in top if _KAGGLE_NAME.match(p)]
    oxford = [p for p in top if _OXFORD_NAME.match(p) and not _KAGGLE_NAME.match(p)]
    if images_below and any(is_image_name(p) for p in kaggle):
        return _mixed(root / prefix, top, nested, prefix)
    if images_below and sum(map(is_image_name, oxford)) >= len(images_below):
        raise _ambiguous(root / prefix, top, nested, "<Breed>_<n>.<ext>", "")
    if images_below or (nested and not (kaggle or oxford)):
        files = [(prefix + p, _class_name(p.split("/", 1)[0])) for p in nested]
        return "imagefolder", files, [(prefix + p, "outside the class folders") for p in top]
    if not (kaggle or oxford):
        return None
    layout = "kaggle" if len(kaggle) >= len(oxford) else "oxford-pets"
    files, skipped = [], []
    for p in top:
        label = _flat_label(p, layout)
        if label is None:
            pattern = "<class>.<id>.<ext>" if layout == "kaggle" else "<Breed>_<n>.<ext>"
            skipped.append((prefix + p, f"name not of the form {pattern}: no label"))
        else:
            files.append((prefix + p, label))
    reason = f"in a subfolder of a flat ({layout}) folder, and no image name"
    return layout, files, skipped + [(prefix + p, reason) for p in nested]


def _petimages(local: list[str], prefix: str, pets: set[str]) -> _Found:
    files, skipped = [], []
    for p in local:
        parts = p.split("/")
        if parts[0] in pets and len(parts) >= 3:
            files.append((prefix + p, _class_name(parts[1])))
        else:
            skipped.append((prefix + p, "outside PetImages/<class>/"))
    return "petimages", files, skipped


def _mixed(folder: Path, top: list[str], nested: list[str], prefix: str) -> _Found:
    """Kaggle-named photos at the top and class folders beside them, used together when the
    two share a class name or are the study's cat and dog (eight cat.*.jpg beside dog/);
    otherwise DataError, since one reading or the other would drop a class."""
    flat = {p: _flat_label(p, "kaggle") for p in top if is_image_name(p)}
    flat = {p: c for p, c in flat.items() if c is not None}
    by_folder = {_class_name(p.split("/", 1)[0]) for p in nested if is_image_name(p)}
    names = set(flat.values())
    if not (names & by_folder or names | by_folder <= set(CLASSES)):
        why = f", of other classes ({', '.join(sorted(names))}; {', '.join(sorted(by_folder))})"
        raise _ambiguous(folder, top, nested, "<class>.<id>.<ext>", why)
    files = [(prefix + p, c) for p, c in flat.items()]
    files += [(prefix + p, _class_name(p.split("/", 1)[0])) for p in nested]
    reason = "beside class folders, and not named <class>.<id>.<image ext>: no label"
    skipped = [(prefix + p, reason) for p in top if p not in flat]
    log.warning(
        "%s: %d photos named <class>.<id> (%s) beside class folders (%s); using both",
        folder, len(flat), ", ".join(sorted(names)), ", ".join(sorted(by_folder)),
    )  # fmt: skip
    return "mixed (kaggle + imagefolder)", files, skipped


def _ambiguous(folder: Path, top: list[str], nested: list[str], pattern: str, why: str):
    flat = [p for p in top if is_image_name(p)]
    below = [p for p in nested if is_image_name(p)]
    folders = sorted({p.split("/", 1)[0] + "/" for p in below})
    return DataError(
        f"{printable(str(folder))} holds photos named {pattern} at its top ({len(flat)}: "
        f"{_some(flat)}) beside folders of photos ({len(below)} in {_some(folders)}){why}; "
        "read either way, one set and its classes would be dropped. Move the top photos into "
        "a folder named after their class (cat.1.jpg -> cat/cat.1.jpg), or move the folders "
        "that are not classes out of it, then run again."
    )


def _some(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(printable(p) for p in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _flat_label(name: str, layout: str) -> str | None:
    if layout == "kaggle":
        m = _KAGGLE_NAME.match(name)
        return _class_name(m.group(1)) if m else None
    m = _OXFORD_NAME.match(name)
    if not m:
        return None
    return "cat" if name[0].isupper() else "dog"  # Oxford-IIIT Pet's naming convention


def _scan_presplit(
    root: Path, paths: list[str], splits: dict[str, list[str]]
) -> tuple[str, list[tuple[str, str, str | None]], list[tuple[str, str]]]:
    """(layout, [(path, class, split)], [(path, reason)]) of a train/val/test folder."""
    if "train" not in splits:
        raise DataError(
            f"{root} has {', '.join(sorted(splits))} folders but no train/ folder; a pre-split "
            f"folder needs train/ (val/ and test/ are carved out of it when missing). {GET_DATA}"
        )
    files: list[tuple[str, str, str | None]] = []
    skipped: list[tuple[str, str]] = []
    layouts = []
    in_split = set()
    for split in SPLITS:
        for folder in splits.get(split, []):
            prefix = folder + "/"
            found = _scan_labelled(root, paths, prefix)
            inside = [p for p in paths if p.startswith(prefix)]
            in_split.update(inside)
            if found is None and split == "train":
                raise _unrecognised(root / folder, inside)
            if found is None:
                skipped += [(p, f"{folder}/ is in no known layout") for p in inside]
                continue
            layout, labelled, more = found
            layouts.append(f"{folder}: {layout}")
            files += [(p, c, split) for p, c in labelled]
            skipped += more
    skipped += [(p, "not inside a train/val/test folder") for p in paths if p not in in_split]
    return f"presplit ({', '.join(layouts)})", files, skipped


def _check_classes_kept(root: Path, used: set, dropped: list, how: str, fix: str) -> None:
    """DataError if every photo of a class is among `dropped` [(path, class, reason)]: the
    run would go on without the class, and score well on the rest."""
    lost: dict[str, list[str]] = {}
    for path, label, reason in dropped:
        if label not in used and is_image_name(path):
            lost.setdefault(label, []).append(f"{path} ({reason})")
    if lost:
        listed = "; ".join(f"{c}: {_some(found)}" for c, found in sorted(lost.items()))
        raise DataError(
            f"{printable(str(root))} {how} every photo of class {', '.join(sorted(lost))}, so "
            f"the class would be missing: {listed}. {fix}, then run again."
        )


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
    workers: int = DataConfig.num_workers,
) -> Manifest:
    """Scan `root`, check every image once, split, and write the manifest under `cache_dir`.

    The image check is stored (scan.json, keyed by the folder's file listing) and the manifest
    per seed and sizes (`<cache_dir>/<folder>-<hash>/s<seed>-<train>-<val>-<test>/`); both are
    reused while the folder's files (names, sizes, mtimes) stay the same. Images are checked in
    `workers` threads (0: one per CPU).
    """
    scan = scan_folder(root)
    work = Path(cache_dir) / _folder_key(scan.root)
    good, bad = _checked_files(scan, work / "scan.json", progress, workers)
    if not good:
        raise DataError(f"no image in {scan.root} could be read ({len(bad)} tried). {GET_DATA}")
    found = {c for _, c, _ in good}
    label = {p: c for p, c, _ in scan.files}
    _check_classes_kept(
        scan.root, found, [(p, label[p], why) for p, why in bad], "failed the image check for",
        "Replace or remove the damaged files",
    )  # fmt: skip
    classes = _classes(found)  # a name none of whose files is even named as an image is no class
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
    _write(manifest.path, csv_text(("path", "label", "split"), rows))
    _write(manifest.skipped_path, csv_text(("path", "reason"), skipped))
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
    _write(out / "manifest.json", json.dumps(meta, indent=2) + "\n")
    return manifest


def _write(path: Path, text: str) -> None:
    """write_if_changed, also over a file cut inside a UTF-8 character (not even text)."""
    try:
        write_if_changed(path, text)
    except UnicodeDecodeError:
        atomic_write(path, text)


def _folder_key(root: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name) or "root"
    return f"{slug}-{hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:8]}"


def _checked_files(
    scan: FolderScan, record: Path, progress: bool, workers: int = 0
) -> tuple[list[tuple[str, str, str | None]], list[tuple[str, str]]]:
    """(good files, [(path, reason)] for bad ones), from `record` if the listing is unchanged."""
    saved = _saved_check(scan, record)
    if saved is not None:
        return saved
    reasons = list(
        parallel_map(
            lambda f: check_image(scan.root / f[0]),
            scan.files,
            desc=f"checking {scan.root.name}",
            progress=progress,
            workers=workers,
        )
    )
    good = [f for f, why in zip(scan.files, reasons, strict=True) if why is None]
    bad = [(f[0], why) for f, why in zip(scan.files, reasons, strict=True) if why is not None]
    if bad:
        tally = Counter(why.split(" (")[0] for _, why in bad)
        summary = ", ".join(f"{n} {reason}" for reason, n in tally.items())
        log.warning("%s: %d of %d images skipped: %s", scan.root, len(bad), len(reasons), summary)
    payload = {"version": _SCAN_VERSION, "fingerprint": scan.fingerprint, "good": good, "bad": bad}
    _write(record, json.dumps(payload))
    return good, bad


def _saved_check(
    scan: FolderScan, record: Path
) -> tuple[list[tuple[str, str, str | None]], list[tuple[str, str]]] | None:
    """The stored image check if `record` parses, is of this listing and covers its files."""
    if not record.exists():
        return None
    try:
        saved = json.loads(record.read_text())
        if saved["version"] != _SCAN_VERSION or saved["fingerprint"] != scan.fingerprint:
            return None
        good = [(str(p), str(c), s) for p, c, s in saved["good"]]
        bad = [(str(p), str(why)) for p, why in saved["bad"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:  # truncated, or not ours
        log.warning("%s is unreadable (%s); checking the images again", record, exc)
        return None
    covered = set(good) | {f for f in scan.files if f[0] in {p for p, _ in bad}}
    if covered != set(scan.files) or len(good) + len(bad) != len(scan.files):
        log.warning("%s does not match the folder's files; checking the images again", record)
        return None
    return good, bad


def describe(manifest: Manifest, *, max_listed: int = 50) -> str:
    """A readable account of a manifest: layout, counts per split and class, skipped files."""
    counts = manifest.counts()
    width = max(6, *(len(c) for c in manifest.classes))
    head = "split   " + "".join(f"{c:>{width}}" for c in manifest.classes) + f"{'total':>{width}}"
    lines = [
        f"folder:   {printable(str(manifest.root))}",
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
