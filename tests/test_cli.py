"""Tests of the command line (python -m vitlib)."""

from __future__ import annotations

import json

import pytest
from training import comparable

from vitlib.__main__ import main, parse_overrides


def test_cli_parses_overrides_and_reports_errors(tmp_path, capsys):
    assert parse_overrides(
        ["finetune.epochs=2", "model.pretrained=null", "data.root=a/b", "x.y=[1, 2]"]
    ) == {"finetune.epochs": 2, "model.pretrained": None, "data.root": "a/b", "x.y": [1, 2]}
    assert (
        main(
            ["train", "--profile", "full", "--experiment", "probe", "--data", str(tmp_path / "no")]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--experiment", "probe", "--set", "probe.nope=1"]) == 2
    assert "unknown setting 'probe.nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_the_smoke_probe_on_synthetic_data_and_resumes(tmp_path, capsys):
    args = ["train", "--profile", "smoke", "--experiment", "probe", "--quiet"]
    args += ["--set", f"run_root={tmp_path}", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    args += ["--set", "probe.epochs=2"]
    assert main(args) == 0
    assert "smoke/probe: val accuracy" in capsys.readouterr().out
    first = json.loads((tmp_path / "smoke/probe/metrics.json").read_text())
    assert first["n"] == {"train": 480, "val": 160, "test": 160}
    assert (
        json.loads((tmp_path / "smoke/probe/run.json").read_text())["data"]["source"] == "synthetic"
    )
    assert main([*args, "--resume"]) == 0  # after the last epoch: evaluates and rewrites
    again = json.loads((tmp_path / "smoke/probe/metrics.json").read_text())
    assert comparable(again["history"]) == comparable(first["history"])
    assert again["test_accuracy"] == first["test_accuracy"]
