"""Which photos of a folder go to which split: the image check, the near-copy groups, the
split and the manifest that records them.

Report section 3.1: 20,000 / 2,000 / 2,000 train / val / test images of cats and dogs.

1. `scan_folder` (`vitlib.layouts`) recognises the layout from names alone and lists the
   labelled files: the images to split and, in the bench layout, labelled subsets.
2. `build_manifest` opens every image once (threads, a progress bar): `vitlib.images.check_image`
   skips zero-byte, truncated, non-image and unreadable files with a reason, never a good one,
   and `vitlib.dedup.hash_image` hashes each good one and its mirror. Images that are copies of
   one another (mirrored, re-encoded, resized, `<name>-flip.jpg`) form a group
   (`vitlib.dedup.group_images`), and the split (`vitlib.split`) puts each group on one side:
   deterministic, stratified, sized by `split_sizes`. The check and the hashes are stored per
   file listing (`scan.json`), so a second build opens no image.
3. It writes `manifest.csv` (path relative to the folder, label, split, group: near-copies share
   one; a labelled-subset photo's split is `subset:<folder>`, e.g. `subset:250`) and
   `skipped.csv` (path, reason) side by side, and `manifest.json` (counts).

    manifest = build_manifest("data/dogs-vs-cats/train", split_sizes=(20_000, 2_000, 2_000))
    print(describe(manifest))            # = python -m vitlib data inspect DIR
    paths, labels = manifest.subset("250")  # a bench layout's labelled set, outside the split
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitlib.config import DataConfig
from vitlib.dedup import group_images, hash_image
from vitlib.errors import DataError
from vitlib.files import atomic_write, csv_text, write_if_changed
from vitlib.images import check_image, parallel_map, printable
from vitlib.layouts import (
    CLASSES,
    GET_DATA,
    LAYOUTS,
    OXFORD_CAT_BREEDS,
    FolderScan,
    _check_classes_kept,
    _classes,
    scan_folder,
)
from vitlib.split import SPLITS, UNUSED, split_items

__all__ = [
    "CLASSES",
    "GET_DATA",
    "LAYOUTS",
    "OXFORD_CAT_BREEDS",
    "SPLITS",
    "SUBSET",
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

SUBSET = "subset:"  # manifest.csv's split of a labelled-subset photo: subset:250
_SCAN_VERSION = 2  # 2: near-copy hashes beside the image check
_HASH = re.compile(r"[0-9a-f]{160}")  # vitlib.dedup.hash_image's
# --------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A folder's labelled images with their split and near-copy group, its labelled subsets
    (bench layout), and the files skipped with a reason."""

    root: Path
    layout: str
    classes: tuple[str, ...]
    rows: tuple[tuple[str, str, str], ...]  # (path relative to root, class, split)
    skipped: tuple[tuple[str, str], ...]  # (path relative to root, reason)
    path: Path  # manifest.csv; skipped.csv and manifest.json lie beside it
    seed: int
    split_sizes: tuple[int, int, int]
    fingerprint: str  # of the folder's file listing
    # {path: group} of every row and subset photo: near-copies share one (`vitlib.dedup`)
    groups: Mapping[str, str] = field(default_factory=dict)
    # (path, class, subset folder): labelled sets the split leaves alone (bench: 1000/, 250/)
    subsets: tuple[tuple[str, str, str], ...] = ()

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

    @property
    def subset_names(self) -> tuple[str, ...]:
        """The labelled subsets, largest first (bench: 1000, 500, 250, 100); () elsewhere."""
        return tuple(dict.fromkeys(name for name, _ in self._subset_sizes()))

    def subset(self, name: str) -> tuple[list[str], np.ndarray]:
        """(paths relative to root, labels (n,) int64) of a labelled subset, e.g. "250"."""
        if name not in self.subset_names:
            raise DataError(
                f"{printable(str(self.root))} has no labelled subset {name!r}; it has "
                f"{', '.join(self.subset_names) or 'none (only the bench layout has them)'}"
            )
        rows = [(p, c) for p, c, s in self.subsets if s == name]
        index = {c: i for i, c in enumerate(self.classes)}
        return [p for p, _ in rows], np.array([index[c] for _, c in rows], dtype=np.int64)

    def _subset_sizes(self) -> list[tuple[str, int]]:
        sizes = Counter(s for _, _, s in self.subsets)
        return sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))

    def near_copies(self) -> list[list[str]]:
        """The groups of two or more near-copies (paths, sorted), largest group first."""
        members: dict[str, list[str]] = {}
        for path, group in self.groups.items():
            members.setdefault(group, []).append(path)
        found = [sorted(m) for m in members.values() if len(m) > 1]
        return sorted(found, key=lambda m: (-len(m), m[0]))


