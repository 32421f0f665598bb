"""Sweeps on Optuna (vitlib.sweep, vitlib.search_space): the grid parser, a smoke grid end to end
on SQLite, two workers sharing one storage (each trial once), a SIGKILLed sweep resumed to the
uninterrupted result, and two workers sharing a sweep through a PostgreSQL server started here."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from helpers import free_port
from training import comparable

from vitlib.__main__ import main
from vitlib.errors import ConfigError
from vitlib.search_space import Range, Space, parse_space
from vitlib.sweep import compare_to_setting, compare_trials, format_rows, run_sweep

GRID = ["--grid", "finetune.lr=0.001,0.003", "--grid", "finetune.epochs=1,2"]
POINTS = [(0.001, 1), (0.001, 2), (0.003, 1), (0.003, 2)]  # trial-0000 ... trial-0003
ROOT = Path(__file__).resolve().parents[1]


def sweep_command(name: str, storage: str, cache: Path) -> list[str]:
    return [sys.executable, "-m", "vitlib", "sweep", "--profile", "smoke", "--name", name,
            "--storage", storage, *GRID, "--quiet", "--set", f"data.cache_dir={cache}"]  # fmt: skip


def run_folder(cwd: Path, name: str, trial: int) -> Path:
    return cwd / "runs/smoke/sweeps" / name / f"trial-{trial:04d}/smoke/finetune"


def trials_of(name: str, storage: str, cwd: Path | None = None) -> list[optuna.trial.FrozenTrial]:
    """The study's trials read back with Optuna itself (`storage` as given to the command that
    ran in `cwd`: an URL, or a journal file)."""
    if storage.startswith("sqlite:///") and cwd is not None:
        storage = f"sqlite:///{cwd / storage.removeprefix('sqlite:///')}"
    elif "://" not in storage:
        backend = optuna.storages.journal.JournalFileBackend(str(cwd / storage))
        storage = optuna.storages.journal.JournalStorage(backend)
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def assert_each_point_once(trials: list[optuna.trial.FrozenTrial]) -> None:
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    points = sorted((t.params["finetune.lr"], t.params["finetune.epochs"]) for t in trials)
    assert points == POINTS
    assert sorted(t.user_attrs["folder"] for t in trials) == [f"trial-{i:04d}" for i in range(4)]
    for t in trials:
        assert t.value == t.user_attrs["val_accuracy"]  # the objective: validation, never test


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The issue's command, uninterrupted, one worker, SQLite: what the other tests compare
    with. Also fills the synthetic data cache they share."""
    cwd = tmp_path_factory.mktemp("reference")
    cache = cwd / "cache"
    done = subprocess.run(
        sweep_command("ref", "sqlite:///ref.db", cache), cwd=cwd, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    return {"cwd": cwd, "cache": cache, "done": done}


# --- the space ------------------------------------------------------------------------------


def test_grid_values_are_read_as_json_and_checked_per_key():
    space = parse_space("smoke", grid=["finetune.lr=1e-4,3e-4", "finetune.epochs=5,10"])
    assert space.grid == {"finetune.lr": (1e-4, 3e-4), "finetune.epochs": (5, 10)}
    assert space.points() == [
        {"finetune.lr": 1e-4, "finetune.epochs": 5},
        {"finetune.lr": 1e-4, "finetune.epochs": 10},
        {"finetune.lr": 3e-4, "finetune.epochs": 5},
        {"finetune.lr": 3e-4, "finetune.epochs": 10},
    ]
    bad = {
        "finetune.lrr=1e-4": "unknown setting 'finetune.lrr'",
        "finetune.epochs=2,2.5": "finetune.epochs: expected an integer, got 2.5",
        "finetune.lr=1e-4,-1": "finetune.lr: expected a finite number > 0, got -1.0",
        "finetune.optimizer=adam,sgd": "finetune.optimizer: expected one of ['adam', 'adamw']",
        "finetune.lr=1e-4,1e-4": "expected distinct values",
        "finetune.lr": "--grid expects KEY=V1,V2,...",
        "data.split_sizes=[1,2,3]": "data.split_sizes: expected a list of 3 integers",  # split
    }
    for item, message in bad.items():
        with pytest.raises(ConfigError, match=None) as caught:
            parse_space("smoke", grid=[item])
        assert message in str(caught.value), (item, str(caught.value))


def test_search_ranges_are_parsed_and_checked():
    space = parse_space("smoke", search=["finetune.lr=log:1e-5:1e-2", "finetune.epochs=int:1:4"],
                        trials=3)  # fmt: skip
    assert space.search == {"finetune.lr": Range("log", 1e-5, 1e-2),
                            "finetune.epochs": Range("int", 1, 4)}  # fmt: skip
    bad = [
        (["finetune.lr=exp:1:2"], 3, "KIND one of ['log', 'float', 'int']"),
        (["finetune.lr=log:0:1"], 3, "LOW > 0 for log"),
        (["finetune.lr=float:2:1"], 3, "LOW < HIGH"),
        (["finetune.epochs=float:1:4"], 3, "searched with int:LOW:HIGH"),  # 2.5 epochs
        (["finetune.label_smoothing=float:0:1"], 3, "label_smoothing: expected a number from 0"),
        (["finetune.lr=log:1e-5:1e-2"], None, "--search needs --trials N"),
    ]
    for items, trials, message in bad:
        with pytest.raises(ConfigError) as caught:
            parse_space("smoke", search=items, trials=trials)
        assert message in str(caught.value), (items, str(caught.value))
    with pytest.raises(ConfigError, match="not both"):
        parse_space("smoke", grid=["finetune.lr=1e-3"], search=["finetune.epochs=int:1:2"])
    with pytest.raises(ConfigError, match="not both"):
        parse_space("smoke")


def test_bad_sweep_arguments_exit_2_with_one_line_and_create_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cases = {
        ("--grid", "finetune.lrr=1,2"): "unknown setting 'finetune.lrr'",
        ("--grid", "finetune.epochs=1,x"): "finetune.epochs: expected an integer, got 'x'",
        ("--grid", "finetune.lr=1e-3", "--trials", "3"): "--trials is for --search",
        ("--grid", "finetune.lr=1e-3", "--name", "a/b"): "--name: expected a folder name",
        ("--grid", "finetune.lr=1e-3", "--storage", "sqlite://"): "expected sqlite:///FILE",
    }
    for args, message in cases.items():
        assert main(["sweep", "--profile", "smoke", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("vitlib sweep: error: "), err
        assert message in err, (args, err)
    assert list(tmp_path.iterdir()) == []


def test_format_rows_shows_intervals_and_unfinished_trials():
    rows = [
        {"trial": "trial-0000", "finetune.lr": 0.001, "val_accuracy": 0.75, "test_accuracy": 0.5,
         "test_low": 0.25, "test_high": 0.75, "minutes": 1.25, "state": "COMPLETE"},
        {"trial": "trial-0001", "finetune.lr": 0.003, "val_accuracy": None, "test_accuracy": None,
         "test_low": None, "test_high": None, "minutes": None, "state": "RUNNING"},
    ]  # fmt: skip
    lines = format_rows(rows, ["finetune.lr"]).splitlines()
    assert lines[0].split() == ["trial", "finetune.lr", "val", "acc", "test", "acc", "(95%",
                                "CI)", "minutes", "state"]  # fmt: skip
    assert lines[1].split() == ["trial-0000", "0.001", "0.7500", "0.5000", "(0.250-0.750)",
                                "1.2", "COMPLETE"]  # fmt: skip
    assert lines[2].split() == ["trial-0001", "0.003", "—", "—", "—", "RUNNING"]


def test_space_points_of_a_search_are_empty():
    assert Space(search={"finetune.lr": Range("log", 1e-4, 1e-3)}, trials=2).points() == []


# --- end to end -----------------------------------------------------------------------------


def test_the_issues_command_runs_a_smoke_grid_of_4_trials_on_sqlite(reference):
    done, cwd = reference["done"], reference["cwd"]
    assert done.returncode == 0, done.stderr[-3000:]
    trials = trials_of("ref", "sqlite:///ref.db", cwd)
    assert_each_point_once(trials)
    for t in trials:
        i = int(t.user_attrs["folder"][-4:])
        folder = run_folder(cwd, "ref", i)
        assert t.user_attrs["run_dir"].endswith(str(folder.relative_to(cwd)))
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["epochs"] == POINTS[i][1] == t.params["finetune.epochs"]
        assert metrics["val_accuracy"] == t.value
        assert metrics["test_accuracy"] == t.user_attrs["test_accuracy"]
        run = json.loads((folder / "run.json").read_text())
        assert run["config"]["finetune"]["lr"] == POINTS[i][0] and run["resumed"] is False
        for name in ("predictions.csv", "history.csv", "model.safetensors"):
            assert (folder / name).is_file(), name
    table = done.stdout.splitlines()
    assert len(table) == 5 and table[0].startswith("trial") and "COMPLETE" in table[4]
    assert compare_trials(run_folder(cwd, "ref", 0), run_folder(cwd, "ref", 0)).p_value == 1.0
    # Read back as notebook 08 does, from another working folder than the command's.
    assert Path.cwd() != cwd
    space = Space(grid={"finetune.lr": (0.001, 0.003), "finetune.epochs": (1, 2)})
    rows = run_sweep("smoke", space, name="ref", storage=f"sqlite:///{cwd / 'ref.db'}", root=cwd,
                     overrides={"data.cache_dir": str(reference["cache"])}, progress=False)  # fmt: skip
    assert [Path(r["run_dir"]) for r in rows] == [run_folder(cwd, "ref", i) for i in range(4)]
    assert 0 <= compare_to_setting(rows, space.points()[0])["test"].p_value <= 1
    # Run again: every trial is finished, nothing trains.
    again = subprocess.run(sweep_command("ref", "sqlite:///ref.db", reference["cache"]), cwd=cwd,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0 and "finetune epoch" not in again.stderr
    assert again.stdout == done.stdout
    command = sweep_command("ref", "sqlite:///ref.db", reference["cache"])
    command[command.index("finetune.lr=0.001,0.003")] = "finetune.lr=0.001"
    other = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "was started as" in other.stderr


def started_trials(stderr: str, name: str) -> list[str]:
    """The trials a worker started ("sweep NAME, trial-000N: {...}" lines)."""
    return [line.split(", ")[1].split(":")[0] for line in stderr.splitlines()
            if f"vitlib.sweep: sweep {name}, trial-" in line]  # fmt: skip


def run_two_workers(cwd: Path, name: str, storage: str, cache: Path) -> list:
    started = time.perf_counter()
    workers = [
        subprocess.Popen(
            sweep_command(name, storage, cache),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    by_worker = [started_trials(err, name) for _, err in outputs]
    print(f"{name}: trials per worker {[len(b) for b in by_worker]}, "
          f"{time.perf_counter() - started:.1f} s for both")  # fmt: skip
    return by_worker


@pytest.mark.parametrize("storage", ["sqlite:///shared.db", "shared.journal"])
def test_two_workers_started_together_run_every_trial_exactly_once(reference, tmp_path, storage):
    by_worker = run_two_workers(tmp_path, "two", storage, reference["cache"])
    started = sorted(sum(by_worker, []))
    assert started == [f"trial-{i:04d}" for i in range(4)]  # none twice, none lost
    assert_each_point_once(trials_of("two", storage, tmp_path))
    for i in range(4):
        run = json.loads((run_folder(tmp_path, "two", i) / "run.json").read_text())
        assert run["resumed"] is False  # trained once, start to end


KILLED_SWEEP = r"""
import os, signal, sys
import vitlib.sweep as sweep
from vitlib.__main__ import main

real = sweep.run_experiment

def killing(cfg, experiment, **kwargs):
    if cfg.run_root.endswith("trial-0001"):  # (lr 0.001, 2 epochs): dies as epoch 2 begins
        def on_step(epoch, step, net):
            if epoch == 1 and step == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        kwargs["on_step"] = on_step
    return real(cfg, experiment, **kwargs)

sweep.run_experiment = killing
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_sigkilled_sweep_restarted_finishes_with_the_uninterrupted_results(reference, tmp_path):
    command = sweep_command("cut", "sqlite:///cut.db", reference["cache"])
    killed = subprocess.run([sys.executable, "-c", KILLED_SWEEP, *command[3:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    states = {
        t.user_attrs["folder"]: t.state.name for t in trials_of("cut", "sqlite:///cut.db", tmp_path)
    }
    assert states == {"trial-0000": "COMPLETE", "trial-0001": "RUNNING",
                      "trial-0002": "WAITING", "trial-0003": "WAITING"}  # fmt: skip
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "trial 1 was left running by a worker that stopped" in resumed.stderr
    assert started_trials(resumed.stderr, "cut") == ["trial-0001", "trial-0002", "trial-0003"]
    assert_each_point_once(trials_of("cut", "sqlite:///cut.db", tmp_path))
    run = json.loads((run_folder(tmp_path, "cut", 1) / "run.json").read_text())
    assert run["resumed_from_epoch"] == 1  # from its checkpoint, not from the start
    for i in range(4):
        got, want = (json.loads((run_folder(cwd, n, i) / "metrics.json").read_text())
                     for cwd, n in ((tmp_path, "cut"), (reference["cwd"], "ref")))  # fmt: skip
        for a, b in zip(comparable(got["history"]), comparable(want["history"]), strict=True):
            assert a == pytest.approx(b, rel=1e-5), (i, a["epoch"])
        assert got["test_accuracy"] == want["test_accuracy"]
        assert got["confusion_matrix"] == want["confusion_matrix"]
    assert resumed.stdout.splitlines()[1:] != [] and resumed.stdout.count("COMPLETE") == 4


# --- PostgreSQL -----------------------------------------------------------------------------


def postgres_bin(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or where Debian's postgresql package puts it."""
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]
    return found if isinstance(found, str) or not found else found[0]


@pytest.fixture
def postgres():
    """A PostgreSQL server on 127.0.0.1 in a temporary data folder, stopped at the end; run as
    the package's `postgres` user when this is root (the server refuses to run as root)."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
        )
    pytest.importorskip("psycopg2", reason="psycopg2-binary (a dev extra) is not installed")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="vitlib-pg-"))
    if os.geteuid() == 0:
        try:
            import pwd

            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    run = dict(check=True, capture_output=True, text=True, timeout=120, cwd=folder)
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], **run)
    options = f"-p {port} -h 127.0.0.1 -k {folder}"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"),
                    "-w", "start"], **run)  # fmt: skip
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], **run)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_a_sweep_through_postgresql(reference, tmp_path, postgres):
    by_worker = run_two_workers(tmp_path, "pg", postgres, reference["cache"])
    assert sorted(sum(by_worker, [])) == [f"trial-{i:04d}" for i in range(4)]
    trials = trials_of("pg", postgres)
    assert_each_point_once(trials)
    for t in trials:  # the same results as on SQLite
        i = int(t.user_attrs["folder"][-4:])
        want = json.loads((run_folder(reference["cwd"], "ref", i) / "metrics.json").read_text())
        assert t.user_attrs["test_accuracy"] == want["test_accuracy"]


# --- pruning --------------------------------------------------------------------------------


def test_the_pruning_hook_reports_each_epoch_and_prunes_below_the_median(tmp_path):
    import torch

    from vitlib.sweep import _pruning_hook
    from vitlib.train import CHECKPOINT

    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    good = study.ask()
    good.report(0.9, 1)
    study.tell(good, 0.9)

    def hook_after(history: list[dict]):
        trial = study.ask()
        torch.save({"history": history}, tmp_path / CHECKPOINT)
        return trial, _pruning_hook(trial, tmp_path)

    trial, hook = hook_after([{"epoch": 1, "val_accuracy": 0.95}])
    hook(0, 0, None)  # epoch 1 has not ended: nothing to report
    hook(1, 3, None)  # not the first step of epoch 2: nothing read
    assert study.trials[-1].intermediate_values == {}
    hook(1, 0, None)  # above the median: reported, not pruned
    assert study.trials[-1].intermediate_values == {1: 0.95}
    study.tell(trial, 0.95)
    trial, hook = hook_after([{"epoch": 1, "val_accuracy": 0.5}])
    with pytest.raises(optuna.TrialPruned, match="after epoch 1"):
        hook(1, 0, None)
    assert study.trials[-1].intermediate_values == {1: 0.5}
