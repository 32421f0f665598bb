"""Data pipeline: layouts, the split, bad files, image modes, preprocessing vs timm, the decoded
cache, datasets, the synthetic set, open_image, the CLI, and a check on real photos."""

import csv
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlib import data as D
from vitlib.config import DataConfig, get_config
from vitlib.data import (
    CLASSES,
    DataError,
    build_cache,
    build_manifest,
    data_provenance,
    generate_synthetic,
    load_image,
    load_splits,
    open_image,
    preprocess,
    scan_folder,
    split_items,
)
from vitlib.model import default_pretrained_cfg

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-128"
CFG32 = default_pretrained_cfg(32)
JAX_CFG = dict(
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(3, 24, 24), crop_pct=0.9,
    interpolation="bicubic",
)  # fmt: skip


def photo(path: Path, colour=(200, 40, 40), size=(20, 14), fmt=None, mode="RGB") -> Path:
    """A small image file with a gradient (so resizing has something to do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    ramp = np.linspace(0.5, 1.0, w)[None, :, None]
    arr = (np.array(colour)[None, None, :] * ramp * np.ones((h, 1, 1))).astype(np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt or ("PNG" if path.suffix.lower() == ".png" else "JPEG"))
    return path


def kaggle_folder(folder: Path, cats: int, dogs: int) -> Path:
    for i in range(cats):
        photo(folder / f"cat.{i}.jpg", (200, 60, 40))
    for i in range(dogs):
        photo(folder / f"dog.{i}.jpg", (40, 60, 200))
    return folder


def labels_by_name(scan):
    return {Path(p).name: c for p, c, _ in scan.files}


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------


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
    names = [f"{breed}_1.jpg" for breed in D.OXFORD_CAT_BREEDS]
    names += ["american_bulldog_10.jpg", "yorkshire_terrier_3.jpg"]
    for name in names:
        photo(tmp_path / "images" / name)
    (tmp_path / "images" / "Abyssinian_100.mat").write_bytes(b"MATLAB 5.0")
    scan = scan_folder(tmp_path / "images")
    assert scan.layout == "oxford-pets"
    labels = labels_by_name(scan)
    assert {labels[f"{b}_1.jpg"] for b in D.OXFORD_CAT_BREEDS} == {"cat"}
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
    assert "python -m vitlib.data download" in message and "--data" in message


def test_missing_folder_says_how_to_get_data(tmp_path):
    cfg = DataConfig(source="folder", root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"does not exist.*vitlib\.data download.*--data"):
        load_splits(cfg, CFG32)
    with pytest.raises(DataError, match="no data folder given"):
        load_splits(DataConfig(source="folder", root=None), CFG32)


# --------------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------------


def pool(cats=300, dogs=200):
    return [(f"cat.{i}.jpg", "cat", None) for i in range(cats)] + [
        (f"dog.{i}.jpg", "dog", None) for i in range(dogs)
    ]


def by_split(rows):
    out = {}
    for path, cls, split in rows:
        out.setdefault(split, []).append((path, cls))
    return out


def test_split_sizes_stratified_disjoint_complete():
    rows = split_items(pool(), (400, 50, 40), seed=0)
    s = by_split(rows)
    assert {k: len(v) for k, v in s.items()} == {"train": 400, "val": 50, "test": 40, "unused": 10}
    for name, n in (("train", 400), ("val", 50), ("test", 40)):
        cats = sum(c == "cat" for _, c in s[name])
        assert abs(cats - 0.6 * n) <= 1  # the pool's 3:2
    paths = [p for p, _, _ in rows]
    assert len(paths) == len(set(paths)) == 500  # no overlap, nothing dropped


def test_split_is_deterministic_order_free_and_seeded():
    files = pool()
    a = split_items(files, (400, 50, 40), seed=0)
    assert split_items(list(reversed(files)), (400, 50, 40), seed=0) == a
    b = split_items(files, (400, 50, 40), seed=1)
    assert by_split(a)["val"] != by_split(b)["val"]
    # val and test are drawn before train: a smaller train leaves them as they were.
    c = split_items(files, (100, 50, 40), seed=0)
    assert by_split(c)["val"] == by_split(a)["val"] and by_split(c)["test"] == by_split(a)["test"]


def test_split_of_a_pool_too_small_is_scaled_down():
    s = by_split(split_items(pool(60, 40), (480, 160, 160), seed=0))
    assert {k: len(v) for k, v in s.items()} == {"train": 60, "val": 20, "test": 20}


def test_manifest_is_the_same_file_wherever_the_folder_lies(tmp_path):
    kaggle_folder(tmp_path / "a" / "train", 12, 8)
    kaggle_folder(tmp_path / "b" / "train", 12, 8)
    ma = build_manifest(tmp_path / "a" / "train", split_sizes=(10, 4, 4), cache_dir=tmp_path / "c")
    mb = build_manifest(tmp_path / "b" / "train", split_sizes=(10, 4, 4), cache_dir=tmp_path / "c")
    assert ma.path != mb.path and ma.path.read_bytes() == mb.path.read_bytes()
    with open(ma.path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "split"]
    assert all("/" not in r["path"] for r in rows)  # relative to the folder: file names here
    assert {r["split"] for r in rows} == {"train", "val", "test", "unused"}


# --------------------------------------------------------------------------------------------
# Bad files and image modes
# --------------------------------------------------------------------------------------------


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
    assert D.main(["inspect", str(folder), "--cache-dir", str(tmp_path / "c"),
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


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_skipped(tmp_path):
    folder = kaggle_folder(tmp_path / "train", 2, 2)
    locked = photo(folder / "cat.locked.jpg")
    locked.chmod(0)
    try:
        manifest = build_manifest(folder, split_sizes=(2, 1, 1), cache_dir=tmp_path / "c")
    finally:
        locked.chmod(0o644)
    assert dict(manifest.skipped)["cat.locked.jpg"] == "unreadable (permission denied)"


def test_the_image_check_runs_once_per_file_listing(tmp_path, monkeypatch):
    folder = kaggle_folder(tmp_path / "train", 3, 3)
    opened = []
    original = D._check_image
    monkeypatch.setattr(D, "_check_image", lambda p: opened.append(p) or original(p))
    build_manifest(folder, split_sizes=(4, 1, 1), cache_dir=tmp_path / "c")
    build_manifest(folder, split_sizes=(2, 2, 2), seed=5, cache_dir=tmp_path / "c")
    assert len(opened) == 6
    photo(folder / "dog.9.jpg")
    build_manifest(folder, split_sizes=(4, 1, 1), cache_dir=tmp_path / "c")
    assert len(opened) == 13


def exif_rotated(path: Path) -> Path:
    """A 30x20 image stored sideways with EXIF orientation 6: upright it is 20x30 with its
    red corner at the top left."""
    upright = np.zeros((30, 20, 3), np.uint8)
    upright[:8, :8] = (255, 0, 0)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 30 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    stored.save(path, exif=exif, quality=95)
    return path


def test_every_image_mode_becomes_upright_rgb(tmp_path):
    img = load_image(exif_rotated(tmp_path / "rotated.jpg"))
    assert img.mode == "RGB" and img.size == (20, 30)
    arr = np.asarray(img)
    assert arr[2, 2, 0] > 200 and arr[2, 2, 1] < 60 and arr[-3, -3].max() < 60

    grey = Image.fromarray(np.full((6, 6), 77, np.uint8), "L")
    assert np.asarray(load_image(grey))[0, 0].tolist() == [77, 77, 77]
    assert load_image(grey.convert("1")).mode == "RGB"
    palette = Image.fromarray(np.full((6, 6, 3), (10, 200, 30), np.uint8)).quantize(4)
    assert np.asarray(load_image(palette))[0, 0].tolist() == [10, 200, 30]
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[:3] = (0, 0, 255, 255)  # top half opaque blue, bottom half transparent
    out = np.asarray(load_image(Image.fromarray(rgba, "RGBA")))
    assert out[0, 0].tolist() == [0, 0, 255] and out[5, 5].tolist() == [255, 255, 255]
    assert (
        np.asarray(load_image(Image.fromarray(rgba, "RGBA").convert("LA")))[5, 5].tolist()
        == [255] * 3
    )
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(cmyk)  # pure red in CMYK
    red = np.asarray(load_image(cmyk))[3, 3]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))  # 16-bit grey, white
    assert np.asarray(load_image(deep))[0, 0].tolist() == [255, 255, 255]


def test_odd_modes_pass_the_check_and_reach_the_cache(tmp_path):
    folder = tmp_path / "pets"
    photo(folder / "cat" / "grey.png", mode="L")
    photo(folder / "cat" / "palette.png", mode="P")
    photo(folder / "dog" / "cmyk.jpg", mode="CMYK")
    photo(folder / "dog" / "alpha.png", mode="RGBA")
    exif_rotated(folder / "dog" / "rotated.jpg")
    manifest = build_manifest(folder, split_sizes=(5, 0, 0), cache_dir=tmp_path / "c")
    assert manifest.skipped == () and len(manifest.split("train")[0]) == 5
    images = build_cache(manifest, "train", CFG32, progress=False)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8


# --------------------------------------------------------------------------------------------
# Preprocessing and the cache
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocessing_equals_timms_eval_transform(interpolation):
    from timm.data import create_transform

    cfg = dict(
        JAX_CFG, interpolation=interpolation, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    expected = create_transform(
        input_size=cfg["input_size"], interpolation=interpolation, mean=cfg["mean"],
        std=cfg["std"], crop_pct=cfg["crop_pct"],
    )(img)  # fmt: skip
    ours = D.normalise(preprocess(img, cfg), cfg["mean"], cfg["std"])[0]
    assert ours.shape == expected.shape == (3, 24, 24)
    assert torch.equal(ours, expected)


def folder_cfg(root, tmp_path, **kw):
    return DataConfig(source="folder", root=str(root), split_sizes=(8, 2, 2),
                      cache_dir=str(tmp_path / "cache"), **kw)  # fmt: skip


def test_cache_built_once_and_rebuilt_when_its_inputs_change(tmp_path, monkeypatch):
    folder = kaggle_folder(tmp_path / "train", 8, 8)
    decoded = []
    original = D.load_image
    monkeypatch.setattr(D, "load_image", lambda p: decoded.append(p) or original(p))
    cfg = folder_cfg(folder, tmp_path)
    first = load_splits(cfg, JAX_CFG, progress=False)
    assert len(decoded) == 12  # train 8, val 2, test 2
    again = load_splits(cfg, JAX_CFG, progress=False)
    assert len(decoded) == 12 and again["train"].info["cache"] == first["train"].info["cache"]
    for change in (
        dict(crop_pct=1.0),
        dict(interpolation="bilinear"),
        dict(input_size=(3, 16, 16)),
    ):
        before = len(decoded)
        ds = load_splits(cfg, dict(JAX_CFG, **change), progress=False)
        assert len(decoded) == before + 12, change
        assert ds["train"].info["cache"]["train"] != first["train"].info["cache"]["train"]
    before = len(decoded)
    load_splits(cfg, JAX_CFG, seed=1, progress=False)  # another split: another manifest
    assert len(decoded) == before + 12
    before = len(decoded)
    photo(folder / "cat.50.jpg", (10, 200, 10))  # the folder changed
    load_splits(cfg, JAX_CFG, progress=False)
    assert len(decoded) == before + 12


def test_a_killed_cache_build_leaves_nothing_taken_as_valid(tmp_path, monkeypatch):
    folder = kaggle_folder(tmp_path / "train", 8, 8)
    manifest = build_manifest(folder, split_sizes=(8, 2, 2), cache_dir=tmp_path / "c")
    calls = []

    def dies_on_the_fifth(path):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return Image.open(path).convert("RGB")

    monkeypatch.setattr(D, "load_image", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        build_cache(manifest, "train", CFG32, progress=False)
    assert list(manifest.path.parent.glob("train-*")) == []
    # A temporary left by a process that died (no cleanup ran) is never read, then removed.
    stale = manifest.path.parent / "train-32px-000000000000.npy.tmp-999999999"
    stale.write_bytes(b"half")
    monkeypatch.undo()
    images = build_cache(manifest, "train", CFG32, progress=False)
    assert images.shape == (8, 32, 32, 3)
    assert not stale.exists()
    expected = np.stack(
        [preprocess(load_image(folder / p), CFG32) for p in manifest.split("train")[0]]
    )
    assert np.array_equal(images, expected)


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


def test_datasets_serve_normalised_items_labels_and_paths(tmp_path):
    folder = kaggle_folder(tmp_path / "train", 8, 8)
    ds = load_splits(folder_cfg(folder, tmp_path), JAX_CFG, progress=False)
    assert {k: len(v) for k, v in ds.items()} == {"train": 8, "val": 2, "test": 2}
    train = ds["train"]
    x, y = train[3]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and isinstance(y, int)
    batch = train.normalise(torch.from_numpy(np.array(train.images[[3]])))
    assert torch.equal(batch[0], x)
    assert train.labels.dtype == np.int64 and train.classes == CLASSES
    for path, label in zip(train.paths, train.labels, strict=True):
        assert Path(path).is_file() and Path(path).name.split(".")[0] == CLASSES[label]
    assert isinstance(train.images, np.memmap) and train.boxes is None
    clone = pickle.loads(pickle.dumps(train))  # DataLoader workers reopen the memmap
    assert isinstance(clone.images, np.memmap) and torch.equal(clone[3][0], x)
    loader = torch.utils.data.DataLoader(train, batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 24, 24) and yb.tolist() == train.labels[:4].tolist()


def test_augmentation_is_off_by_default_and_train_only(tmp_path):
    folder = kaggle_folder(tmp_path / "train", 8, 8)
    plain = load_splits(folder_cfg(folder, tmp_path), JAX_CFG, progress=False)
    assert not plain["train"].augment and torch.equal(plain["train"][0][0], plain["train"][0][0])
    ds = load_splits(folder_cfg(folder, tmp_path, augment=True), JAX_CFG, progress=False)
    assert ds["train"].augment and not ds["val"].augment and not ds["test"].augment
    torch.manual_seed(0)
    views = [ds["train"][0][0] for _ in range(6)]
    assert views[0].shape == (3, 24, 24)
    assert any(not torch.equal(views[0], v) for v in views[1:])
    batch = torch.from_numpy(np.array(ds["train"].images[:4]))
    assert ds["train"].augment_batch(batch).shape == batch.shape
    assert ds["val"].augment_batch(batch) is batch


def test_data_provenance_records_source_manifest_and_counts(tmp_path):
    folder = kaggle_folder(tmp_path / "train", 8, 8)
    photo(folder / "notes.txt")  # not a Kaggle name: skipped
    ds = load_splits(folder_cfg(folder, tmp_path), JAX_CFG, progress=False)
    prov = data_provenance(ds)
    assert prov["source"] == str(folder.resolve()) and prov["layout"] == "kaggle"
    assert prov["counts"] == {
        s: {"cat": n // 2, "dog": n // 2} for s, n in (("train", 8), ("val", 2), ("test", 2))
    }
    assert prov["skipped"] == 1 and Path(prov["skipped_list"]).is_file()
    assert (
        prov["manifest_sha256"] == D.hashlib.sha256(Path(prov["manifest"]).read_bytes()).hexdigest()
    )
    assert prov["preprocessing"]["crop_pct"] == 0.9 and set(prov["cache"]) == {
        "train",
        "val",
        "test",
    }
    assert data_provenance(ds["val"])["counts"] == {"val": {"cat": 1, "dog": 1}}


# --------------------------------------------------------------------------------------------
# The synthetic set
# --------------------------------------------------------------------------------------------


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


@pytest.mark.slow
def test_smoke_vit_learns_the_synthetic_set_in_seconds(tmp_path):
    """The smoke profile's tiny ViT, from scratch: Adam 1e-3, cosine, batch 32, 6 epochs."""
    from vitlib.model import build_vit

    cfg = get_config("smoke", {"data.cache_dir": str(tmp_path)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible (and fastest on small CPUs)
    try:
        torch.manual_seed(0)
        model = build_vit(cfg.model.arch, num_classes=2, img_size=32, **cfg.model.arch_kwargs)
        ds = load_splits(cfg.data, model.pretrained_cfg, progress=False)
        x = ds["train"].normalise(torch.from_numpy(np.array(ds["train"].images)))
        y = torch.from_numpy(ds["train"].labels)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        steps = 6 * -(-len(y) // 32)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        g = torch.Generator().manual_seed(0)
        for _ in range(6):
            for idx in torch.randperm(len(y), generator=g).split(32):
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        xv = ds["val"].normalise(torch.from_numpy(np.array(ds["val"].images)))
        with torch.no_grad():
            acc = (model.eval()(xv).argmax(1).numpy() == ds["val"].labels).mean()
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.85


# --------------------------------------------------------------------------------------------
# open_image
# --------------------------------------------------------------------------------------------


def test_open_image_from_a_path_a_pil_image_or_an_index(tmp_path):
    folder = kaggle_folder(tmp_path / "train", 8, 8)
    ds = load_splits(folder_cfg(folder, tmp_path), JAX_CFG, progress=False)["val"]
    path = ds.paths[1]
    t_path, d_path = open_image(path, JAX_CFG)
    t_pil, d_pil = open_image(Image.open(path), JAX_CFG)
    t_idx, d_idx = open_image(1, JAX_CFG, ds)
    assert t_path.shape == (3, 24, 24) and d_path.shape == (24, 24, 3) and d_path.dtype == np.uint8
    assert np.array_equal(d_path, d_pil) and np.array_equal(d_path, d_idx)
    assert (
        torch.equal(t_path, t_pil) and torch.equal(t_path, t_idx) and torch.equal(t_idx, ds[1][0])
    )
    rotated, _ = open_image(exif_rotated(tmp_path / "r.jpg"), JAX_CFG)  # upright, as in the data
    assert rotated[0, 1, 1] > rotated[0, -2, -2]
    with pytest.raises(ValueError, match="needs the dataset"):
        open_image(0, JAX_CFG)
    with pytest.raises(ValueError, match="24px"):
        open_image(0, CFG32, ds)


# --------------------------------------------------------------------------------------------
# Real photographs (../shared, when present)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real photos not present at {REAL}")
def test_real_dogs_vs_cats_128_every_image_loads_with_its_label(tmp_path):
    manifest = build_manifest(
        REAL, split_sizes=(9_000, 1_000, 1_000), cache_dir=tmp_path, progress=False
    )
    assert manifest.layout == "presplit (train: kaggle, val: kaggle)"
    assert manifest.counts() == {
        "train": {"cat": 4500, "dog": 4500}, "val": {"cat": 500, "dog": 500},
        "test": {"cat": 500, "dog": 500}, "unused": {"cat": 0, "dog": 0},
    }  # fmt: skip
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


def test_csv_helper_round_trips_awkward_names():
    text = D._csv(("path", "reason"), [("a,b.jpg", 'said "no"')])
    assert list(csv.reader(io.StringIO(text))) == [["path", "reason"], ["a,b.jpg", 'said "no"']]