def build_manifest(
    root: str | Path,
    *,
    split_sizes: Sequence[int] = DataConfig.split_sizes,
    seed: int = 0,
    cache_dir: str | Path = DataConfig.cache_dir,
    progress: bool = True,
    workers: int = DataConfig.num_workers,
) -> Manifest:
    """Scan `root`, check and hash every image once, group near-copies, split, and write the
    manifest under `cache_dir`.

    The image check and hashes are stored (scan.json, keyed by the folder's file listing) and
    the manifest per seed and sizes (`<cache_dir>/<folder>-<hash>/s<seed>-<train>-<val>-<test>/`);
    both are reused while the folder's files (names, sizes, mtimes) stay the same. Images are
    checked in `workers` threads (0: one per CPU).
    """
    scan = scan_folder(root)
    work = Path(cache_dir) / _folder_key(scan.root)
    checked = _checked_images(scan, work / "scan.json", progress, workers)
    good = [f for f in scan.files if checked[f[0]][0] is None]
    bad = [(p, why) for p, (why, _) in checked.items() if why is not None]
    if not good:
        raise DataError(f"no image in {scan.root} could be read ({len(bad)} tried). {GET_DATA}")
    found = {c for _, c, _ in good}
    label = {p: c for p, c, _ in scan.files}
    _check_classes_kept(
        scan.root, found, [(p, label[p], why) for p, why in bad if p in label],
        "failed the image check for", "Replace or remove the damaged files",
    )  # fmt: skip
    classes = _classes(found)  # a name none of whose files is even named as an image is no class
    if len(found) < 2:
        log.warning("%s: images of one class only (%s)", scan.root, ", ".join(found))
    subsets = tuple(f for f in scan.subsets if checked[f[0]][0] is None and f[1] in classes)
    paths = [p for p, _, _ in (*good, *subsets)]
    groups = group_images(paths, [checked[p][1] for p in paths])
    sizes = tuple(int(s) for s in split_sizes)
    rows = split_items(good, sizes, seed=seed, groups=groups,
                       train_only={groups[p] for p, _, _ in subsets})  # fmt: skip
    skipped = tuple(sorted((*scan.skipped, *bad)))
    out = work / f"s{seed}-{'-'.join(map(str, sizes))}"
    manifest = Manifest(
        scan.root.resolve(), scan.layout, classes, tuple(rows), skipped,
        out / "manifest.csv", seed, sizes, scan.fingerprint, groups, subsets,
    )  # fmt: skip
    _write_manifest(manifest, out)
    return manifest


