"""A profile's missing photo folder is downloaded from its source when the network is there,
and fails at once, saying what to fetch, when it is not or downloads are off."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import socket
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitlib.download as D
from vitlib.__main__ import main
from vitlib.config import get_config
from vitlib.errors import DataError, ExperimentError
from vitlib.experiments import check_inputs
from vitlib.fetch import fetch_missing, source_dest
from vitlib.manifest import build_manifest


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def petimages(tmp_path, monkeypatch):
    """A PetImages-shaped zip served over HTTP from 127.0.0.1, the petimages source pointed at
    its size and checksum: (the URL, the list of request paths)."""
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "kagglecatsanddogs_5340.zip", "w") as zf:
        for i in range(6):
            zf.writestr(f"PetImages/Cat/{i}.jpg", jpeg(i))
            zf.writestr(f"PetImages/Dog/{i}.jpg", jpeg(100 + i))
    body = (site / "kagglecatsanddogs_5340.zip").read_bytes()
    real = D.SOURCES["petimages"]
    stand_in = dataclasses.replace(real, size=len(body), sha256=hashlib.sha256(body).hexdigest())
    monkeypatch.setitem(D.SOURCES, "petimages", stand_in)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(site))
    )
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/kagglecatsanddogs_5340.zip", requests
    httpd.shutdown()
    httpd.server_close()


def full_data(tmp_path, **changes):
    cfg = get_config("full", {"data.cache_dir": str(tmp_path / "cache"), **changes})
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(
        tmp_path / "data" / "petimages")))  # fmt: skip


def test_full_profile_downloads_its_missing_photos_then_reads_them(tmp_path, petimages, caplog):
    url, requests = petimages
    cfg = full_data(tmp_path, **{"data.download_url": url})
    assert cfg.data.download == "petimages" and cfg.data.root.endswith("data/petimages")
    check_inputs(cfg, "probe", need_weights=False, progress=False)  # fetches, then passes
    assert requests == ["/kagglecatsanddogs_5340.zip"]
    assert "downloading petimages (0 MB)" in caplog.text and url in caplog.text
    folder = Path(cfg.data.root)
    manifest = build_manifest(folder, split_sizes=(8, 2, 2), cache_dir=tmp_path / "c",
                              progress=False)  # fmt: skip
    assert manifest.layout == "petimages" and manifest.counts()["train"] == {"cat": 4, "dog": 4}
    assert not list(folder.parent.glob("*.part"))  # the archive is whole, beside the folder
    check_inputs(cfg, "probe", need_weights=False, progress=False)
    assert len(requests) == 1  # there now: nothing fetched again
    assert fetch_missing(cfg.data) is None


def test_no_download_fails_at_once_saying_how_to_fetch(tmp_path, petimages):
    url, requests = petimages
    cfg = full_data(tmp_path, **{"data.download_url": url, "data.allow_download": False})
    with pytest.raises(ExperimentError) as err:
        check_inputs(cfg, "probe", need_weights=False, progress=False)
    message = str(err.value)
    assert "--no-download" in message and "profile 'full'" in message
    assert f"data download --source petimages --dest {tmp_path / 'data'}" in message
    assert requests == [] and not (tmp_path / "data").exists()


def test_offline_fails_at_once_with_what_to_fetch_and_leaves_nothing(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opened = []
    urlopen = D.urllib.request.urlopen
    monkeypatch.setattr(
        D.urllib.request, "urlopen", lambda *a, **k: opened.append(a) or urlopen(*a, **k)
    )
    cfg = full_data(tmp_path, **{"data.download_url": f"http://127.0.0.1:{port}/x.zip"})
    with pytest.raises(ExperimentError) as err:
        check_inputs(cfg, "probe", need_weights=False, progress=False)
    message = str(err.value)
    assert "not found and could not be downloaded" in message and "cannot reach" in message
    assert "--data DIR" in message  # the way to use photos already on the machine
    assert len(opened) == 1 and not Path(cfg.data.root).exists()


def test_a_mistyped_folder_is_not_downloaded_into(tmp_path, petimages):
    url, requests = petimages
    cfg = full_data(tmp_path, **{"data.download_url": url})
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, root=str(tmp_path / "petimage"))
    )
    assert fetch_missing(cfg.data) is None and requests == []
    with pytest.raises(ExperimentError, match="kaggle.*--data"):  # the usual message
        check_inputs(cfg, "probe", need_weights=False, progress=False)
    assert requests == []
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, download=None))
    with pytest.raises(DataError, match="names no source to download"):
        fetch_missing(cfg.data)


def test_source_dest_is_the_root_less_the_sources_own_folders():
    assert source_dest("data/petimages", D.SOURCES["petimages"]) == Path("data")
    assert source_dest("/x/oxford-pets/images", D.SOURCES["oxford-pets"]) == Path("/x")
    assert source_dest("petimages", D.SOURCES["petimages"]) == Path()
    with pytest.raises(DataError, match="ending in oxford-pets/images"):
        source_dest("data/oxford-pets", D.SOURCES["oxford-pets"])


def test_the_cli_no_download_flag_fails_at_once(tmp_path, petimages, capsys, monkeypatch):
    url, requests = petimages
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data" / "petimages"  # the source's own folder: would be downloaded
    argv = ["train", "--profile", "full", "--experiment", "probe", "--data", str(root),
            "--set", f"data.download_url={url}", "--no-download"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitlib train: error: ") and "--no-download" in err
    assert requests == [] and not root.exists()
