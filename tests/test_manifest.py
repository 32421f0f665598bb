"""Tests of vitlib.manifest: layouts, the scan, bad files, the split, the manifest."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import CFG32, REAL, kaggle_folder, labels_by_name, photo
from PIL import ImageOps
from test_dedup import picture

from vitlib import images as I
from vitlib import manifest as M
from vitlib.__main__ import main
from vitlib.config import DataConfig
from vitlib.data import (
    load_splits,
)
from vitlib.errors import DataError
from vitlib.images import load_image
from vitlib.manifest import CLASSES, build_manifest, scan_folder


def test_kaggle_flat_layout(tmp_path):
    kaggle_folder(tmp_path / "train", 3, 2)
    scan = scan_folder(tmp_path / "train")
    assert scan.layout == "kaggle" and scan.classes == CLASSES
    assert labels_by_name(scan) == {
        "cat.0.jpg": "cat", "cat.1.jpg": "cat", "cat.2.jpg": "cat",
        "dog.0.jpg": "dog", "dog.1.jpg": "dog",
    }  # fmt: skip


def test_petimages_layout_as_microsoft_ships_it(tmp_path):
    photo(tmp_path / "PetImages" / "Cat" / "1.jpg")
    photo(tmp_path / "PetImages" / "Dog" / "1.jpg")
    (tmp_path / "readme[1].txt").write_text("licence")
    (tmp_path / "PetImages" / "Cat" / "Thumbs.db").write_bytes(b"\x00" * 10)
    scan = scan_folder(tmp_path)
    assert scan.layout == "petimages"
    assert sorted((p, c) for p, c, _ in scan.files) == [
        ("PetImages/Cat/1.jpg", "cat"), ("PetImages/Dog/1.jpg", "dog"),
    ]  # fmt: skip
    assert dict(scan.skipped) == {
        "PetImages/Cat/Thumbs.db": "Thumbs.db (Windows thumbnail cache)",
        "readme[1].txt": "outside PetImages/<class>/",
    }


def test_imagefolder_any_class_names_any_case(tmp_path):
    photo(tmp_path / "pets" / "CATS" / "a.jpg")
    photo(tmp_path / "pets" / "Dog" / "nested" / "b.png")
    scan = scan_folder(tmp_path / "pets")
    assert scan.layout == "imagefolder" and scan.classes == CLASSES
    assert labels_by_name(scan) == {"a.jpg": "cat", "b.png": "dog"}
    photo(tmp_path / "fruit" / "Banana" / "1.jpg")
    photo(tmp_path / "fruit" / "apple" / "1.jpg")
    assert scan_folder(tmp_path / "fruit").classes == ("apple", "banana")


def test_oxford_pets_breeds_map_to_cat_and_dog(tmp_path):
    names = [f"{breed}_1.jpg" for breed in M.OXFORD_CAT_BREEDS]
    names += ["american_bulldog_10.jpg", "yorkshire_terrier_3.jpg"]
    for name in names:
        photo(tmp_path / "images" / name)
    (tmp_path / "images" / "Abyssinian_100.mat").write_bytes(b"MATLAB 5.0")
    scan = scan_folder(tmp_path / "images")
    assert scan.layout == "oxford-pets"
    labels = labels_by_name(scan)
    assert {labels[f"{b}_1.jpg"] for b in M.OXFORD_CAT_BREEDS} == {"cat"}
    assert labels["american_bulldog_10.jpg"] == labels["yorkshire_terrier_3.jpg"] == "dog"
    manifest = build_manifest(tmp_path / "images", split_sizes=(10, 2, 2), cache_dir=tmp_path / "c")
    assert dict(manifest.skipped)["Abyssinian_100.mat"].startswith("not an image")


def test_presplit_layout_each_split_in_its_own_layout(tmp_path):
    kaggle_folder(tmp_path / "train", 4, 4)
    photo(tmp_path / "Valid" / "cat" / "v1.jpg")
    photo(tmp_path / "Valid" / "dog" / "v2.jpg")
    photo(tmp_path / "test" / "PetImages" / "Cat" / "t1.jpg")
    photo(tmp_path / "test" / "PetImages" / "Dog" / "t2.jpg")
    photo(tmp_path / "test1" / "1.jpg")  # Kaggle's unlabelled test set: not a split
    scan = scan_folder(tmp_path)
    assert scan.layout == "presplit (train: kaggle, Valid: imagefolder, test: petimages)"
    splits = {Path(p).name: s for p, _, s in scan.files}
    assert (
        splits["v1.jpg"] == "val" and splits["t2.jpg"] == "test" and splits["cat.0.jpg"] == "train"
    )
    assert dict(scan.skipped) == {"test1/1.jpg": "not inside a train/val/test folder"}
    manifest = build_manifest(tmp_path, split_sizes=(8, 2, 2), cache_dir=tmp_path / "c")
    rows = {Path(p).name: s for p, _, s in manifest.rows}
    assert rows["v1.jpg"] == rows["v2.jpg"] == "val" and rows["t1.jpg"] == "test"


def test_presplit_without_test_carves_it_stratified_out_of_train(tmp_path):
    """Like dogs-vs-cats-128 (train/ and val/ only): test comes out of train, val stays."""
    kaggle_folder(tmp_path / "train", 30, 20)
    kaggle_folder(tmp_path / "val", 3, 2)
    manifest = build_manifest(tmp_path, split_sizes=(40, 5, 10), cache_dir=tmp_path / "c")
    counts = manifest.counts()
    assert counts["test"] == {"cat": 6, "dog": 4}  # 10 in train's 3:2 proportion
    assert counts["train"] == {"cat": 24, "dog": 16}
    assert counts["val"] == {"cat": 3, "dog": 2}
    assert {p.split("/")[0] for p, _, s in manifest.rows if s == "test"} == {"train"}
    assert {p.split("/")[0] for p, _, s in manifest.rows if s == "val"} == {"val"}


@pytest.mark.parametrize("content", ["empty", "unlabelled", "hidden only"])
def test_unrecognised_or_empty_folder_names_layouts_and_download(tmp_path, content):
    folder = tmp_path / "photos"
    folder.mkdir()
    if content == "unlabelled":
        photo(folder / "1.jpg")
        photo(folder / "2.jpg")
    elif content == "hidden only":
        photo(folder / ".cat.1.jpg")
    with pytest.raises(DataError) as err:
        scan_folder(folder)
    message = str(err.value)
    for needed in ("kaggle", "petimages", "imagefolder", "presplit", "oxford-pets"):
        assert needed in message
    assert "python -m vitlib data download" in message and "--data" in message


def test_missing_folder_says_how_to_get_data(tmp_path):
    cfg = DataConfig(source="folder", root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"does not exist.*vitlib data download.*--data"):
        load_splits(cfg, CFG32)
    with pytest.raises(DataError, match="no data folder given"):
        load_splits(DataConfig(source="folder", root=None), CFG32)


def test_manifest_is_the_same_file_wherever_the_folder_lies(tmp_path):
    kaggle_folder(tmp_path / "a" / "train", 12, 8)
    kaggle_folder(tmp_path / "b" / "train", 12, 8)
    ma = build_manifest(tmp_path / "a" / "train", split_sizes=(10, 4, 4), cache_dir=tmp_path / "c")
    mb = build_manifest(tmp_path / "b" / "train", split_sizes=(10, 4, 4), cache_dir=tmp_path / "c")
    assert ma.path != mb.path and ma.path.read_bytes() == mb.path.read_bytes()
    with open(ma.path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "split", "group"]
    assert all("/" not in r["path"] for r in rows)  # relative to the folder: file names here
    assert {r["split"] for r in rows} == {"train", "val", "test", "unused"}


def test_bad_files_are_skipped_listed_and_good_ones_kept(tmp_path, capsys):
    folder = kaggle_folder(tmp_path / "train", 4, 4)
    good = photo(folder / "cat.100.jpg", size=(64, 48))
    (folder / "cat.empty.jpg").write_bytes(b"")
    (folder / "dog.truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "dog.text.jpg").write_text("not a picture")
    (folder / "cat.gone.jpg").symlink_to(folder / "no-such-file.jpg")
    (folder / "Thumbs.db").write_bytes(b"\x01" * 64)
    photo(folder / ".cat.hidden.jpg")
    photo(folder / "._cat.1.jpg")  # macOS AppleDouble
    photo(folder / "__MACOSX" / "cat.2.jpg")
    manifest = build_manifest(folder, split_sizes=(5, 2, 2), cache_dir=tmp_path / "c")
    reasons = dict(manifest.skipped)
    assert reasons["cat.empty.jpg"] == "empty file (0 bytes)"
    assert reasons["dog.truncated.jpg"].startswith("truncated image")
    assert reasons["dog.text.jpg"].startswith("not an image")
    assert reasons["cat.gone.jpg"].startswith("unreadable")
    assert reasons["Thumbs.db"].startswith("Thumbs.db")
    assert reasons[".cat.hidden.jpg"] == reasons["._cat.1.jpg"] == "hidden file"
    assert reasons["__MACOSX/"] == "macOS resource folder"
    assert len(manifest.rows) == 9  # 8 + cat.100, every good image
    with open(manifest.skipped_path, newline="") as f:
        listed = {r["path"]: r["reason"] for r in csv.DictReader(f)}
    assert listed == reasons
    # The CLI shows the same, and a second build opens no image (the check is stored).
    assert main(["data", "inspect", str(folder), "--cache-dir", str(tmp_path / "c"),
                   "--split-sizes", "5", "2", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "layout:   kaggle" in out and "skipped:  8 files" in out
    assert "dog.truncated.jpg: truncated image" in out


def test_a_name_whose_files_are_all_bad_is_no_class(tmp_path):
    folder = kaggle_folder(tmp_path / "train", 3, 3)
    (folder / "notes.v2.txt").write_text("a Kaggle-like name, but no image")
    assert scan_folder(folder).classes == ("cat", "dog", "notes")  # from names alone
    manifest = build_manifest(folder, split_sizes=(4, 1, 1), cache_dir=tmp_path / "c")
    assert manifest.classes == CLASSES
    assert dict(manifest.skipped)["notes.v2.txt"].startswith("not an image")


def test_a_folder_without_one_readable_image_is_an_error(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "cat.1.jpg").write_bytes(b"")
    (tmp_path / "train" / "dog.1.jpg").write_text("text")
    with pytest.raises(DataError, match=r"no image .* could be read \(2 tried\)"):
        build_manifest(tmp_path / "train", cache_dir=tmp_path / "c")
    kaggle_folder(tmp_path / "val", 2, 2)  # pre-split, but train/ unusable
    with pytest.raises(DataError, match="needs usable images in train/"):
        build_manifest(tmp_path, cache_dir=tmp_path / "c")


def refuse_as_root(monkeypatch, module, name: str, locked: Path) -> None:
    """chmod 0 stops everyone but root; as root (CI containers), `module.name` (an opener)
    refuses `locked` the way the kernel refuses others."""
    if os.geteuid() != 0:
        return
    original = getattr(module, name)

    def opener(path, *args, **kwargs):
        if Path(os.fsdecode(path)).resolve() == locked.resolve():
            raise PermissionError(13, "Permission denied", str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(module, name, opener)


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    folder = kaggle_folder(tmp_path / "train", 2, 2)
    locked = photo(folder / "cat.locked.jpg")
    locked.chmod(0)
    refuse_as_root(monkeypatch, I.Image, "open", locked)
    try:
        manifest = build_manifest(folder, split_sizes=(2, 1, 1), cache_dir=tmp_path / "c")
    finally:
        locked.chmod(0o644)
    assert dict(manifest.skipped)["cat.locked.jpg"] == "unreadable (permission denied)"


def test_the_image_check_runs_once_per_file_listing(tmp_path, monkeypatch):
    folder = kaggle_folder(tmp_path / "train", 3, 3)
    opened = []
    original = M.check_image
    monkeypatch.setattr(M, "check_image", lambda p: opened.append(p) or original(p))
    build_manifest(folder, split_sizes=(4, 1, 1), cache_dir=tmp_path / "c")
    build_manifest(folder, split_sizes=(2, 2, 2), seed=5, cache_dir=tmp_path / "c")
    assert len(opened) == 6
    photo(folder / "dog.9.jpg")
    build_manifest(folder, split_sizes=(4, 1, 1), cache_dir=tmp_path / "c")
    assert len(opened) == 13


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real photos not present at {REAL}")
def test_real_dogs_vs_cats_128_every_image_loads_with_its_label(tmp_path):
    manifest = build_manifest(
        REAL, split_sizes=(9_000, 1_000, 1_000), cache_dir=tmp_path, progress=False
    )
    assert manifest.layout == "presplit (train: kaggle, val: kaggle)"
    # Near-copies in the real folder (looked at): the Kaggle "PHOTO UNAVAILABLE" placeholder
    # as a cat and three dogs, pairs of one photo in train/, and a train/ photo of val/'s.
    split = {p: s for p, _, s in manifest.rows}
    copies = manifest.near_copies()
    assert len(copies) >= 10 and all(len({split[p] for p in g} - {"unused"}) == 1 for g in copies)
    assert ["train/dog.670022451.jpg", "val/dog.38321013.jpg"] in copies
    assert split["train/dog.670022451.jpg"] == "unused"  # in train it would leak into val
    assert any({Path(p).name.split(".")[0] for p in g} == {"cat", "dog"} for g in copies)
    counts = manifest.counts()
    assert counts["train"] == {"cat": 4500, "dog": 4500}
    assert counts["val"] == {"cat": 500, "dog": 500}  # a given split is kept whole
    assert sum(counts["test"].values()) + sum(counts["unused"].values()) == 1_000
    assert manifest.skipped == (
        ("README.md", "not inside a train/val/test folder"),
    )  # all 11,000 decoded
    for path, label, _ in manifest.rows:
        assert Path(path).name.split(".")[0] == label
    rng = np.random.default_rng(0)
    paths, labels = manifest.split("test")
    for i in rng.choice(len(paths), 50, replace=False):
        img = load_image(manifest.root / paths[i])
        assert img.mode == "RGB" and img.size == (128, 128)
        assert paths[i].startswith(f"train/{CLASSES[labels[i]]}.")


# --------------------------------------------------------------------------------------------
# Nothing lost, nothing unsafe: entries the scan cannot read, ambiguous layouts, stored records
# --------------------------------------------------------------------------------------------


def pets_folder(folder: Path, cats: int = 3, dogs: int = 3) -> Path:
    for i in range(cats):
        photo(folder / "cat" / f"{i}.jpg", (200, 60, 40))
    for i in range(dogs):
        photo(folder / "dog" / f"{i}.jpg", (40, 60, 200))
    return folder


def test_symlink_loops_and_second_ways_to_a_folder_are_skipped_once(tmp_path, capsys):
    folder = pets_folder(tmp_path / "pets")
    os.symlink("..", folder / "cat" / "loop")  # ln -s .. cat/loop
    os.symlink("cat", folder / "alias")  # a second way to cat/ (listed first by name)
    os.symlink("self", folder / "dog" / "self")  # a link to itself
    photo(tmp_path / "elsewhere" / "1.jpg")
    os.symlink(tmp_path / "elsewhere", folder / "dog" / "more")  # followed: outside, once
    manifest = build_manifest(folder, split_sizes=(5, 1, 1), cache_dir=tmp_path / "c")
    reasons = dict(manifest.skipped)
    assert reasons["cat/loop/"].startswith("symlink loop")
    assert reasons["alias/"] == "already visited as cat/"
    assert reasons["dog/self"].startswith("unreadable (symlink loop")
    assert sorted(p for p, _, _ in manifest.rows) == [
        "cat/0.jpg", "cat/1.jpg", "cat/2.jpg", "dog/0.jpg", "dog/1.jpg", "dog/2.jpg",
        "dog/more/1.jpg",
    ]  # fmt: skip
    assert main(["data", "inspect", str(folder), "--cache-dir", str(tmp_path / "c"),
                 "--split-sizes", "5", "1", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "cat/loop/: symlink loop" in out and "alias/: already visited as cat/" in out


def test_names_that_are_not_utf8_are_skipped_and_listed(tmp_path, capsys):
    folder = kaggle_folder(tmp_path / "train", 3, 3)
    good = (folder / "cat.0.jpg").read_bytes()
    with open(os.fsencode(folder) + b"/cat.\xff.jpg", "wb") as f:
        f.write(good)
    os.mkdir(os.fsencode(folder) + b"/caf\xe9")  # Latin-1 "café"
    with open(os.fsencode(folder) + b"/caf\xe9/dog.9.jpg", "wb") as f:
        f.write(good)
    manifest = build_manifest(folder, split_sizes=(4, 1, 1), cache_dir=tmp_path / "c")
    reasons = dict(manifest.skipped)
    not_utf8 = "name is not valid UTF-8: rename it to use it"
    assert reasons["cat.\\xff.jpg"] == reasons["caf\\xe9/"] == not_utf8
    assert len(manifest.rows) == 6
    listed = manifest.skipped_path.read_text(encoding="utf-8")  # strict UTF-8: it decodes
    assert "cat.\\xff.jpg" in listed
    assert main(["data", "inspect", str(folder), "--cache-dir", str(tmp_path / "c"),
                 "--split-sizes", "4", "1", "1"]) == 0  # fmt: skip
    assert "cat.\\xff.jpg: name is not valid UTF-8" in capsys.readouterr().out


class Entry:
    """A DirEntry whose stat() fails as a file removed between listing and stat would."""

    def __init__(self, entry):
        self._entry = entry

    def __getattr__(self, name):
        return getattr(self._entry, name)

    def stat(self, **kw):
        raise FileNotFoundError(2, "No such file or directory", self._entry.path)


def test_an_unreadable_folder_or_a_file_gone_mid_scan_is_skipped(tmp_path, monkeypatch):
    folder = pets_folder(tmp_path / "pets")
    photo(folder / "dog" / "locked" / "1.jpg")
    real = os.scandir

    class Listing:
        def __init__(self, path):
            if Path(path).name == "locked":
                raise PermissionError(13, "Permission denied", str(path))
            self._it = real(path)

        def __enter__(self):
            return [Entry(e) if e.name == "2.jpg" else e for e in self._it.__enter__()]

        def __exit__(self, *exc):
            return self._it.__exit__(*exc)

    monkeypatch.setattr(I.os, "scandir", Listing)
    scan = scan_folder(folder)
    reasons = dict(scan.skipped)
    assert reasons["dog/locked/"] == "folder unreadable (Permission denied)"
    gone = "unreadable (No such file or directory)"
    assert reasons["cat/2.jpg"] == reasons["dog/2.jpg"] == gone
    assert [p for p, _, _ in scan.files] == ["cat/0.jpg", "cat/1.jpg", "dog/0.jpg", "dog/1.jpg"]


def test_a_folder_without_read_permission_is_skipped(tmp_path, monkeypatch):
    folder = pets_folder(tmp_path / "pets")
    locked = folder / "dog" / "locked"
    photo(locked / "1.jpg")
    locked.chmod(0)
    refuse_as_root(monkeypatch, I.os, "scandir", locked)
    try:
        scan = scan_folder(folder)
    finally:
        locked.chmod(0o755)
    assert dict(scan.skipped)["dog/locked/"] == "folder unreadable (Permission denied)"


def test_kaggle_photos_beside_a_class_folder_are_all_used(tmp_path, caplog):
    """The issue's folder: eight cat.*.jpg at the top beside dog/. It was read as class folders
    without the cats, and training scored 1.0 on dogs alone."""
    folder = tmp_path / "train"
    for i in range(8):
        photo(folder / f"cat.{i}.jpg", (200, 60, 40))
    for i in range(8):
        photo(folder / "dog" / f"{i}.jpg", (40, 60, 200))
    (folder / "notes.txt").write_text("not a photo")
    manifest = build_manifest(folder, split_sizes=(12, 2, 2), cache_dir=tmp_path / "c")
    assert manifest.layout == "mixed (kaggle + imagefolder)" and manifest.classes == CLASSES
    assert {s: sum(n.values()) for s, n in manifest.counts().items()} == {
        "train": 12, "val": 2, "test": 2, "unused": 0,
    }  # fmt: skip
    assert all(min(n.values()) >= 1 for s, n in manifest.counts().items() if s != "unused")
    assert dict(manifest.skipped) == {
        "notes.txt": "beside class folders, and not named <class>.<id>.<image ext>: no label"
    }
    assert "using both" in caplog.text


@pytest.mark.parametrize(
    "flat, folders, named",
    [
        (["apple.0.jpg", "apple.1.jpg"], ["banana/1.jpg"], ["apple.0.jpg", "banana/"]),
        (["cat.0.jpg", "dog.0.jpg"], ["extra/a.jpg", "extra/b.jpg"], ["cat.0.jpg", "extra/"]),
        (["Bengal_1.jpg", "pug_2.jpg"], ["thumbs/1.jpg"], ["Bengal_1.jpg", "thumbs/"]),
    ],
)
def test_flat_photos_beside_folders_of_other_photos_are_an_error(tmp_path, flat, folders, named):
    folder = tmp_path / "photos"
    for name in flat + folders:
        photo(folder / name)
    with pytest.raises(DataError) as err:
        scan_folder(folder)
    message = str(err.value)
    assert all(n in message for n in named) and "Move the top photos into a folder" in message


def test_a_flat_folder_keeps_subfolders_of_non_images_out(tmp_path):
    folder = kaggle_folder(tmp_path / "train", 2, 2)
    for i in range(10):  # more files than photos: once read as a class folder, dropping both
        (folder / "annotations" / f"{i}.xml").parent.mkdir(exist_ok=True)
        (folder / "annotations" / f"{i}.xml").write_text("<xml/>")
    scan = scan_folder(folder)
    assert scan.layout == "kaggle" and scan.classes == CLASSES and len(scan.files) == 4
    assert dict(scan.skipped)["annotations/0.xml"].startswith("in a subfolder of a flat")


def test_every_photo_of_a_class_outside_the_layout_is_an_error(tmp_path):
    photo(tmp_path / "pets" / "PetImages" / "Cat" / "1.jpg")
    photo(tmp_path / "pets" / "PetImages" / "Dog" / "1.jpg")
    photo(tmp_path / "pets" / "cat.7.jpg")  # outside, but cat is a class: skipped, listed
    assert dict(scan_folder(tmp_path / "pets").skipped) == {
        "cat.7.jpg": "outside PetImages/<class>/"
    }
    photo(tmp_path / "pets" / "bird.1.jpg")
    with pytest.raises(DataError, match=r"every photo of class bird.*bird\.1\.jpg"):
        scan_folder(tmp_path / "pets")
    kaggle_folder(tmp_path / "split" / "train", 2, 2)
    photo(tmp_path / "split" / "extra" / "fox.1.jpg")
    with pytest.raises(DataError, match=r"class fox.*extra/fox\.1\.jpg \(not inside a train"):
        scan_folder(tmp_path / "split")


@pytest.mark.parametrize("damage", ["cut", "cut in a character", "not ours", "other files"])
def test_a_damaged_scan_record_or_manifest_is_rebuilt(tmp_path, monkeypatch, caplog, damage):
    folder = kaggle_folder(tmp_path / "train", 3, 3)
    first = build_manifest(folder, split_sizes=(4, 1, 1), cache_dir=tmp_path / "c")
    files = {p: p.read_bytes() for p in first.path.parent.parent.rglob("*") if p.is_file()}
    record = first.path.parent.parent / "scan.json"
    for path, body in files.items():
        if damage == "cut":
            path.write_bytes(body[: len(body) // 2])
        elif damage == "cut in a character":
            path.write_bytes(body[:10] + "é".encode()[:1])
        elif damage == "not ours":
            path.write_text("[1, 2, 3]")
    if damage == "other files":
        saved = M.json.loads(files[record])
        saved["images"] = saved["images"][:-1]  # a record of this listing that lacks a file
        record.write_text(M.json.dumps(saved))
    opened = []
    original = M.check_image
    monkeypatch.setattr(M, "check_image", lambda p: opened.append(p) or original(p))
    again = build_manifest(folder, split_sizes=(4, 1, 1), cache_dir=tmp_path / "c")
    assert len(opened) == 6 and "checking the images again" in caplog.text
    assert again.rows == first.rows
    assert {p: p.read_bytes() for p in files} == files  # every file whole again


def test_a_class_whose_every_photo_fails_the_image_check_is_an_error(tmp_path):
    folder = kaggle_folder(tmp_path / "train", 4, 0)
    (folder / "dog.1.jpg").write_bytes(b"")
    (folder / "dog.2.jpg").write_text("not a photo")
    with pytest.raises(DataError, match=r"image check for every photo of class dog.*dog\.1\.jpg"):
        build_manifest(folder, split_sizes=(2, 1, 1), cache_dir=tmp_path / "c")


# --------------------------------------------------------------------------------------------
# The bench layout (jurschreuder/cats-dogs-bench): a pool, labelled subsets, near-copies
# --------------------------------------------------------------------------------------------

BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "cats-dogs-bench-128"


def shot(path: Path, seed: int) -> Path:
    """A 128 px photo-like picture of its own (`test_dedup.picture`: helpers.photo's ramps are
    too alike to a perceptual hash to stand for unrelated photos)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    picture(seed).save(path, quality=90)
    return path


