"""Which labelled photos a folder holds, from names alone: the layouts vitlib recognises and the
scan that lists a folder's files with their class and source split.

`scan_folder` lists the folder (`vitlib.images.list_files`: hidden and system files, names not
in UTF-8, unreadable entries, symlink loops skipped with a reason), recognises the layout
(`LAYOUTS`) and lists the labelled files. Files outside the layout are skipped with a reason,
never a whole class: a folder read either way is a DataError. No image is opened here; the
image check, the near-copy groups and the split are `vitlib.manifest`'s.

The bench layout (jurschreuder/cats-dogs-bench) is a pool to split, `pre-train/`, beside
labelled sets named by their size (`1000/ 500/ 250/ 100/`) that the split leaves alone (a
label-efficiency study fine-tunes on them) and, when present, a `test/` kept as the test split.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vitlib.errors import DataError
from vitlib.images import is_image_name, list_files, printable
from vitlib.split import SPLITS

__all__ = ["CLASSES", "GET_DATA", "LAYOUTS", "OXFORD_CAT_BREEDS", "FolderScan", "scan_folder"]

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
    "bench": "<root>/pre-train/ (a pool to split) beside labelled sets named by their size "
    "(1000/, 250/, ...; kept out of the split) and, if present, test/ (jurschreuder/cats-dogs-bench)",
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
_POOL_NAMES = {"pre-train", "pretrain", "pre_train"}  # the bench layout's pool folder
_SUBSET_NAME = re.compile(r"^\d+(?:[-_].*)?$")  # 1000/, 250/, 1000-split/: labelled sets
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
    # (path under root, class, subset folder): labelled sets kept out of the split (bench)
    subsets: tuple[tuple[str, str, str], ...] = ()


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
    subsets: list[tuple[str, str, str]] = []
    pool = sorted(f for f in _folders(paths) if f.lower() in _POOL_NAMES)
    if pool and "train" not in splits:  # bench: before presplit, which its test/ would trigger
        layout, files, subsets, more = _scan_bench(root, paths, pool[0], splits)
    elif "train" in splits or len(splits) >= 2:
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
    return _finish(root, layout, files, skipped + more, fingerprint, subsets)


def _folders(paths: Iterable[str]) -> set[str]:
    """The top-level folders among `paths`."""
    return {p.split("/", 1)[0] for p in paths if "/" in p}


def _scan_bench(
    root: Path, paths: list[str], pool: str, splits: dict[str, list[str]]
) -> tuple[str, list[tuple[str, str, str | None]], list[tuple[str, str, str]], list]:
    """(layout, [(path, class, split)], [(path, class, subset)], [(path, reason)]) of a bench
    folder: `pool`/ is split (source None); a val/ or test/ beside it is kept as that split;
    folders named by a number are labelled subsets, listed but left out of the split."""
    files: list[tuple[str, str, str | None]] = []
    subsets: list[tuple[str, str, str]] = []
    skipped: list[tuple[str, str]] = []
    parts, used = [], set()
    given = [(f, s) for s in ("val", "test") for f in splits.get(s, [])]
    numbered = sorted((f for f in _folders(paths) if _SUBSET_NAME.match(f)), key=_subset_order)
    for folder, role in [(pool, None), *given, *((f, "subset") for f in numbered)]:
        prefix = folder + "/"
        inside = [p for p in paths if p.startswith(prefix)]
        used.update(inside)
        found = _scan_labelled(root, paths, prefix)
        if found is None and role is None:
            raise _unrecognised(root / folder, inside)
        if found is None:
            skipped += [(p, f"{folder}/ is in no known layout") for p in inside]
            continue
        layout, labelled, more = found
        skipped += more
        if role == "subset":
            subsets += [(p, c, folder) for p, c in labelled]
        else:
            parts.append(f"{folder}: {layout}")
            files += [(p, c, role) for p, c in labelled]
    reason = f"not in {pool}/, a val/ or test/ folder, or a labelled set named by its size"
    skipped += [(p, reason) for p in paths if p not in used]
    named = f"; labelled subsets: {', '.join(numbered)}" if numbered else ""
    return f"bench ({', '.join(parts)}{named})", files, subsets, skipped


def _subset_order(name: str) -> tuple[int, str]:
    """Largest labelled set first: 1000, 1000-split, 500, 250, 100."""
    digits = re.match(r"\d*", name).group()
    return (-int(digits) if digits else 0, name)


def _split_folders(paths: Iterable[str]) -> dict[str, list[str]]:
    """{split: [top-level folder names]} for the train/val/test folders among `paths`."""
    out: dict[str, list[str]] = {}
    for top in sorted(_folders(paths)):
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
    subsets: list[tuple[str, str, str]],
) -> FolderScan:
    if not files:
        raise _unrecognised(root, [])
    return FolderScan(
        root, layout, _classes(c for _, c, _ in files), tuple(sorted(files)),
        tuple(sorted(skipped)), fingerprint, tuple(sorted(subsets)),
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
