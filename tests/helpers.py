"""Files the tests make: small photos in the layouts vitlib reads."""

from __future__ import annotations

import socket
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from vitlib.model import default_pretrained_cfg

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-128"
CFG32 = default_pretrained_cfg(32)
JAX_CFG = dict(
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(3, 24, 24), crop_pct=0.9,
    interpolation="bicubic",
)  # fmt: skip


def photo(path: Path, colour=(200, 40, 40), size=(20, 14), fmt=None, mode="RGB") -> Path:
    """A small image file with a gradient (so resizing has something to do) and a coarse
    texture of its own, seeded by its folder and name: two files are never near-copies (the
    split keeps near-copies together), one file written twice is the same picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    ramp = np.linspace(0.5, 1.0, w)[None, :, None]
    seed = zlib.crc32(f"{path.parent.name}/{path.name}".encode())
    blocks = np.random.default_rng(seed).uniform(0.75, 1.0, (4, 4))  # (4, 4) -> (h, w)
    texture = blocks[np.arange(h) * 4 // h][:, np.arange(w) * 4 // w][:, :, None]
    arr = (np.array(colour)[None, None, :] * ramp * texture).astype(np.uint8)
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
