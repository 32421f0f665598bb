"""Downloads: progress, resume over HTTP Range and file://, checksums, safe extraction, and the
offline error. Archives are built by the tests and served from 127.0.0.1; no internet."""

import hashlib
import http.server
import io
import os
import re
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitlib.download as D
from vitlib.__main__ import main
from vitlib.download import (
    SOURCES,
    ChecksumError,
    DownloadError,
    Source,
    UnsafeArchiveError,
    download_file,
    download_source,
    extract_archive,
)
from vitlib.manifest import build_manifest, scan_folder

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves `files` (name -> bytes) with HTTP Range support; `cut_after` drops the
    connection after that many body bytes (once), `ignore_range` answers 200 to Range."""

    files: dict[str, bytes] = {}
    requests: list[dict] = []
    cut_after: int | None = None
    ignore_range = False

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self.files.get(self.path.lstrip("/"))
        self.requests.append({"path": self.path, "range": self.headers.get("Range")})
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not self.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        part = body[start:]
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if type(self).cut_after is not None:
            self.wfile.write(part[: type(self).cut_after])
            type(self).cut_after = None
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(part)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("Handler", (RangeHandler,), {"files": {}, "requests": [], "cut_after": None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    handler.base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    yield handler
    httpd.shutdown()
    httpd.server_close()


def test_http_download_streams_with_progress_and_verifies(tmp_path, server, capsys):
    server.files["blob.bin"] = PAYLOAD
    out = download_file(server.base + "blob.bin", tmp_path / "blob.bin", size=len(PAYLOAD),
                        sha256=SHA, md5=MD5, chunk_bytes=32_768)  # fmt: skip
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "blob.bin.part").exists()
    bar = capsys.readouterr().err
    assert "blob.bin" in bar and "100%" in bar and "293k/293k" in bar
    # Already there and verified: no request at all.
    n = len(server.requests)
    download_file(server.base + "blob.bin", tmp_path / "blob.bin", sha256=SHA, progress=False)
    assert len(server.requests) == n


def test_http_download_resumes_a_partial_file_with_range(tmp_path, server):
    server.files["blob.bin"] = PAYLOAD
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:100_000])
    out = download_file(server.base + "blob.bin", tmp_path / "blob.bin", size=len(PAYLOAD),
                        sha256=SHA, progress=False)  # fmt: skip
    assert out.read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == "bytes=100000-"


def test_interrupted_download_is_resumed_automatically_or_on_the_next_call(tmp_path, server):
    server.files["blob.bin"] = PAYLOAD
    server.cut_after = 120_000
    out = download_file(server.base + "blob.bin", tmp_path / "a.bin", sha256=SHA, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [None, "bytes=120000-"]
    # With no retries left, the partial file stays and the message says to run again.
    server.cut_after = 50_000
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download_file(server.base + "blob.bin", tmp_path / "b.bin", sha256=SHA, retries=0,
                      progress=False)  # fmt: skip
    assert (tmp_path / "b.bin.part").stat().st_size == 50_000
    download_file(server.base + "blob.bin", tmp_path / "b.bin", sha256=SHA, progress=False)
    assert (tmp_path / "b.bin").read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == "bytes=50000-"


def test_a_server_ignoring_range_restarts_from_zero(tmp_path, server):
    server.files["blob.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:1000])
    download_file(server.base + "blob.bin", tmp_path / "blob.bin", sha256=SHA, progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_a_complete_part_file_is_finished_without_downloading_again(tmp_path, server):
    server.files["blob.bin"] = PAYLOAD
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD)
    download_file(server.base + "blob.bin", tmp_path / "blob.bin", sha256=SHA, progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == f"bytes={len(PAYLOAD)}-"  # answered 416


def test_file_url_download_and_resume(tmp_path):
    source = tmp_path / "mirror" / "blob.bin"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    url = source.as_uri()
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:77_777])
    out = download_file(url, tmp_path / "blob.bin", size=len(PAYLOAD), sha256=SHA, md5=MD5,
                        progress=False)  # fmt: skip
    assert out.read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    "expect", [dict(sha256="0" * 64), dict(md5="0" * 32), dict(size=len(PAYLOAD) + 1)]
)
def test_checksum_or_size_mismatch_deletes_the_file(tmp_path, server, expect):
    server.files["blob.bin"] = PAYLOAD
    with pytest.raises(ChecksumError, match="not the expected file"):
        download_file(server.base + "blob.bin", tmp_path / "blob.bin", progress=False, **expect)
    assert list(tmp_path.iterdir()) == []


def test_offline_fails_at_once_and_says_how_to_use_a_folder(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tried = []
    opener = D.urllib.request.urlopen
    monkeypatch.setattr(
        D.urllib.request, "urlopen", lambda *a, **k: tried.append(a) or opener(*a, **k)
    )
    with pytest.raises(DownloadError) as err:
        download_file(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", progress=False)
    assert len(tried) == 1  # at once: a refused connection is not retried
    message = str(err.value)
    assert "cannot reach" in message and "--data DIR" in message and "DataConfig.root" in message
    # The CLI prints it as an error, exit status 1.
    assert main(["data", "download", "--source", "petimages", "--dest", str(tmp_path),
                   "--url", f"http://127.0.0.1:{port}/x.zip"]) == 2  # fmt: skip


def test_missing_file_and_http_error_are_download_errors(tmp_path, server):
    with pytest.raises(DownloadError, match="404"):
        download_file(server.base + "nothing.zip", tmp_path / "n.zip", progress=False)
    with pytest.raises(DownloadError, match="cannot read"):
        download_file((tmp_path / "absent.zip").as_uri(), tmp_path / "n.zip", progress=False)


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def jpeg_bytes(colour=(200, 50, 50), seed=None) -> bytes:
    """A small JPEG; with a seed, a noisy one of its own (two seeds are no near-copies)."""
    arr = np.full((12, 16, 3), colour, np.uint8)
    if seed is not None:
        arr = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def make_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, body in members.items():
            zf.writestr(name, body)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    return path


def make_tar(
    path: Path, members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None
) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return path


@pytest.mark.parametrize(
    "evil", ["../evil.txt", "/tmp/evil.txt", "a/../../evil.txt", "C:/evil.txt"]
)
def test_zip_slip_is_refused_and_nothing_written(tmp_path, evil):
    archive = make_zip(tmp_path / "a.zip", {"ok/cat.1.jpg": jpeg_bytes(), evil: b"pwned"})
    with pytest.raises(UnsafeArchiveError, match="outside the destination"):
        extract_archive(archive, tmp_path / "out" / "dest", progress=False)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize(
    "links",
    [
        {"images/escape": (tarfile.SYMTYPE, "../../outside")},
        {"images/abs": (tarfile.SYMTYPE, "/etc/passwd")},
        {"images/hard": (tarfile.LNKTYPE, "../outside")},
    ],
)
def test_tar_traversal_and_outward_links_are_refused(tmp_path, links):
    archive = make_tar(tmp_path / "a.tar.gz", {"images/Bengal_1.jpg": jpeg_bytes()}, links)
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, tmp_path / "dest", progress=False)
    assert not (tmp_path / "dest").exists() and not (tmp_path / "dest.partial").exists()
    archive = make_tar(tmp_path / "b.tar.gz", {"../x.jpg": jpeg_bytes()})
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./x\.jpg'"):
        extract_archive(archive, tmp_path / "dest", progress=False)


def test_zip_symlink_pointing_outside_is_refused(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"PetImages/Cat/1.jpg": jpeg_bytes()},
                       symlinks={"PetImages/Cat/2.jpg": "../../../../etc/passwd"})  # fmt: skip
    with pytest.raises(UnsafeArchiveError, match="pointing outside"):
        extract_archive(archive, tmp_path / "dest", progress=False)


def test_links_inside_the_archive_are_allowed(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", {"images/Bengal_1.jpg": jpeg_bytes()},
                       {"images/Bengal_2.jpg": (tarfile.SYMTYPE, "Bengal_1.jpg")})  # fmt: skip
    dest = extract_archive(archive, tmp_path / "dest", progress=False)
    assert (dest / "images" / "Bengal_2.jpg").read_bytes() == jpeg_bytes()


def serve_source(server, name: str, archive: Path, **fields) -> Source:
    body = archive.read_bytes()
    server.files[archive.name] = body
    return Source(name=name, url=server.base + archive.name, filename=archive.name,
                  size=len(body), sha256=hashlib.sha256(body).hexdigest(), **fields)  # fmt: skip


def test_petimages_download_unpacks_to_a_folder_vitlib_recognises(tmp_path, server):
    archive = make_zip(tmp_path / "kagglecatsanddogs.zip", {
        "PetImages/Cat/1.jpg": jpeg_bytes(seed=1), "PetImages/Cat/2.jpg": jpeg_bytes(seed=2),
        "PetImages/Cat/666.jpg": b"", "PetImages/Cat/Thumbs.db": b"\x00" * 8,
        "PetImages/Dog/1.jpg": jpeg_bytes(seed=3), "PetImages/Dog/2.jpg": jpeg_bytes(seed=4),
        "CDLA-Permissive-2.0.pdf": b"%PDF", "readme[1].txt": b"readme",
    })  # fmt: skip
    source = serve_source(server, "petimages", archive, folder="petimages")
    folder = download_source(source, tmp_path / "data", progress=False)
    assert folder == tmp_path / "data" / "petimages"
    manifest = build_manifest(
        folder, split_sizes=(2, 1, 1), cache_dir=tmp_path / "c", progress=False
    )
    assert manifest.layout == "petimages"
    assert manifest.counts()["train"] == {"cat": 1, "dog": 1}
    assert dict(manifest.skipped)["PetImages/Cat/666.jpg"] == "empty file (0 bytes)"
    # Unpacked before: nothing is fetched again.
    n = len(server.requests)
    assert download_source(source, tmp_path / "data", progress=False) == folder
    assert len(server.requests) == n


def test_oxford_pets_download_maps_breeds_to_cat_and_dog(tmp_path, server):
    archive = make_tar(tmp_path / "images.tar.gz", {
        "images/Abyssinian_1.jpg": jpeg_bytes(), "images/Sphynx_2.jpg": jpeg_bytes(),
        "images/beagle_1.jpg": jpeg_bytes(), "images/pug_3.jpg": jpeg_bytes(),
        "images/Abyssinian_100.mat": b"MATLAB",
    })  # fmt: skip
    source = serve_source(
        server, "oxford-pets", archive, folder="oxford-pets", data_subdir="images"
    )
    folder = download_source(source, tmp_path / "data", progress=False)
    assert folder == tmp_path / "data" / "oxford-pets" / "images"
    scan = scan_folder(folder)
    assert scan.layout == "oxford-pets"
    assert {Path(p).name: c for p, c, _ in scan.files} == {
        "Abyssinian_1.jpg": "cat", "Sphynx_2.jpg": "cat", "beagle_1.jpg": "dog", "pug_3.jpg": "dog",
        "Abyssinian_100.mat": "cat",  # named like an image; the image check skips it
    }  # fmt: skip


def test_sources_carry_real_urls_sizes_and_checksums():
    for source in SOURCES.values():
        assert source.url.startswith("https://") and source.licence and source.homepage
        if source.name != "cats-dogs-bench":  # no public record of its size or checksum
            assert source.size > 100_000_000
            assert re.fullmatch(r"[0-9a-f]{64}", source.sha256)
    assert re.fullmatch(r"[0-9a-f]{32}", SOURCES["oxford-pets"].md5)
    assert SOURCES["petimages"].url.endswith("kagglecatsanddogs_5340.zip")
    bench = SOURCES["cats-dogs-bench"]
    assert bench.size is bench.sha256 is bench.md5 is None  # unverified, and says so
    commit = re.fullmatch(r"https://github.com/jurschreuder/cats-dogs-bench/archive/([0-9a-f]{40})"
                          r"\.zip", bench.url).group(1)  # fmt: skip
    assert bench.archive_folder == f"cats-dogs-bench-{commit}/128x128"  # GitHub's <repo>-<sha>/


def bench_archive(path: Path, top: str, sizes: tuple[str, ...] = ("128x128", "64x64")) -> Path:
    """A zip shaped like GitHub's archive of jurschreuder/cats-dogs-bench: <top>/readme.md and,
    per size, pre-train/ (each photo with its -flip mirror), test/ and nested labelled sets
    1000/ 1000-split/<class>/ 500/ 250/ 100/ whose photos carry another counter in each."""
    members = {f"{top}/readme.md": b"Cats Dogs Bench", f"{top}/.gitignore": b"raw/\n"}
    for size in sizes:
        base = f"{top}/{size}"
        for c, cls in enumerate(("cat", "dog")):
            for i in range(4):
                img = Image.open(io.BytesIO(jpeg_bytes(seed=100 * c + i)))
                buf = io.BytesIO()
                img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buf, "JPEG")
                members[f"{base}/pre-train/{cls}.{i}.jpg"] = jpeg_bytes(seed=100 * c + i)
                members[f"{base}/pre-train/{cls}.{i}-flip.jpg"] = buf.getvalue()
                members[f"{base}/test/{cls}.{50 + i}.jpg"] = jpeg_bytes(seed=100 * c + 50 + i)
                photo = jpeg_bytes(seed=100 * c + 20 + i)
                members[f"{base}/1000/{cls}.{1000 + i}.jpg"] = photo
                members[f"{base}/1000-split/{cls}/{cls}.{1000 + i}.jpg"] = photo
                for folder, n in (("500", 3), ("250", 2), ("100", 1)):
                    if i < n:
                        members[f"{base}/{folder}/{cls}.{int(folder) + i}.jpg"] = photo
    return make_zip(path, members)


def test_cats_dogs_bench_download_keeps_the_128px_bench_folder(tmp_path, server, caplog):
    source = SOURCES["cats-dogs-bench"]  # the real source: no size or checksum to check
    top = source.archive_folder.split("/")[0]
    archive = bench_archive(tmp_path / source.filename, top)
    server.files[archive.name] = archive.read_bytes()
    folder = download_source(source, tmp_path / "data", url=server.base + archive.name,
                             progress=False)  # fmt: skip
    assert folder == tmp_path / "data" / "cats-dogs-bench"
    assert "cats-dogs-bench: no size or checksum recorded" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == [
        ".vitlib-extracted", "100", "1000", "1000-split", "250", "500", "pre-train", "test"
    ]  # fmt: skip
    left = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert left == ["cats-dogs-bench", archive.name]  # no 64 px set, no .partial, no -kept
    manifest = build_manifest(folder, split_sizes=(8, 4, 8), cache_dir=tmp_path / "c",
                              progress=False)  # fmt: skip
    assert manifest.layout == (
        "bench (pre-train: kaggle, test: kaggle; labelled subsets: 1000, 1000-split, 500, 250, 100)"
    )
    assert manifest.subset_names == ("1000", "1000-split", "500", "250", "100")
    assert manifest.subset("100")[0] == ["100/cat.100.jpg", "100/dog.100.jpg"]
    assert manifest.subset("1000-split")[1].tolist() == [0] * 4 + [1] * 4  # class folders
    split = {p: s for p, _, s in manifest.rows}
    assert sorted(p for p, s in split.items() if s == "test") == [
        f"test/{c}.{50 + i}.jpg" for c in ("cat", "dog") for i in range(4)
    ]
    for c in ("cat", "dog"):
        for i in range(4):  # each photo beside its mirror, in one split
            assert split[f"pre-train/{c}.{i}.jpg"] == split[f"pre-train/{c}.{i}-flip.jpg"]
            assert manifest.groups[f"pre-train/{c}.{i}-flip.jpg"] == f"pre-train/{c}.{i}-flip.jpg"
    assert manifest.groups["100/dog.100.jpg"] == manifest.groups["1000/dog.1000.jpg"]
    # Unpacked before: nothing is fetched again.
    n = len(server.requests)
    assert download_source(source, tmp_path / "data", url=server.base + archive.name,
                           progress=False) == folder  # fmt: skip
    assert len(server.requests) == n


def test_an_archive_without_the_folder_to_keep_leaves_nothing(tmp_path, server):
    source = SOURCES["cats-dogs-bench"]
    top = source.archive_folder.split("/")[0]
    archive = bench_archive(tmp_path / "other.zip", top, sizes=("64x64",))  # a changed repository
    server.files[archive.name] = archive.read_bytes()
    with pytest.raises(
        DownloadError, match=r"lacks the folder .*/128x128/ \(beside: 64x64/\); nothing kept"
    ):
        download_source(source, tmp_path / "data", url=server.base + archive.name, progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [source.filename]
    # extract_archive alone: `keep` is checked like a member name, and kept as the folder itself.
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, tmp_path / "x", progress=False, keep="../outside")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
    out = extract_archive(archive, tmp_path / "y", progress=False, keep=f"{top}/64x64/100")
    assert sorted(p.name for p in out.iterdir()) == ["cat.100.jpg", "dog.100.jpg"]


# --------------------------------------------------------------------------------------------
# Links resolved as real paths on every Python, devices, damaged archives, bad checksums
# --------------------------------------------------------------------------------------------

CHAIN = {  # l1 -> sub/.. is the destination itself, so l2 -> l1/.. is the folder above it
    "l1": (tarfile.SYMTYPE, "sub/.."),
    "l2": (tarfile.SYMTYPE, "l1/.."),
}


def make_chain_tar(path: Path) -> Path:
    with tarfile.open(path, "w") as tf:
        sub = tarfile.TarInfo("sub")
        sub.type = tarfile.DIRTYPE
        tf.addfile(sub)
        for name, (kind, target) in CHAIN.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
        info = tarfile.TarInfo("l2/outside/x")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"pwned"))
    return path


def test_the_chain_archive_really_escapes_an_unchecked_extraction(tmp_path):
    """What the next test refuses is a real attack: tarfile with no filter writes outside."""
    archive = make_chain_tar(tmp_path / "chain.tar")
    (tmp_path / "raw" / "dest").mkdir(parents=True)
    with tarfile.open(archive) as tf:
        kind = {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}
        tf.extractall(tmp_path / "raw" / "dest", **kind)
    assert (tmp_path / "raw" / "outside" / "x").read_bytes() == b"pwned"


@pytest.mark.parametrize("python_filter", [True, False], ids=["filter", "old-python"])
def test_a_tar_symlink_chain_is_refused_on_every_python(tmp_path, monkeypatch, python_filter):
    if not python_filter:  # as on Python < 3.10.12 / 3.11.4, which have no "data" filter
        monkeypatch.setattr(D, "_TAR_FILTER", {})
    archive = make_chain_tar(tmp_path / "chain.tar")
    with pytest.raises(UnsafeArchiveError, match=r"link 'l2' -> 'l1/\.\.' pointing outside"):
        extract_archive(archive, tmp_path / "a" / "dest", progress=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "chain.tar"]


def test_the_real_path_check_catches_what_the_member_check_would_miss(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_TAR_FILTER", {})
    monkeypatch.setattr(D, "_resolve", lambda *a, **kw: [])  # the first check fooled
    archive = make_chain_tar(tmp_path / "chain.tar")
    with pytest.raises(UnsafeArchiveError, match=r"member 'l2' would reach .*outside"):
        extract_archive(archive, tmp_path / "a" / "dest", progress=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "chain.tar"]


@pytest.mark.parametrize("python_filter", [True, False], ids=["filter", "old-python"])
def test_link_chains_that_stay_inside_are_unpacked(tmp_path, monkeypatch, python_filter):
    if not python_filter:
        monkeypatch.setattr(D, "_TAR_FILTER", {})
    archive = make_tar(tmp_path / "a.tar.gz", {"a/b/Bengal_1.jpg": jpeg_bytes()}, {
        "l1": (tarfile.SYMTYPE, "a/b"), "l2": (tarfile.SYMTYPE, "l1/.."),
        "a/hard.jpg": (tarfile.LNKTYPE, "a/b/Bengal_1.jpg"),
    })  # fmt: skip
    dest = extract_archive(archive, tmp_path / "dest", progress=False)
    assert (dest / "l2" / "b" / "Bengal_1.jpg").read_bytes() == jpeg_bytes()
    assert (dest / "a" / "hard.jpg").read_bytes() == jpeg_bytes()


def test_links_round_a_loop_are_refused_when_a_member_goes_through_them(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", {"x/y.jpg": jpeg_bytes()}, {
        "x": (tarfile.SYMTYPE, "z"), "z": (tarfile.SYMTYPE, "x"),
    })  # fmt: skip
    with pytest.raises(UnsafeArchiveError, match="or round a loop"):
        extract_archive(archive, tmp_path / "dest", progress=False)


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
@pytest.mark.parametrize("python_filter", [True, False], ids=["filter", "old-python"])
def test_tar_device_and_fifo_members_are_refused(tmp_path, monkeypatch, kind, python_filter):
    if not python_filter:
        monkeypatch.setattr(D, "_TAR_FILTER", {})
    archive = tmp_path / "dev.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("images/null")
        info.type, info.devmajor, info.devminor = kind, 1, 3
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="device or FIFO member 'images/null'"):
        extract_archive(archive, tmp_path / "dest", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.tar"]


@pytest.mark.parametrize("python_filter", [True, False], ids=["filter", "old-python"])
def test_modes_and_owners_are_tamed_alike_on_every_python(tmp_path, monkeypatch, python_filter):
    if not python_filter:
        monkeypatch.setattr(D, "_TAR_FILTER", {})
    archive = tmp_path / "modes.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("run.sh")
        info.size, info.mode, info.uid, info.uname = 2, 0o6777, 4242, "someone"
        tf.addfile(info, io.BytesIO(b"hi"))
    dest = extract_archive(archive, tmp_path / "dest", progress=False)
    st = (dest / "run.sh").stat()
    assert st.st_mode & 0o7777 == 0o755 and st.st_uid == os.getuid()


def cut(path: Path, keep: float = 0.5) -> Path:
    body = path.read_bytes()
    path.write_bytes(body[: int(len(body) * keep)])
    return path


def noisy(n: int = 4) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    return {f"PetImages/Cat/{i}.jpg": rng.bytes(40_000) for i in range(n)}


def damaged(tmp_path: Path, kind: str) -> Path:
    if kind == "zip cut in half":
        return cut(make_zip(tmp_path / "a.zip", noisy()))
    if kind == "zip with a flipped byte":
        archive = make_zip(tmp_path / "a.zip", noisy())
        body = bytearray(archive.read_bytes())
        body[len(body) // 3] ^= 0xFF
        archive.write_bytes(bytes(body))
        return archive
    if kind == "tar.gz cut in half":
        return cut(make_tar(tmp_path / "a.tar.gz", noisy()))
    if kind == "tar cut in half":
        archive = tmp_path / "a.tar"
        with tarfile.open(archive, "w") as tf:
            for name, body in noisy().items():
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
        return cut(archive)
    with tarfile.open(tmp_path / "a.tar.xz", "w:xz") as tf:
        for name, body in noisy().items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    return cut(tmp_path / "a.tar.xz")


KINDS = ["zip cut in half", "zip with a flipped byte", "tar.gz cut in half", "tar cut in half",
         "tar.xz cut in half"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_archive_is_a_download_error_that_says_to_fetch_it_again(tmp_path, kind):
    archive = damaged(tmp_path, kind)
    with pytest.raises(DownloadError, match="is damaged or not an archive.*download it again"):
        extract_archive(archive, tmp_path / "dest", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]  # no dest, no .partial


@pytest.mark.parametrize("kind", ["zip cut in half", "tar.gz cut in half"])
def test_download_source_of_a_damaged_archive_leaves_no_done_marker(tmp_path, kind):
    archive = damaged(tmp_path, kind)
    source = Source(name="pets", url=archive.as_uri(), filename=archive.name, folder="pets")
    with pytest.raises(DownloadError, match="damaged") as err:
        download_source(source, tmp_path / "data", progress=False)
    assert type(err.value) is DownloadError
    assert not (tmp_path / "data" / "pets").exists()
    assert not (tmp_path / "data" / "pets.partial").exists()
    assert main(["data", "inspect", str(tmp_path / "data" / "pets")]) == 2  # nothing to use


def test_a_bad_checksum_in_download_source_extracts_nothing(tmp_path, server):
    archive = make_zip(tmp_path / "pets.zip", {"PetImages/Cat/1.jpg": jpeg_bytes(),
                                               "PetImages/Dog/1.jpg": jpeg_bytes()})  # fmt: skip
    good = serve_source(server, "pets", archive, folder="pets")
    bad = Source(**{**good.__dict__, "sha256": "0" * 64})
    with pytest.raises(ChecksumError, match="not the expected file"):
        download_source(bad, tmp_path / "data", progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []  # deleted, unpacked never
    assert download_source(good, tmp_path / "data", progress=False).is_dir()  # the real one
    assert (tmp_path / "data" / "pets" / D._DONE_MARKER).exists()
