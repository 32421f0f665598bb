"""Image files: listing a folder's files safely, decoding one upright in RGB, checking that it
decodes, and doing it for many in threads.

Used by the folder scan (`vitlib.manifest`, which lists a folder and checks every file once)
and the decoded cache (`vitlib.data`, which preprocesses every file once). EXIF rotation is
undone and any mode made RGB (transparency over white, 16-bit grey scaled to 8 bits). Listing
never stops on one entry: names that are not UTF-8, unreadable folders, files gone mid-listing
and symlink loops are skipped with a reason.
"""

from __future__ import annotations

import errno
import hashlib
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

__all__ = [
    "IMAGE_SUFFIXES",
    "check_image",
    "is_image_name",
    "default_workers",
    "list_files",
    "load_image",
    "parallel_map",
    "printable",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
}  # fmt: skip
_SYSTEM_FILES = {
    "thumbs.db": "Thumbs.db (Windows thumbnail cache)",
    "desktop.ini": "desktop.ini (Windows folder settings)",
}


def is_image_name(path: str) -> bool:
    """Whether a file's name ends as an image's does (.jpg, .png, ...; any case)."""
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def list_files(root: str | Path) -> tuple[list[str], list[tuple[str, str]], str]:
    """(visible files under root as sorted posix paths, [(path, reason)] for the entries
    skipped, a fingerprint: sha256 of every file's path, size and mtime).

    Hidden files and folders, `__MACOSX/`, Thumbs.db and desktop.ini are skipped with a reason.

    One entry never stops the scan: a name that is not UTF-8, a folder that cannot be listed,
    a file gone or unreadable mid-scan, and a symlinked folder already visited (a loop such as
    `cat/loop -> ..`, or a second way to one folder) are skipped with their reason. Symlinked
    folders are followed once, after the real tree, so a folder is listed under its own name.
    """
    walker = _Walker()
    walker.folder(str(root), "", (_identity(root),))
    while walker.links:
        walker.descend(*walker.links.pop(0))
    return sorted(walker.paths), walker.skipped, walker.digest.hexdigest()


class _Walker:
    """The state of one `list_files`: what was found, skipped and visited."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self.digest = hashlib.sha256()
        self.seen: dict[tuple[int, int], str] = {}  # (device, inode) of a folder -> its path
        self.links: list[tuple[str, str, tuple]] = []  # symlinked folders, walked last

    def folder(self, path: str, prefix: str, ancestors: tuple) -> None:
        self.seen.setdefault(ancestors[-1], prefix)
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:  # permission denied, or gone since it was listed
            self.skipped.append((prefix or "./", f"folder {_unreadable(exc)}"))
            return
        for e in entries:
            self.entry(e, prefix + e.name, ancestors)

    def entry(self, e: os.DirEntry, rel: str, ancestors: tuple) -> None:
        try:
            is_dir: bool | None = e.is_dir()  # follows symlinks
        except OSError:
            is_dir = None  # a symlink loop `a -> a`, or permission denied: stat says which
        if printable(e.name) != e.name:  # bytes that are not UTF-8
            shown = printable(rel) + ("/" if is_dir else "")
            self.skipped.append((shown, "name is not valid UTF-8: rename it to use it"))
        elif e.name == "__MACOSX":
            self.skipped.append((rel + "/", "macOS resource folder"))
        elif e.name.startswith("."):
            self.skipped.append((rel + "/", "hidden folder") if is_dir else (rel, "hidden file"))
        elif is_dir and e.is_symlink():
            self.links.append((e.path, rel + "/", ancestors))
        elif is_dir:
            self.descend(e.path, rel + "/", ancestors)
        else:
            self.file(e, rel)

    def descend(self, path: str, rel: str, ancestors: tuple) -> None:
        """Walk a folder unless it is one listed already (a link or a mount) or an ancestor."""
        try:
            key = _identity(path)
        except OSError as exc:
            self.skipped.append((rel, f"folder {_unreadable(exc)}"))
            return
        if key in ancestors:
            self.skipped.append((rel, "symlink loop (links to a folder it is in)"))
        elif key in self.seen:
            self.skipped.append((rel, f"already visited as {self.seen[key] or './'}"))
        else:
            self.folder(path, rel, (*ancestors, key))

    def file(self, e: os.DirEntry, rel: str) -> None:
        try:
            st = e.stat()  # follows symlinks
        except OSError as exc:  # a dangling link, a link loop, a file gone mid-scan
            self.digest.update(f"{rel}\t?\n".encode())
            self.skipped.append((rel, _unreadable(exc)))
            return
        self.digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        if e.name.lower() in _SYSTEM_FILES:
            self.skipped.append((rel, _SYSTEM_FILES[e.name.lower()]))
        else:
            self.paths.append(rel)


def _identity(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _unreadable(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "unreadable (symlink loop: too many levels of symbolic links)"
    return f"unreadable ({exc.strerror or exc})"


def printable(name: str) -> str:
    """A name safe to write and print: bytes that are not UTF-8 as backslash escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


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
        if "truncated" in str(exc).lower() or _cut_jpeg(path):
            return f"truncated image ({exc})"
        return f"corrupt image ({type(exc).__name__}: {exc})"
    return None


def _cut_jpeg(path: Path) -> bool:
    """A JPEG file (by its first bytes) that does not end with the end-of-image marker."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        f.seek(-2, os.SEEK_END)
        return f.read(2) != b"\xff\xd9"


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
