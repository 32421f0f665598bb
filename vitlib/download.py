"""Fetching the public cat/dog photo sets: resumable, verified downloads and safe extraction.

    python -m vitlib data download --source petimages --dest data/     # -> data/petimages
    python -m vitlib data download --source oxford-pets --dest data/   # -> data/oxford-pets/images
    python -m vitlib data download --source cats-dogs-bench --dest data/  # -> data/cats-dogs-bench

A download streams into `<file>.part` with a progress bar and continues where a killed one
stopped (an HTTP Range request; `file://` URLs too), then is checked against the size and
checksums in `SOURCES` (when recorded; else a warning) and renamed into place; a mismatch
deletes it. An archive is unpacked into a temporary folder, renamed when complete (only its
`Source.archive_folder` if named), and refused as a whole if any member would land outside it
(zip-slip, `..`, absolute paths, links pointing outside, also through chains of the archive's
own links, checked the same on every Python). A damaged archive is a DownloadError saying to
delete it and download again; nothing is left unpacked. Sources, licences and checksums are
listed in data/README.md.

The Kaggle "Dogs vs. Cats" files the study used need a Kaggle login and are not fetched here;
Microsoft's PetImages is the same 25,000 Asirra photographs under a permissive licence.
"""

from __future__ import annotations

import copy
import http.client
import logging
import lzma
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm.auto import tqdm

from vitlib.errors import DownloadError

