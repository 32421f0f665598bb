"""One image file: decoding it upright in RGB, checking that it decodes, and doing it for many.

Used by the folder scan (`vitlib.manifest`, which checks every file once) and the decoded cache
(`vitlib.data`, which preprocesses every file once). EXIF rotation is undone and any mode made
RGB (transparency over white, 16-bit grey scaled to 8 bits).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

__all__ = ["check_image", "default_workers", "load_image", "parallel_map"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


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


def check_image(path: Path) -> str | None:
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


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    desc: str,
    progress: bool,
    workers: int = 0,
    chunk: int = 256,
) -> Iterator[R]:
    """Yield fn(item) in order, computed in `workers` threads (0: `default_workers()`; PIL
    releases the GIL while decoding) a chunk at a time, so memory stays bounded; with a
    progress bar."""
    with (
        ThreadPoolExecutor(workers or default_workers()) as pool,
        tqdm(total=len(items), desc=desc, unit="img", disable=not progress) as bar,
    ):
        for start in range(0, len(items), chunk):
            for result in pool.map(fn, items[start : start + chunk]):
                bar.update()
                yield result


def default_workers() -> int:
    """Decoding threads when none are asked for: one per usable CPU, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cpus or 1))
