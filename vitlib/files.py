"""Writing files atomically: a temporary file beside the target, then one rename.

Readers (and a run killed mid-write) see the old file or the new one, never a part. The
temporary name carries the process id, so two processes writing the same file never share one.
JSON and CSV writers for run outputs and benchmark results go through the same path.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_dir",
    "atomic_path",
    "atomic_write",
    "csv_text",
    "write_csv",
    "write_if_changed",
    "write_json",
]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on
    any error it is removed and `path` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`, renamed to `path` on success and removed
    on any error. If another process made `path` first, its folder is kept and ours removed."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError:  # another process finished first: a non-empty folder is there
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def write_if_changed(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically, and not at all when the file already holds it."""
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return
    atomic_write(path, text)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows of values as CSV text under a header line (awkward names quoted)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_json(path: str | Path, obj: Any) -> None:
    """`obj` as indented JSON, atomically (numpy scalars and arrays, paths and torch devices
    become plain values)."""
    atomic_write(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv(path: str | Path, rows: list[Mapping[str, Any]], keys: tuple[str, ...]) -> None:
    """Rows of dicts as CSV with columns `keys`, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if type(obj).__name__ == "device":  # torch.device, without importing torch here
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