__all__ = [
    "SOURCES",
    "ChecksumError",
    "DownloadError",
    "Source",
    "UnsafeArchiveError",
    "download_file",
    "download_source",
    "extract_archive",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One downloadable archive and where its images end up under the destination."""

    name: str
    url: str
    filename: str
    size: int | None = None  # bytes
    sha256: str | None = None
    md5: str | None = None
    folder: str = ""  # extracted into <dest>/<folder>
    archive_folder: str = ""  # the archive's folder that becomes <dest>/<folder>; "": all of it
    data_subdir: str = ""  # the folder to pass as --data, relative to <dest>/<folder>
    licence: str = ""
    homepage: str = ""


_BENCH_COMMIT = "abd23c4e54a9e5cc68aeef7bcee12bd4c0c19163"  # jurschreuder/cats-dogs-bench
SOURCES: dict[str, Source] = {
    # Size and sha256 as recorded by Hugging Face datasets' cats_vs_dogs (dataset_infos.json);
    # the same sha256 is in gomlx's examples/dogsvscats.
    "petimages": Source(
        name="petimages",
        url="https://download.microsoft.com/download/3/E/1/"
        "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip",
        filename="kagglecatsanddogs_5340.zip",
        size=824_887_076,
        sha256="b7974bd00a84a99921f36ee4403f089853777b5ae8d151c76a86e64900334af9",
        folder="petimages",
        licence="CDLA-Permissive-2.0",
        homepage="https://www.microsoft.com/en-us/download/details.aspx?id=54765",
    ),
    # md5 from torchvision's OxfordIIITPet; size and sha256 from tensorflow_datasets'
    # oxford_iiit_pet/checksums.tsv.
    "oxford-pets": Source(
        name="oxford-pets",
        url="https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
        filename="oxford-iiit-pet-images.tar.gz",
        size=791_918_971,
        sha256="67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d",
        md5="5c4f3ee8e5d25df40f4fd59a7f44e54c",
        folder="oxford-pets",
        data_subdir="images",
        licence="CC BY-SA 4.0",
        homepage="https://www.robots.ox.ac.uk/~vgg/data/pets/",
    ),
    # GitHub's archive at the newest commit seen; no public record gives its size or checksum.
    "cats-dogs-bench": Source(
        name="cats-dogs-bench",
        url=f"https://github.com/jurschreuder/cats-dogs-bench/archive/{_BENCH_COMMIT}.zip",
        filename=f"cats-dogs-bench-{_BENCH_COMMIT[:12]}.zip",
        folder="cats-dogs-bench",
        archive_folder=f"cats-dogs-bench-{_BENCH_COMMIT}/128x128",  # GitHub's <repo>-<sha>/
        licence="none stated; Kaggle Dogs vs. Cats photos (Kaggle's rules)",
        homepage="https://github.com/jurschreuder/cats-dogs-bench",
    ),
}

_DONE_MARKER = ".vitlib-extracted"
# Python >= 3.10.12 / 3.11.4 can refuse unsafe tar members itself; older ones rely on our checks.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()
# What reading a cut or corrupt archive raises (bz2 and gzip raise OSError without an errno).
_DAMAGE = (EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, tarfile.TarError)
_OFFLINE_HINT = (
    "No internet is needed if the photos are already on this machine: point vitlib at their "
    "folder instead, in any layout `python -m vitlib data inspect DIR` recognises, with "
    "`--data DIR` (`make report DATA=DIR`, `python -m vitlib report --data DIR`) or "
    "DataConfig.root (`get_config(profile, {{'data.root': DIR}})`). Or fetch {url} on a "
    "connected machine, copy it to {dest} and run this command again: it is verified and "
    "unpacked without the network."
)


class ChecksumError(DownloadError):
    """The downloaded file's size or checksum is not the expected one."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the destination folder."""


def download_source(
    source: str | Source,
    dest: str | Path = "data",
    *,
    url: str | None = None,
    progress: bool = True,
    timeout: float = 20.0,
) -> Path:
    """Download, verify and unpack one of `SOURCES` (or a `Source`) under `dest`.

    `url` replaces the source's URL (a mirror, or a test server); the size and checksums stay.
    Returns the folder of images to pass as `--data` / DataConfig.root. Nothing is fetched
    when the folder was unpacked before.
    """
    if isinstance(source, str):
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; expected one of {sorted(SOURCES)}")
        source = SOURCES[source]
    dest = Path(dest)
    target = dest / (source.folder or source.name)
    data_dir = target / source.data_subdir if source.data_subdir else target
    if (target / _DONE_MARKER).exists():
        log.info("%s is already unpacked in %s", source.name, target)
        return data_dir
    if source.size is None and not (source.sha256 or source.md5):
        log.warning("%s: no size or checksum recorded, so the download is unverified", source.name)
    archive = download_file(
        url or source.url,
        dest / source.filename,
        size=source.size,
        sha256=source.sha256,
        md5=source.md5,
        progress=progress,
        timeout=timeout,
    )
    extract_archive(archive, target, progress=progress, keep=source.archive_folder)
    (target / _DONE_MARKER).write_text(f"{source.name} {archive.name}\n")
    return data_dir


def download_file(
    url: str,
    dest: str | Path,
    *,
    size: int | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 20.0,
    retries: int = 2,
    chunk_bytes: int = 1 << 20,
) -> Path:
    """Stream `url` (http(s):// or file://) to `dest`, resuming `<dest>.part`, then verify.

    An interrupted transfer is retried `retries` times (each continuing where it stopped);
    after that the partial file stays for the next call to resume. Raises DownloadError
    (unreachable: at once, with what to do offline), ChecksumError (the bad file is deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        _verify(dest, size=size, sha256=sha256, md5=md5)
        return dest
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        start = part.stat().st_size if part.exists() else 0
        try:
            _fetch(url, part, size=size, progress=progress, timeout=timeout, chunk=chunk_bytes)
            break
        except _Interrupted as exc:
            got = part.stat().st_size if part.exists() else 0
            if attempt == retries or got <= start:
                raise DownloadError(
                    f"the download of {url} stopped after {got:,} bytes ({exc.__cause__}); "
                    f"the partial file {part} is kept: run the same command again to resume"
                ) from exc.__cause__
            log.warning("download interrupted at %d bytes (%s); resuming", got, exc.__cause__)
    _verify(part, size=size, sha256=sha256, md5=md5)
    os.replace(part, dest)
    return dest


class _Interrupted(Exception):
    """The connection broke after the transfer had started (resumable)."""


def _fetch(
    url: str, part: Path, *, size: int | None, progress: bool, timeout: float, chunk: int
) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()  # longer than the real file: not a prefix of it
        offset = 0
    if size is not None and offset == size:
        return
    stream, offset, remaining = _open(url, offset, timeout=timeout, dest=part)
    total = offset + remaining if remaining is not None else size
    with (
        stream,
        open(part, "ab" if offset else "wb") as out,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not progress,
        ) as bar,
    ):
        try:
            while block := stream.read(chunk):
                out.write(block)
                bar.update(len(block))
        except (OSError, http.client.HTTPException, ValueError) as exc:  # reset, timeout
            raise _Interrupted() from exc
    if remaining is not None and part.stat().st_size < offset + remaining:
        raise _Interrupted() from ConnectionError("connection closed before the end")


def _open(url: str, offset: int, *, timeout: float, dest: Path) -> tuple[BinaryIO, int, int | None]:
    """(stream positioned at the returned offset, that offset, bytes to come or None)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise DownloadError(f"cannot read {url}: {exc}") from exc
        length = path.stat().st_size
        offset = min(offset, length)
        f.seek(offset)
        return f, offset, length - offset
    if parsed.scheme not in ("http", "https"):
        raise DownloadError(f"unsupported URL {url!r}: expected http(s):// or file://")
    headers = {"User-Agent": "vitlib"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing after `offset`: the part file is complete
            return _Empty(), offset, 0
        raise DownloadError(f"{url} answered HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot reach {url} ({reason}).\n"
            + _OFFLINE_HINT.format(url=url, dest=dest.with_name(dest.name.removesuffix(".part")))
        ) from exc
    if offset and response.status != 206:
        log.info("%s ignores Range requests; downloading from the start", url)
        offset = 0
    length = response.headers.get("Content-Length")
    return response, offset, int(length) if length is not None else None


class _Empty:
    def read(self, n: int = -1) -> bytes:
        return b""

    def __enter__(self) -> _Empty:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _verify(path: Path, *, size: int | None, sha256: str | None, md5: str | None) -> None:
    """Raise ChecksumError (and delete `path`) unless it has the expected size and digests."""
    from torchvision.datasets.utils import calculate_md5

    from vitlib.checkpoints import sha256_file

    problems = []
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        problems.append(f"size {actual_size:,} bytes, expected {size:,}")
    else:
        if sha256 and (got := sha256_file(path)) != sha256.lower():
            problems.append(f"sha256 {got}, expected {sha256}")
        if md5 and (got := calculate_md5(path)) != md5.lower():
            problems.append(f"md5 {got}, expected {md5}")
    if problems:
        path.unlink()
        raise ChecksumError(
            f"{path.name} is not the expected file ({'; '.join(problems)}); it was deleted. "
            "Run the command again to download it afresh, or check the URL."
        )


def extract_archive(
    archive: str | Path, dest: str | Path, *, progress: bool = True, keep: str = ""
) -> Path:
    """Unpack a .zip or .tar(.gz/.bz2/.xz) into `dest`, all or nothing; with `keep` (a folder
    of the archive, "top/128x128"), only that folder's contents, as `dest` itself.

    Every member is checked before anything is written, the same way on every Python (the tar
    "data" filter of Python >= 3.10.12 / 3.11.4 is only a second guard): absolute paths, `..`
    components, members or links that lead outside `dest` through the archive's own symlinks
    (`l1 -> sub/..`, `l2 -> l1/..`, `l2/x`), devices and FIFOs are refused with
    UnsafeArchiveError; each member's real path is checked again just before it is written.
    The archive is unpacked into `<dest>.partial` and renamed to `dest` when complete; a damaged
    archive (cut short, corrupt) is a DownloadError that says to delete it and download again,
    and leaves nothing behind, as does an archive without the folder to `keep`.
    """
    archive, dest = Path(archive), Path(dest)
    inner = _safe_member(keep, archive).parts if keep else ()  # refused before any writing
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp, progress)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp, progress)
        else:
            raise _damaged(archive, "it is neither a zip nor a tar archive vitlib can read")
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, _FILTER_ERRORS):
            raise UnsafeArchiveError(f"{archive.name} was refused: {exc}") from exc
        if isinstance(exc, _DAMAGE) or (isinstance(exc, OSError) and exc.errno is None):
            raise _damaged(archive, f"{type(exc).__name__}: {exc}") from exc
        if isinstance(exc, OSError):  # the disk: full, read-only, permissions
            raise DownloadError(
                f"could not unpack {archive} into {dest} ({exc.strerror or exc}); nothing was "
                "kept. Free some space or choose another --dest, then run again."
            ) from exc
        raise
    if inner:
        tmp = _keep_folder(archive, tmp, inner)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def _keep_folder(archive: Path, tmp: Path, parts: tuple[str, ...]) -> Path:
    """The unpacked archive's folder `parts`, moved out of `tmp` (which is removed)."""
    inner, kept = tmp.joinpath(*parts), tmp.with_name(tmp.name + "-kept")
    if inner.is_symlink() or not inner.is_dir():
        near = next(p for p in inner.parents if p.is_dir())  # tmp itself at the least
        found = ", ".join(sorted(p.name + "/" for p in near.iterdir() if p.is_dir())) or "none"
        shutil.rmtree(tmp)
        raise DownloadError(
            f"{archive.name} lacks the folder {'/'.join(parts)}/ (beside: {found}); nothing kept"
        )
    shutil.rmtree(kept, ignore_errors=True)  # left by a run killed here
    os.replace(inner, kept)
    shutil.rmtree(tmp)
    return kept


