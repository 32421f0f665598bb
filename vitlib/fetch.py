"""A profile's photos, fetched when they are missing and the network is there.

    fetch_missing(cfg.data)   # data/petimages missing -> download, verify, unpack PetImages

A profile names the folder it reads (`DataConfig.root`) and the public source that fills it
(`DataConfig.download`, a name of `vitlib.download.SOURCES`): `full` reads data/petimages, the
study's 25,000 Asirra photos from Microsoft; `cpu` reads data/cats-dogs-bench. When the folder
is missing, the source is downloaded (size shown first, a progress bar, a killed download
resumes), verified and unpacked so that the folder appears where the profile looks, like
torchvision's `download=True`. `DataConfig.allow_download=False` (`--no-download`) or no
network keeps the fail-fast message saying what to fetch; `DataConfig.download_url` replaces
the source's URL (a mirror, or a test server).
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePath

from vitlib.config import DataConfig
from vitlib.download import SOURCES, Source, download_source
from vitlib.errors import DataError, DownloadError
from vitlib.manifest import GET_DATA

__all__ = ["fetch_missing", "source_dest"]

log = logging.getLogger(__name__)


def fetch_missing(data_cfg: DataConfig, *, progress: bool = True) -> Path | None:
    """Make `data_cfg.root` exist: download its source into the folder above it and return the
    folder. None (nothing done) when the folder is there, or is not the one the source fills
    (a mistyped --data is not downloaded into). Raises DataError saying what to fetch when
    there is no source, downloads are off, or the download fails (offline)."""
    root = Path(data_cfg.root) if data_cfg.root else None
    if data_cfg.source != "folder" or root is None or root.is_dir():
        return None
    missing = f"data folder {root} not found"
    if not data_cfg.download:
        raise DataError(f"{missing}, and this profile names no source to download. {GET_DATA}")
    source = _source(data_cfg.download)
    try:
        dest = source_dest(root, source)
    except DataError:  # e.g. a mistyped --data: not the folder the source fills
        log.info("%s is not where %s unpacks: not downloaded", root, source.name)
        return None
    if not data_cfg.allow_download:
        raise DataError(
            f"{missing} (downloads are off: --no-download, DataConfig.allow_download). Fetch it "
            f"with `python -m vitlib data download --source {source.name} --dest {dest}`. "
            f"{GET_DATA}"
        )
    size = f"{source.size / 1e6:,.0f} MB" if source.size else "size unknown"
    log.warning(
        "%s: downloading %s (%s) from %s into %s", missing, source.name, size,
        data_cfg.download_url or source.url, dest,
    )  # fmt: skip
    try:
        folder = download_source(source, dest, url=data_cfg.download_url, progress=progress)
    except DownloadError as exc:
        raise DataError(f"{missing} and could not be downloaded: {exc}") from None
    if folder.resolve() != root.resolve():  # source_dest guarantees it; a changed source not
        raise DataError(f"{source.name} unpacked to {folder}, not to {root}; pass --data {folder}")
    return folder


def source_dest(root: str | Path, source: Source) -> Path:
    """The folder to download `source` into so that its images land in `root`: `root` less the
    source's own folder (and subfolder), data/petimages -> data."""
    tail = PurePath(source.folder or source.name, source.data_subdir)
    root = Path(root)
    if root.parts[-len(tail.parts) :] != tail.parts:
        raise DataError(
            f"data folder {root} is not where source {source.name!r} unpacks ("
            f"<dest>/{tail.as_posix()}): set data.root to a folder ending in {tail.as_posix()}, "
            "or data.download to none"
        )
    return Path(*root.parts[: -len(tail.parts)]) if len(root.parts) > len(tail.parts) else Path()


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise DataError(f"unknown download source {name!r}; expected one of {sorted(SOURCES)}")
    return SOURCES[name]
