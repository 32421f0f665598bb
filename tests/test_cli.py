"""Tests of the command line (python -m vitlib)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from training import comparable

from vitlib import __main__ as cli
from vitlib.__main__ import main, parse_overrides
from vitlib.errors import ExperimentError


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


# --- every error ends in one line, before any work ---------------------------------------------

BAD_SETTINGS = [
    "finetune.batch_size=-1",
    "finetune.batch_size=0",
    "finetune.epochs=0",
    "finetune.epochs=abc",
    "finetune.epochs=1.5",
    "finetune.epochs=true",
    "finetune.lr=-1",
    "finetune.lr=0",
    "finetune.lr=nan",
    "finetune.lr=NaN",
    "finetune.lr=Infinity",
    "finetune.weight_decay=-0.1",
    "finetune.warmup_epochs=99",
    "finetune.optimizer=sgd",
    "finetune.schedule=linear",
    "finetune.init_from_probe=yes",
    "probe.eval_batch_size=0",
    "model.img_size=30",  # smoke's patch is 8
    "model.num_classes=1",
    'model.arch_kwargs={"img_size": 64}',
    "data.split_sizes=[1,2]",
    "data.split_sizes=[0,1,1]",
    "data.source=web",
    "data.num_workers=-1",
    'variants.names=["vit","vit"]',
    "variants.names=[]",
    "variants.train.epochs=0",
    "nonsense=1",
    "finetune.nonsense=1",
    "finetune=3",
    "seed=-1",
    "seed=x",
    "novalue",
    "=3",
]
COMMANDS = {
    "train": ["train", "--profile", "smoke", "--experiment", "finetune"],
    "variants": ["variants", "--profile", "smoke"],
    "report": ["report", "--profile", "smoke"],
}


def scratch_settings(root):
    return [f"--set=run_root={root / 'runs'}", f"--set=figure_root={root / 'figures'}",
            f"--set=data.cache_dir={root / 'cache'}"]  # fmt: skip


@pytest.mark.parametrize("setting", BAD_SETTINGS)
def test_a_bad_setting_ends_in_one_line_and_status_2_before_any_work(tmp_path, capsys, setting):
    for command, args in COMMANDS.items():
        status = main([*args, *scratch_settings(tmp_path), "--set", setting, "--quiet"])
        out, err = capsys.readouterr()
        assert status == 2, (command, setting)
        assert err.endswith("\n") and err.count("\n") == 1, (command, setting, err)
        assert err.startswith(f"vitlib {command}: error: ") and "Traceback" not in err
        assert out == ""
        assert list(tmp_path.iterdir()) == [], (command, setting)  # no run folder, no cache


def test_the_real_stderr_has_the_one_line_and_nothing_else(tmp_path):
    """In a process of its own (logging set up by main, no profile given to report)."""
    done = subprocess.run(
        [sys.executable, "-m", "vitlib", "report", *scratch_settings(tmp_path),
         "--set", "finetune.lr=nan"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "vitlib report: error: finetune.lr: expected a number, got 'nan' (str)\n"
    ), done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("raised", "status", "line"),
    [
        (RuntimeError("boom\nsecond line"), 1, "error: RuntimeError: boom (run again with --debug"),
        (KeyError("x"), 1, "error: KeyError: 'x' (run again with --debug for the traceback)"),
        (OSError(28, "No space left on device"), 2, "error: OSError: [Errno 28] No space left"),
        (TypeError("bad type"), 2, "error: TypeError: bad type (run again with --debug"),
        (ValueError(""), 2, "error: ValueError (run again with --debug for the traceback)"),
        (ExperimentError("say what\nto do"), 2, "error: say what\nto do"),
        (KeyboardInterrupt(), 130, "interrupted; continue it with --resume"),
    ],
)
def test_every_other_error_ends_in_a_message_and_debug_shows_the_traceback(
    monkeypatch, capsys, raised, status, line
):
    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(cli, "run_experiment", fail)
    args = ["train", "--experiment", "probe", "--quiet"]
    assert main(args) == status
    out, err = capsys.readouterr()
    assert err.startswith(f"vitlib train: {line}") and "Traceback" not in err and out == ""
    assert err.count("\n") == 1 + line.count("\n")  # one line (a vitlib error's own lines)
    for debug in (["--debug", *args], [*args, "--debug"]):
        with pytest.raises(type(raised)):
            main(debug)