def _damaged(archive: Path, detail: str) -> DownloadError:
    return DownloadError(
        f"{archive} is damaged or not an archive ({detail}); nothing was unpacked. Delete it "
        "and download it again (`python -m vitlib data download` fetches it afresh once it is "
        "gone)."
    )


def _safe_member(name: str, archive: Path) -> PurePosixPath:
    """The member's relative path, or UnsafeArchiveError if it could leave the folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (posix.parts and ":" in posix.parts[0]) or ".." in posix.parts:
        raise UnsafeArchiveError(
            f"{archive.name} has a member that would be written outside the destination: "
            f"{name!r}; nothing was extracted"
        )
    return posix


def _resolve(
    parts: list[str], links: dict[str, str], *, follow_last: bool, depth: int = 0
) -> list[str] | None:
    """Where `parts` (relative to the destination) lead once the archive's symlinks `links`
    ({path: target}) are followed, as the destination-relative parts of the place; None if it
    lies outside, or the links go round a loop. The last part is followed only with
    `follow_last` (a link being made is not followed; a file written over a link is)."""
    if depth > 40:  # as the kernel's limit on symlinks in one path
        return None
    place: list[str] = []
    for i, part in enumerate(parts):
        if part in ("", "."):
            continue
        if part == "..":
            if not place:
                return None
            place.pop()
            continue
        place.append(part)
        target = links.get("/".join(place))
        if target is not None and (follow_last or i < len(parts) - 1):
            target = target.replace("\\", "/")
            if target.startswith("/") or ":" in target.split("/", 1)[0]:
                return None
            found = _resolve([*place[:-1], *target.split("/")], links, follow_last=True,
                             depth=depth + 1)  # fmt: skip
            if found is None:
                return None
            place = found
    return place


def _check_link(
    member: PurePosixPath, target: str, links: dict[str, str], archive: Path, *, hard: bool
) -> None:
    # A hard link's target is a path inside the archive; a symlink's is relative to its folder.
    start = [] if hard else list(member.parent.parts)
    if _resolve([*start, *target.replace("\\", "/").split("/")], links, follow_last=hard) is None:
        raise UnsafeArchiveError(
            f"{archive.name} has a link {str(member)!r} -> {target!r} pointing outside the "
            "destination (or round a loop of links); nothing was extracted"
        )


def _extract_zip(archive: Path, dest: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            path = _safe_member(info.filename, archive)
            if stat.S_ISLNK(info.external_attr >> 16):  # written as small text files, so the
                target = zf.read(info).decode("utf-8", "replace")  # links are never followed
                _check_link(path, target, {}, archive, hard=False)
        for info in tqdm(members, desc=f"unpacking {archive.name}", disable=not progress):
            zf.extract(info, dest)


def _extract_tar(archive: Path, dest: Path, progress: bool) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        paths = [_safe_member(m.name, archive) for m in members]
        links = {str(p): m.linkname for p, m in zip(paths, members, strict=True) if m.issym()}
        for path, m in zip(paths, members, strict=True):
            if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                raise UnsafeArchiveError(
                    f"{archive.name} has a device or FIFO member {m.name!r}; nothing was extracted"
                )
            if _resolve(list(path.parts), links, follow_last=not m.issym()) is None:
                raise UnsafeArchiveError(
                    f"{archive.name} has a member {m.name!r} that its links would send outside "
                    "the destination (or round a loop); nothing was extracted"
                )
            if m.issym() or m.islnk():
                _check_link(path, m.linkname, links, archive, hard=m.islnk())
        root = os.path.realpath(dest)
        for m in tqdm(members, desc=f"unpacking {archive.name}", disable=not progress):
            _check_real_path(m, dest, root, archive)
            # Our checks above refuse first and say why; the "data" filter is a second guard.
            tf.extract(_tame(m), dest, **_TAR_FILTER)


def _check_real_path(m: tarfile.TarInfo, dest: Path, root: str, archive: Path) -> None:
    """Refuse `m` if, with what is on disk now, its real path or its link's leaves `root`."""
    place = os.path.join(dest, m.name)
    leads = [os.path.dirname(place)] if m.issym() else [place]
    if m.issym():
        leads.append(os.path.join(os.path.dirname(place), m.linkname))
    elif m.islnk():
        leads.append(os.path.join(dest, m.linkname))
    for path in leads:
        real = os.path.realpath(path)
        if real != root and not real.startswith(root + os.sep):
            raise UnsafeArchiveError(
                f"{archive.name}: member {m.name!r} would reach {real}, outside the "
                "destination; nothing was kept"
            )


def _tame(m: tarfile.TarInfo) -> tarfile.TarInfo:
    """The member with what the "data" filter also drops, on every Python: setuid, setgid and
    sticky bits, write for group and others, and the archive's owners."""
    m = copy.copy(m)
    m.mode = (m.mode & 0o755) | (0o600 if m.isfile() else 0)
    if hasattr(os, "getuid"):  # tarfile sets owners only when run as root
        m.uid, m.gid, m.uname, m.gname = os.getuid(), os.getgid(), "", ""
    return m
