"""Tests of vitlib.data: preprocessing, the decoded cache, datasets, provenance."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CFG32, JAX_CFG, exif_rotated, kaggle_folder, photo
from PIL import Image

from vitlib import data as D
from vitlib import images as I
from vitlib.config import DataConfig, get_config
from vitlib.data import (
    build_cache,
    data_provenance,
    load_splits,
    open_image,
    preprocess,
)
from vitlib.images import load_image
from vitlib.manifest import CLASSES, build_manifest


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


# --- augmentation on the real pipeline (ImageDataset.batch / augment_batch) -------------------


def ramp_images(n: int, size: int = 32) -> np.ndarray:
    """(n, size, size, 3) uint8 whose red is 4 + 8 x (x the column), green 4 + 8 y (the row),
    blue 3 i (i the image): a crop-resize-flip of it says where each output pixel came from."""
    ramp = 4 + 8 * np.arange(size)
    images = np.zeros((n, size, size, 3), np.uint8)
    images[..., 0] = ramp[None, None, :]
    images[..., 1] = ramp[None, :, None]
    images[..., 2] = 3 * np.arange(n)[:, None, None]
    return images


def ramp_dataset(n: int, *, augment: bool = True) -> D.ImageDataset:
    labels = np.arange(n) % 2
    paths = [f"{CLASSES[c]}.{i}.jpg" for i, c in enumerate(labels)]
    return D.ImageDataset(ramp_images(n), labels, paths, augment=augment)


CPU = torch.device("cpu")


def test_an_augmented_batch_repeats_under_the_same_seed_and_differs_under_another():
    ds, idx = ramp_dataset(8), np.arange(8)

    def draw(seed):
        torch.manual_seed(seed)
        return ds.batch(idx, CPU, augment=True)

    first, again, other = draw(0), draw(0), draw(1)
    assert first.shape == (8, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)
    plain = ds.batch(idx, CPU)
    assert not torch.equal(first, plain)
    # Every image draws its own crop: the red/green planes (alike in every source) differ.
    planes = {first[i, :2].numpy().tobytes() for i in range(8)}
    assert len(planes) > 4


def test_augmentation_crops_inside_the_image_resizes_and_flips_only_left_right():
    """RandomResizedCrop(scale 0.5-1, aspect 3/4-4/3) and a horizontal flip, read back from
    the ramps: each output is its own source, red constant down the columns and monotonic
    along the rows, green increasing down, every value one the source has (a crop past an
    edge would pad with 0), and the area read from the extremes between half and all."""
    ds = ramp_dataset(64)
    source = torch.from_numpy(ds.images)
    torch.manual_seed(0)
    out = ds.augment_batch(source)
    assert out.shape == source.shape and out.dtype == torch.uint8
    assert torch.equal(source, torch.from_numpy(ramp_images(64)))  # the input is left alone
    o = out.numpy().astype(int)
    red, green, blue = o[..., 0], o[..., 1], o[..., 2]
    assert (blue == 3 * np.arange(64)[:, None, None]).all()  # its own image, in order
    for plane in (red, green):
        assert plane.min() >= 4 and plane.max() <= 4 + 8 * 31
    assert (np.ptp(red, axis=1) <= 1).all() and (np.ptp(green, axis=2) <= 1).all()
    rows, cols = red[:, 0, :], green[:, :, 0]  # (64, 32): red along a row, green down a column
    flipped = rows[:, 0] > rows[:, -1]
    steps = np.diff(rows, axis=1)
    assert (steps[flipped] <= 1).all() and (steps[~flipped] >= -1).all()
    assert (np.diff(cols, axis=1) >= -1).all() and (cols[:, -1] > cols[:, 0]).all()
    width = np.abs(rows[:, -1] - rows[:, 0]) / 8 + 1  # source pixels spanned, to within 1
    height = (cols[:, -1] - cols[:, 0]) / 8 + 1
    area = width * height / 32**2
    assert (area >= 0.4).all() and (area <= 1).all()
    assert (width / height > 0.6).all() and (width / height < 1.6).all()
    assert 10 < flipped.sum() < 54 and (area < 0.9).sum() > 10  # both happen, often


def test_augmentation_leaves_labels_alone_and_is_the_identity_when_off():
    ds, idx = ramp_dataset(8), np.arange(8)
    labels = ds.labels.copy()
    torch.manual_seed(0)
    assert [ds[i][1] for i in range(8)] == labels.tolist()
    ds.batch(idx, CPU, augment=True)
    assert np.array_equal(ds.labels, labels)
    unaugmented = D.normalise(torch.from_numpy(ramp_images(8)), ds.mean, ds.std)
    off = ramp_dataset(8, augment=False)
    assert torch.equal(off.batch(idx, CPU, augment=True), unaugmented)  # the dataset says no
    assert torch.equal(ds.batch(idx, CPU, augment=False), unaugmented)  # the caller says no
    assert torch.equal(torch.stack([off[i][0] for i in range(8)]), unaugmented)
    batch = torch.from_numpy(ramp_images(8))
    assert off.augment_batch(batch) is batch


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


@pytest.mark.parametrize("workers, expected", [(1, 1), (3, 3), (0, I.default_workers())])
def test_num_workers_is_the_number_of_decoding_threads(tmp_path, monkeypatch, workers, expected):
    pools = []
    real = I.ThreadPoolExecutor

    def recording(max_workers):
        pools.append(max_workers)
        return real(max_workers)

    monkeypatch.setattr(I, "ThreadPoolExecutor", recording)
    folder = kaggle_folder(tmp_path / "train", 6, 6)
    load_splits(folder_cfg(folder, tmp_path, num_workers=workers), JAX_CFG, progress=False)
    assert pools and set(pools) == {expected}  # the image check and every split's decoding


# --------------------------------------------------------------------------------------------
# The decoded cache is checked on every open
# --------------------------------------------------------------------------------------------


def built_cache(tmp_path, n_per_class=6):
    folder = kaggle_folder(tmp_path / "train", n_per_class, n_per_class)
    manifest = build_manifest(folder, split_sizes=(8, 2, 2), cache_dir=tmp_path / "c")
    images = build_cache(manifest, "train", CFG32, progress=False)
    return manifest, Path(images.filename), np.array(images), images.offset


def count_decoding(monkeypatch) -> list:
    decoded = []
    original = D.load_image
    monkeypatch.setattr(D, "load_image", lambda p: decoded.append(p) or original(p))
    return decoded


def test_a_cache_whose_pixels_were_zeroed_is_rebuilt_with_a_warning(tmp_path, monkeypatch, caplog):
    manifest, path, original, offset = built_cache(tmp_path)
    record = D.json.loads(Path(f"{path}.json").read_text())
    assert record["sha256"] == D.hashlib.sha256(original.tobytes()).hexdigest()  # independent
    size = path.stat().st_size
    with open(path, "r+b") as f:  # the pixels zeroed in place, the .npy header intact
        f.seek(offset)
        f.write(bytes(size - offset))
    assert np.load(path).shape == original.shape and not np.load(path).any()
    decoded = count_decoding(monkeypatch)
    images = build_cache(manifest, "train", CFG32, progress=False)
    assert len(decoded) == 8 and np.array_equal(images, original)
    assert "has images other than those it was built with" in caplog.text
    caplog.clear()
    assert np.array_equal(build_cache(manifest, "train", CFG32, progress=False), original)
    assert len(decoded) == 8 and caplog.text == ""  # a good cache is opened, not rebuilt


@pytest.mark.parametrize(
    "damage, says",
    [
        ("cut short", "is unreadable"),
        ("one byte more", "is not the size its header says"),
        ("header", "has a header other than"),
        ("no record", "has no checksum record"),
        ("record cut", "is unreadable"),
    ],
)
def test_a_damaged_cache_or_record_is_rebuilt(tmp_path, monkeypatch, caplog, damage, says):
    manifest, path, original, offset = built_cache(tmp_path)
    body = path.read_bytes()
    record = Path(f"{path}.json")
    if damage == "cut short":
        path.write_bytes(body[: len(body) // 2])
    elif damage == "one byte more":
        path.write_bytes(body + b"\x00")
    elif damage == "header":  # still parses, same shape: padding the header may hold
        path.write_bytes(body[: offset - 2] + b"  " + body[offset:])
    elif damage == "no record":
        record.unlink()
    else:
        record.write_text(record.read_text()[:50])
    decoded = count_decoding(monkeypatch)
    assert np.array_equal(build_cache(manifest, "train", CFG32, progress=False), original)
    assert len(decoded) == 8 and says in caplog.text
    assert D._open_cache(path, original.shape, every_row=True)[0] is not None  # whole again


def test_each_open_hashes_a_sample_of_rows_and_every_row_on_request(tmp_path, monkeypatch):
    manifest, path, original, offset = built_cache(tmp_path)
    monkeypatch.setattr(D, "_CHECKED_ROWS", 2)  # rows 0 and 7 only
    row = original[0].nbytes
    with open(path, "r+b") as f:
        f.seek(offset + 3 * row + 100)
        f.write(b"\x00" * 16)
    images, problem = D._open_cache(path, original.shape)
    assert images is not None and problem == ""  # row 3 is not in the sample
    images, problem = D._open_cache(path, original.shape, every_row=True)
    assert images is None and "rows [3]" in problem


def test_a_file_changed_after_the_scan_is_a_data_error_when_decoding(tmp_path):
    folder = kaggle_folder(tmp_path / "train", 6, 6)
    manifest = build_manifest(folder, split_sizes=(8, 2, 2), cache_dir=tmp_path / "c")
    (folder / manifest.split("train")[0][2]).write_bytes(b"no longer a photo")
    with pytest.raises(D.DataError, match="changed or went away since. Run again"):
        build_cache(manifest, "train", CFG32, progress=False)
    assert list(manifest.path.parent.glob("*train-*")) == []
