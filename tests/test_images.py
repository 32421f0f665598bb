"""Tests of vitlib.images: every image mode becomes upright RGB and passes the check."""

from __future__ import annotations

import os

import numpy as np
from helpers import CFG32, exif_rotated, photo
from PIL import Image

from vitlib.data import (
    build_cache,
)
from vitlib.images import list_files, load_image, printable
from vitlib.manifest import build_manifest


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


def test_list_files_follows_a_symlinked_folder_once_and_never_stops(tmp_path):
    root = tmp_path / "root"
    photo(root / "real" / "a.jpg")
    photo(tmp_path / "outside" / "b.jpg")
    os.symlink(tmp_path / "outside", root / "linked")  # followed, under its own name
    os.symlink("real", root / "again")  # the same folder a second way: listed once
    os.symlink("..", root / "real" / "up")  # a loop
    os.symlink("gone.jpg", root / "dangling.jpg")
    (root / "Thumbs.db").write_bytes(b"\x00")
    paths, skipped, fingerprint = list_files(root)
    assert paths == ["linked/b.jpg", "real/a.jpg"]
    assert dict(skipped) == {
        "again/": "already visited as real/",
        "real/up/": "symlink loop (links to a folder it is in)",
        "dangling.jpg": "unreadable (No such file or directory)",
        "Thumbs.db": "Thumbs.db (Windows thumbnail cache)",
    }
    assert list_files(root)[2] == fingerprint
    photo(tmp_path / "outside" / "b.jpg", size=(30, 20))  # a file behind the link changed
    assert list_files(root)[2] != fingerprint


def test_printable_escapes_only_bytes_that_are_not_utf8():
    assert printable(os.fsdecode(b"cat.\xff.jpg")) == "cat.\\xff.jpg"
    assert printable("chat-\u00e9t\u00e9\\x.jpg") == "chat-\u00e9t\u00e9\\x.jpg"
