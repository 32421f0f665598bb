"""Tests of vitlib.manifest: layouts, the scan, bad files, the split, the manifest."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import CFG32, REAL, kaggle_folder, labels_by_name, photo

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