def _write_manifest(manifest: Manifest, out: Path) -> None:
    """manifest.csv (path, label, split, group), skipped.csv and manifest.json in `out`."""
    rows = [(p, c, s, manifest.groups[p]) for p, c, s in manifest.rows]
    rows += [(p, c, SUBSET + s, manifest.groups[p]) for p, c, s in manifest.subsets]
    _write(manifest.path, csv_text(("path", "label", "split", "group"), rows))
    _write(manifest.skipped_path, csv_text(("path", "reason"), manifest.skipped))
    copies = manifest.near_copies()
    meta = {
        "root": str(manifest.root),
        "layout": manifest.layout,
        "classes": list(manifest.classes),
        "seed": manifest.seed,
        "split_sizes": list(manifest.split_sizes),
        "counts": manifest.counts(),
        "subsets": {name: n for name, n in manifest._subset_sizes()},
        "near_copies": {
            "groups": len(copies),
            "images": sum(map(len, copies)),
            "mixed_labels": len(_mixed_labels(manifest)),
        },
        "skipped": len(manifest.skipped),
        "fingerprint": manifest.fingerprint,
    }
    _write(out / "manifest.json", json.dumps(meta, indent=2) + "\n")


def _write(path: Path, text: str) -> None:
    """write_if_changed, also over a file cut inside a UTF-8 character (not even text)."""
    try:
        write_if_changed(path, text)
    except UnicodeDecodeError:
        atomic_write(path, text)


def _folder_key(root: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name) or "root"
    return f"{slug}-{hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:8]}"


def _checked_images(
    scan: FolderScan, record: Path, progress: bool, workers: int = 0
) -> dict[str, tuple[str | None, str | None]]:
    """{path: (why it is no usable image or None, its near-copy hash or None)} of every file
    and subset photo of `scan`, from `record` if that is of the same listing."""
    paths = [p for p, _, _ in (*scan.files, *scan.subsets)]
    saved = _saved_check(scan, record, paths)
    if saved is not None:
        return saved
    results = list(
        parallel_map(
            lambda p: _check(scan.root / p),
            paths,
            desc=f"checking {scan.root.name}",
            progress=progress,
            workers=workers,
        )
    )
    checked = dict(zip(paths, results, strict=True))
    bad = [why for why, _ in results if why is not None]
    if bad:
        tally = Counter(why.split(" (")[0] for why in bad)
        summary = ", ".join(f"{n} {reason}" for reason, n in tally.items())
        log.warning("%s: %d of %d images skipped: %s", scan.root, len(bad), len(paths), summary)
    images = [[p, why, h] for p, (why, h) in checked.items()]
    _write(record, json.dumps({"version": _SCAN_VERSION, "fingerprint": scan.fingerprint,
                               "images": images}))  # fmt: skip
    return checked


def _check(path: Path) -> tuple[str | None, str | None]:
    """(why `path` is no usable image, or None; its near-copy hash if it is one)."""
    why = check_image(path)
    if why is not None:
        return why, None
    try:
        return None, hash_image(path)
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as exc:  # it decoded once
        log.warning("%s: no near-copy hash (%s); grouped by its name only", path, exc)
        return None, None


def _saved_check(
    scan: FolderScan, record: Path, paths: list[str]
) -> dict[str, tuple[str | None, str | None]] | None:
    """The stored check if `record` parses, is of this listing and covers exactly `paths`."""
    if not record.exists():
        return None
    try:
        saved = json.loads(record.read_text())
        if saved["version"] != _SCAN_VERSION or saved["fingerprint"] != scan.fingerprint:
            return None
        checked = {str(p): (_text(why), _text(h)) for p, why, h in saved["images"]}
        if any(h is not None and (why or not _HASH.fullmatch(h)) for why, h in checked.values()):
            raise ValueError("a hash that is not one, or of a skipped file")
    except (OSError, ValueError, KeyError, TypeError) as exc:  # truncated, or not ours
        log.warning("%s is unreadable (%s); checking the images again", record, exc)
        return None
    if set(checked) != set(paths) or len(saved["images"]) != len(paths):
        log.warning("%s does not match the folder's files; checking the images again", record)
        return None
    return checked


def _text(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"expected a string or null, got {value!r}")
    return value


