"""Tests of vitlib.files: atomic writes and the CSV and JSON writers."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from vitlib import files, resume
from vitlib.files import csv_text, write_json


def test_csv_helper_round_trips_awkward_names():
    text = csv_text(("path", "reason"), [("a,b.jpg", 'said "no"')])
    assert list(csv.reader(io.StringIO(text))) == [["path", "reason"], ["a,b.jpg", 'said "no"']]


def test_a_crash_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"accuracy": 0.5})

    def die_after_half(obj, f):
        Path(f).write_bytes(b'{"accur')
        raise OSError("disk full")

    monkeypatch.setattr(resume.torch, "save", die_after_half)
    with pytest.raises(OSError, match="disk full"):
        resume.save_checkpoint(tmp_path / "checkpoint.pt", {})
    assert not (tmp_path / "checkpoint.pt").exists()

    monkeypatch.setattr(files.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        write_json(path, {"accuracy": 0.9})
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