def copy_of(src: Path, dest: Path, *, mirror: bool = False, quality: int = 30) -> Path:
    """A mirrored and/or re-encoded copy of `src` (a near-copy to the hash, not the bytes)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    img = load_image(src)
    (ImageOps.mirror(img) if mirror else img).save(dest, quality=quality)
    return dest


def bench_folder(root: Path, *, test: bool = True) -> Path:
    """A small cats-dogs-bench: pre-train/ with mirrors (`-flip`) and copies, nested labelled
    subsets 1000/ 500/ 250/ whose photos carry another counter in each folder, and test/."""
    pool = root / "pre-train"
    for i in range(10):
        shot(pool / f"cat.{i}.jpg", 100 + i)
        shot(pool / f"dog.{i}.jpg", 200 + i)
    copy_of(pool / "cat.0.jpg", pool / "cat.0-flip.jpg", mirror=True)
    copy_of(pool / "dog.1.jpg", pool / "dog.1-flip.jpg", mirror=True)
    shot(pool / "cat.2-flip.jpg", 300)  # another picture: grouped by its name
    copy_of(pool / "cat.3.jpg", pool / "cat.103.jpg", quality=15)  # re-encoded
    copy_of(pool / "cat.9.jpg", pool / "dog.109.jpg")  # the same photo labelled a dog
    for c, cls in enumerate(("cat", "dog")):
        for k in range(4):  # 1000/cat.1000 = 500/cat.999 = 250/cat.998: the same photo
            first = shot(root / "1000" / f"{cls}.{1000 + 10 * k}.jpg", 400 + 10 * c + k)
            for folder, n, counter in (("500", 2, 999), ("250", 1, 998)):
                if k < n:
                    (root / folder).mkdir(exist_ok=True)
                    shutil.copy(first, root / folder / f"{cls}.{counter + 10 * k}.jpg")
        for k in range(3 if test else 0):
            shot(root / "test" / f"{cls}.{2000 + k}.jpg", 500 + 10 * c + k)
    copy_of(root / "250" / "dog.998.jpg", pool / "dog.4.jpg")  # a pool copy of a subset photo
    if test:
        copy_of(root / "test" / "cat.2000.jpg", pool / "cat.5.jpg")  # ... and of a test photo
    (root / "README.md").write_text("a benchmark")
    return root


PLANTED = [  # the near-copy groups bench_folder makes, each sorted
    ["1000/cat.1000.jpg", "250/cat.998.jpg", "500/cat.999.jpg"],
    ["1000/dog.1000.jpg", "250/dog.998.jpg", "500/dog.999.jpg", "pre-train/dog.4.jpg"],
    ["1000/cat.1010.jpg", "500/cat.1009.jpg"],
    ["1000/dog.1010.jpg", "500/dog.1009.jpg"],
    ["pre-train/cat.0-flip.jpg", "pre-train/cat.0.jpg"],
    ["pre-train/cat.103.jpg", "pre-train/cat.3.jpg"],
    ["pre-train/cat.2-flip.jpg", "pre-train/cat.2.jpg"],
    ["pre-train/cat.9.jpg", "pre-train/dog.109.jpg"],
    ["pre-train/dog.1-flip.jpg", "pre-train/dog.1.jpg"],
    ["pre-train/cat.5.jpg", "test/cat.2000.jpg"],
]


def test_bench_layout_pool_subsets_and_test_folder(tmp_path):
    root = bench_folder(tmp_path / "bench")
    scan = scan_folder(root)
    layout = "bench (pre-train: kaggle, test: kaggle; labelled subsets: 1000, 500, 250)"
    assert scan.layout == layout
    assert {s for _, _, s in scan.files} == {None, "test"}
    assert dict(scan.skipped) == {
        "README.md": "not in pre-train/, a val/ or test/ folder, or a labelled set named by its size"
    }
    manifest = build_manifest(root, split_sizes=(12, 4, 6), cache_dir=tmp_path / "c")
    assert manifest.layout == layout and manifest.subset_names == ("1000", "500", "250")
    paths, labels = manifest.subset("250")
    assert paths == ["250/cat.998.jpg", "250/dog.998.jpg"] and labels.tolist() == [0, 1]
    assert (
        len(manifest.subset("1000")[0]) == 8
        and manifest.subset("500")[1].tolist() == [0] * 2 + [1] * 2
    )
    with pytest.raises(DataError, match="no labelled subset '100'; it has 1000, 500, 250"):
        manifest.subset("100")
    # The subsets are outside the split; test/ is the test split, whole.
    split = {p: s for p, _, s in manifest.rows}
    assert not any(p.split("/")[0] in ("1000", "500", "250") for p in split)
    assert sorted(p for p, s in split.items() if s == "test") == [
        f"test/{c}.{2000 + k}.jpg" for c in ("cat", "dog") for k in range(3)
    ]
    assert sorted(manifest.near_copies()) == sorted(PLANTED)
    with open(manifest.path, newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert rows["250/dog.998.jpg"]["split"] == "subset:250"
    assert (
        rows["500/dog.999.jpg"]["group"]
        == rows["pre-train/dog.4.jpg"]["group"]
        == "1000/dog.1000.jpg"
    )
    assert {p: r["group"] for p, r in rows.items()} == dict(manifest.groups)
    assert len(rows) == 25 + 6 + 14  # pool, test, subsets: every photo listed once


def test_bench_splits_keep_copies_on_one_side_and_away_from_tests_and_subsets(tmp_path):
    root = bench_folder(tmp_path / "bench", test=False)
    for seed in range(6):
        manifest = build_manifest(root, split_sizes=(10, 4, 4), seed=seed, cache_dir=tmp_path / "c")
        split = {p: s for p, _, s in manifest.rows}
        for group in manifest.near_copies():
            assert len({split[p] for p in group if p in split}) <= 1, group
        # A copy of a subset photo a fine-tune sees: never in val or test.
        assert split["pre-train/dog.4.jpg"] in ("train", "unused")
        counts = manifest.counts()
        assert [sum(counts[s].values()) for s in ("val", "test")] == [4, 4]
    with_test = build_manifest(bench_folder(tmp_path / "b2"), split_sizes=(12, 4, 6),
                               cache_dir=tmp_path / "c")  # fmt: skip
    assert {p: s for p, _, s in with_test.rows}["pre-train/cat.5.jpg"] == "unused"


def test_describe_reports_near_copy_groups_subsets_and_mixed_labels(tmp_path, capsys):
    root = bench_folder(tmp_path / "bench")
    manifest = build_manifest(root, split_sizes=(12, 4, 6), cache_dir=tmp_path / "c")
    text = M.describe(manifest)
    # cat.0 and dog.1 with mirrors, cat.2 with its -flip name, cat.3 re-encoded, cat.9 as a
    # dog, cat.5 with its test/ photo.
    assert "near-copies: 6 groups of 2 or more images in the split (12 images)" in text
    assert "  1 split image copies labelled-subset photos: train or unused only" in text
    assert "labelled subsets, outside the split" in text and "\n250          1     1     2" in text
    assert (
        "  1 group mixes labels (placeholders or mislabelled copies: label noise):\n"
        "    pre-train/cat.9.jpg (cat) = pre-train/dog.109.jpg (dog)\n"
    ) in text
    meta = json.loads(manifest.path.with_name("manifest.json").read_text())
    assert meta["near_copies"] == {"groups": len(PLANTED), "images": 23, "mixed_labels": 1}
    assert meta["subsets"] == {"1000": 8, "500": 4, "250": 2}
    # `python -m vitlib data inspect DIR` prints the same account.
    assert main(["data", "inspect", str(root), "--cache-dir", str(tmp_path / "c"),
                 "--split-sizes", "12", "4", "6"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == text.strip()


def test_a_folder_without_label_noise_reports_none(tmp_path):
    for i in range(4):
        shot(tmp_path / "train" / f"cat.{i}.jpg", i)
        shot(tmp_path / "train" / f"dog.{i}.jpg", 10 + i)
    copy_of(tmp_path / "train" / "cat.0.jpg", tmp_path / "train" / "cat.50.jpg", mirror=True)
    manifest = build_manifest(tmp_path / "train", split_sizes=(5, 2, 2), cache_dir=tmp_path / "c")
    assert manifest.near_copies() == [["cat.0.jpg", "cat.50.jpg"]]
    text = M.describe(manifest)
    assert "near-copies: 1 group of 2 or more images in the split (2 images)" in text
    assert "mix labels" not in text and "mixes labels" not in text
    assert "labelled-subset" not in text  # no subsets here


@pytest.mark.skipif(not BENCH.is_dir(), reason=f"real photos not present at {BENCH}")
def test_real_cats_dogs_bench_128_groups_nested_subsets_and_the_placeholder(tmp_path):
    """About 35 s on 2 cores: every one of 24,850 photos is checked and hashed."""
    manifest = build_manifest(BENCH, split_sizes=(21_000, 1_000, 1_000), cache_dir=tmp_path,
                              progress=False)  # fmt: skip
    assert manifest.layout == "bench (pre-train: kaggle; labelled subsets: 1000, 500, 250, 100)"
    assert manifest.subset_names == ("1000", "500", "250", "100")
    for name in manifest.subset_names:
        paths, labels = manifest.subset(name)
        assert len(paths) == int(name) and labels.sum() == int(name) // 2  # half dogs
    # Nested (README): each 100 photo is among the 250, 500 and 1000 under another name, which
    # only the hashes can tell.
    sub = {p: s for p, _, s in manifest.subsets}
    folders = {}
    for p, s in sub.items():
        folders.setdefault(manifest.groups[p], []).append(s)
    assert sorted(Counter(tuple(sorted(f)) for f in folders.values()).values()) == [
        100,
        150,
        250,
        500,
    ]
    assert all(len(f) == len(set(f)) for f in folders.values())
    split = {p: s for p, _, s in manifest.rows}
    for group in manifest.near_copies():
        assert len({split[p] for p in group if p in split}) <= 1
        if any(p in sub for p in group):  # a pool copy of a subset photo (looked at: 2)
            assert {split[p] for p in group if p in split} <= {"train", "unused"}
    # The Kaggle "PHOTO UNAVAILABLE" placeholder: one cat and three dogs, label noise.
    label = {p: c for p, c, _ in (*manifest.rows, *manifest.subsets)}
    mixed = [g for g in manifest.near_copies() if len({label[p] for p in g}) > 1]
    assert any(sorted(label[p] for p in g) == ["cat", "dog", "dog", "dog"] for g in mixed)
    assert "mix labels (placeholders or mislabelled copies" in M.describe(manifest)
    counts = manifest.counts()
    assert sum(map(sum, (c.values() for c in counts.values()))) == 23_000
    assert counts["val"] == {"cat": 500, "dog": 500}