def describe(manifest: Manifest, *, max_listed: int = 50) -> str:
    """A readable account of a manifest: layout, counts per split and class, labelled subsets,
    near-copy groups, skipped files."""
    width = max(6, *(len(c) for c in manifest.classes))
    lines = [
        f"folder:   {printable(str(manifest.root))}",
        f"layout:   {manifest.layout}",
        f"classes:  {', '.join(f'{i} = {c}' for i, c in enumerate(manifest.classes))}",
        f"split:    seed {manifest.seed}, sizes asked {manifest.split_sizes}",
        "",
        _row("split", manifest.classes, width, total="total"),
    ]
    for split, per_class in manifest.counts().items():
        lines.append(_row(split, per_class.values(), width))
    if manifest.subsets:
        lines += ["", "labelled subsets, outside the split (Manifest.subset(name)):"]
        tally = Counter((s, c) for _, c, s in manifest.subsets)
        for name in manifest.subset_names:
            lines.append(_row(name, [tally[name, c] for c in manifest.classes], width))
    lines += ["", *_near_copy_lines(manifest)]
    n = len(manifest.skipped)
    lines += ["", f"skipped:  {n} file{'' if n == 1 else 's'} (listed in {manifest.skipped_path})"]
    for path, reason in manifest.skipped[:max_listed]:
        lines.append(f"  {path}: {reason}")
    if len(manifest.skipped) > max_listed:
        lines.append(f"  ... {len(manifest.skipped) - max_listed} more")
    lines += ["", f"manifest: {manifest.path} (sha256 {manifest.sha256[:16]}...)"]
    return "\n".join(lines)


def _row(name: str, cells: Sequence, width: int, total: object = None) -> str:
    """One line of a table: name, a column per class, the total."""
    total = sum(cells) if total is None else total
    return f"{name:8s}" + "".join(f"{c:>{width}}" for c in cells) + f"{total:>{width}}"


def _near_copy_lines(manifest: Manifest, examples: int = 5) -> list[str]:
    """How many near-copy groups the split keeps whole, a few of them, the copies of
    labelled-subset photos, and the groups whose members carry different labels."""
    split = {p: s for p, _, s in manifest.rows}
    groups = manifest.near_copies()
    inside = [[p for p in g if p in split] for g in groups]
    inside = [g for g in inside if len(g) > 1]
    crossing = sum(1 for g in groups for p in g if p in split and len(g) > 1 and
                   any(q not in split for q in g))  # fmt: skip
    lines = [
        f"near-copies: {len(inside)} group{'' if len(inside) == 1 else 's'} of 2 or more "
        f"images in the split ({sum(map(len, inside))} images), each kept in one split",
        "  (an image with its mirror, <name>-flip copy, re-encodes and resizes; vitlib.dedup)",
    ]
    if manifest.subsets:
        lines.append(
            f"  {crossing} split image{' copies' if crossing == 1 else 's copy'} labelled-subset "
            "photos: train or unused only"
        )
    for group in inside[:examples]:
        lines.append(f"  {split[group[0]]}: {_listed(group)}")
    if len(inside) > examples:
        lines.append(f"  ... {len(inside) - examples} more (the group column of the manifest)")
    label = {p: c for p, c, _ in (*manifest.rows, *manifest.subsets)}
    mixed = _mixed_labels(manifest)
    if mixed:
        n = len(mixed)
        lines.append(
            f"  {n} group{' mixes' if n == 1 else 's mix'} labels (placeholders or mislabelled "
            "copies: label noise):"
        )
        lines += [f"    {_listed([f'{p} ({label[p]})' for p in g])}" for g in mixed[:examples]]
        if n > examples:
            lines.append(f"    ... {n - examples} more")
    return lines


def _mixed_labels(manifest: Manifest) -> list[list[str]]:
    """The near-copy groups (split rows and subset photos) whose members' labels differ."""
    label = {p: c for p, c, _ in (*manifest.rows, *manifest.subsets)}
    return [g for g in manifest.near_copies() if len({label[p] for p in g}) > 1]


def _listed(paths: Sequence[str], n: int = 3) -> str:
    return " = ".join(paths[:n]) + (f" (+{len(paths) - n} more)" if len(paths) > n else "")
