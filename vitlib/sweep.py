"""Sweeps of any settings on Optuna: the study's "more epochs and bigger learning rates".

Report section 3.3: "Training with more epochs and bigger learning rates are also explored, but
these parameters failed to give better results." A sweep checks that claim:

    space = parse_space("smoke", grid=["finetune.lr=1e-3,3e-3", "finetune.epochs=1,2"])
    rows = run_sweep("smoke", space, name="lr-epochs")   # one row per trial, val and test

Each trial is an ordinary run (`vitlib.experiments.run_experiment`) of the profile with the
trial's settings as overrides, in its own folder: runs/<profile>/sweeps/<name>/<trial>/ holds
<profile>/<experiment>/, the run format of every experiment. The objective is the validation
accuracy (never the test's); each trial's settings, metrics and folder are its user attributes.

Storage: a journal file, runs/<profile>/sweeps/<name>/optuna.journal, by default (embedded,
nothing to start); any SQLAlchemy URL with `storage=` (sqlite:///FILE, postgresql://...).
Several workers (processes, machines) with the same name and storage share the work:

- Grid points are enqueued once, by the worker that creates the study (Optuna's `GridSampler`
  alone can hand one point to two workers asking at the same moment); workers then pop waiting
  trials. PostgreSQL pops atomically (SELECT ... FOR UPDATE); SQLite has no row locks, so for
  a file storage (SQLite, journal) every claim is made under a lock file beside it.
- Resuming: for a file storage, each trial's folder is locked (`vitlib.runs.lock_run`, an
  flock the system drops when its process dies, SIGKILL included) by the worker running it
  while it claims it, so a RUNNING trial whose folder lock is free was left by a dead worker
  and is taken over, resuming from its last epoch's checkpoint. For a database server, whose
  workers may share no disk, Optuna's heartbeat fails a trial silent for `grace` seconds and
  enqueues it again (`RetryHeartbeatStaleTrialCallback`), in the same folder name.
- Optional pruning (`prune=True`): Optuna's median pruner on each epoch's validation accuracy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from vitlib.config import get_config
from vitlib.errors import ConfigError, ExperimentError, VitlibError
from vitlib.experiments import EXPERIMENTS, check_inputs, run_experiment
from vitlib.runs import PREDICTIONS, RunDir, lock_run
from vitlib.search_space import Range, Space, check_space, parse_space
from vitlib.stats import McNemar, mcnemar, wilson_interval
from vitlib.train import CHECKPOINT

try:
    import fcntl
except ImportError:  # Windows: claims are not serialised (a warning says so)
    fcntl = None

__all__ = [
    "Range",
    "Space",
    "compare_to_setting",
    "compare_trials",
    "describe_comparison",
    "format_rows",
    "parse_space",
    "run_sweep",
    "sweep_rows",
]

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # a worker with nothing to claim waits this long before looking again
HEARTBEAT = (30, 120)  # database servers: seconds between heartbeats, silence before a retry
STUDY_ATTR = "vitlib_sweep"  # the study's user attribute: what the sweep sweeps


@dataclass
class _Store:
    """An Optuna storage and, for a file storage, the lock file that serialises claims."""

    storage: Any
    claim_lock: Path | None

    @property
    def server(self) -> bool:
        return self.claim_lock is None


def open_store(url: str | None, default: Path, *, heartbeat: tuple[int, int] = HEARTBEAT) -> _Store:
    """The storage at `url`: None -> a journal file at `default`; a path without "://" -> a
    journal file there; sqlite:///FILE -> SQLite; any other SQLAlchemy URL -> that database,
    with Optuna's heartbeat (`heartbeat` = (interval, grace) seconds)."""
    if url is not None and "://" in url:
        if url.startswith("sqlite"):
            path = url.partition(":///")[2]
            if not path or path == ":memory:":
                raise ConfigError(
                    f"--storage {url!r}: expected sqlite:///FILE (a file workers share)"
                )
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            return _Store(url, Path(path).expanduser())  # opened under the claim lock
        return _Store(_server_storage(url, *heartbeat), None)
    path = Path(url).expanduser() if url is not None else default
    path.parent.mkdir(parents=True, exist_ok=True)
    return _Store(str(path), path)


def _server_storage(url: str, interval: int, grace: int, tries: int = 3) -> Any:
    """RDBStorage with Optuna's heartbeat; tried again when workers starting together on a new
    database collide while creating its tables."""
    for attempt in range(tries):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                callback = optuna.storages.RetryHeartbeatStaleTrialCallback()
                return optuna.storages.RDBStorage(url, heartbeat_interval=interval,
                    grace_period=grace, heartbeat_stale_trial_callback=callback)  # fmt: skip
        except Exception as exc:  # sqlalchemy's errors: the tables exist by the next try
            if attempt == tries - 1:
                raise
            log.info("opening %s: %s; trying again", url, type(exc).__name__)
            time.sleep(1 + attempt)


def _storage(store: _Store) -> Any:
    """The Optuna storage object of `store` (a file storage's is opened here, under its lock)."""
    if isinstance(store.storage, str):
        if "://" in store.storage:
            store.storage = optuna.storages.RDBStorage(store.storage)
        else:
            backend = optuna.storages.journal.JournalFileBackend(store.storage)
            store.storage = optuna.storages.journal.JournalStorage(backend)
    return store.storage


@contextlib.contextmanager
def _claiming(store: _Store) -> Iterator[None]:
    """Hold the claim lock of a file storage (a blocking flock of <file>.claim), else nothing."""
    if store.claim_lock is None:
        yield
        return
    if fcntl is None:
        log.warning("no file locks here (fcntl): run one sweep worker at a time")
        yield
        return
    path = store.claim_lock.with_name(store.claim_lock.name + ".claim")
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def open_study(store: _Store, name: str, about: Mapping[str, Any], space: Space) -> optuna.Study:
    """The sweep's study, its grid enqueued once: by the worker that creates it (a file
    storage: under the claim lock, finishing the enqueueing of a worker that died doing it).
    A study of the same name made for other settings is a ConfigError."""
    with _claiming(store):
        storage = _storage(store)
        try:
            study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage)
            if store.server or STUDY_ATTR in study.user_attrs:
                return _check_study(study, storage, name, about)
        enqueued = {t.user_attrs.get("folder") for t in study.get_trials(deepcopy=False)}
        for i, params in enumerate(space.points()):
            if f"trial-{i:04d}" not in enqueued:
                study.enqueue_trial(params, user_attrs={"folder": f"trial-{i:04d}"})
        study.set_user_attr(STUDY_ATTR, dict(about))  # last: the grid is complete
    return study


def _check_study(
    study: optuna.Study, storage: Any, name: str, about: Mapping[str, Any]
) -> optuna.Study:
    """`study` once its creator has enqueued its grid (waited for, on a database server), if
    it was made for the same settings."""
    deadline = time.monotonic() + 120
    while (stored := study.user_attrs.get(STUDY_ATTR)) is None:
        if time.monotonic() > deadline:
            raise ExperimentError(
                f"sweep {name!r} exists but its grid was never written (its first worker "
                "stopped while creating it); start it again with another --name"
            )
        time.sleep(POLL_SECONDS)
        study = optuna.load_study(study_name=name, storage=storage)
    if json.dumps(stored, sort_keys=True) != json.dumps(dict(about), sort_keys=True):
        raise ConfigError(
            f"sweep {name!r} in this storage was started as {stored}, not {dict(about)}; "
            "run it with the same settings, or name a new one with --name"
        )
    return study


def run_sweep(
    profile: str,
    space: Space,
    *,
    name: str = "sweep",
    experiment: str = "finetune",
    overrides: Mapping[str, Any] | None = None,
    storage: str | None = None,
    root: str | Path | None = None,
    prune: bool = False,
    progress: bool = True,
    heartbeat: tuple[int, int] = HEARTBEAT,
) -> list[dict[str, Any]]:
    """Work on sweep `name` of `experiment` ("finetune" or "probe") over `space` until no trial
    is waiting or running, beside any other workers of that name and storage (the module
    docstring: how each trial runs once and a killed one resumes); return `sweep_rows`.

    `overrides` apply to every trial (as --set), `root` resolves relative paths as in
    `get_config`; `storage` is an URL or a journal file (`open_store`). Inputs (data, weights)
    and every swept value are checked before the first trial."""
    if experiment not in EXPERIMENTS[1:]:
        raise ConfigError(f"--experiment: expected one of {list(EXPERIMENTS[1:])} (a sweep "
                          f"trains), got {experiment!r}")  # fmt: skip
    if not name or Path(name).name != name or name.startswith("."):
        raise ConfigError(f"--name: expected a folder name (no '/'), got {name!r}")
    overrides = dict(overrides or {})
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # vitlib logs each trial itself
    check_space(profile, space, overrides)
    base = get_config(profile, overrides, root=root)
    if experiment == "finetune" and base.finetune.init_from_probe:
        raise ConfigError("finetune.init_from_probe: a sweep's trials start from no probe; "
                          "pass --set finetune.init_from_probe=false")  # fmt: skip
    check_inputs(base, experiment, progress=progress)
    sweep_dir = base.run_dir / "sweeps" / name
    store = open_store(storage, sweep_dir / "optuna.journal", heartbeat=heartbeat)
    about = {"profile": profile, "experiment": experiment, **space.describe()}
    study = open_study(store, name, about, space)
    if prune:  # NOTE(paper): the study trained every setting to the end; pruning is opt-in
        study.pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    trial = dict(profile=profile, experiment=experiment, overrides=overrides, root=root,
                 prune=prune, progress=progress)  # fmt: skip
    while (claim := _next_trial(study, store, sweep_dir, space)) != "done":
        if claim is None:  # the rest are running elsewhere
            time.sleep(POLL_SECONDS)
            continue
        trial_id, folder, lock = claim
        with lock, _heartbeat(store, trial_id):
            _run_trial(study, trial_id, space, sweep_dir / folder, **trial)
    return sweep_rows(study, sweep_dir)


def _next_trial(
    study: optuna.Study, store: _Store, sweep_dir: Path, space: Space
) -> tuple[int, str, contextlib.ExitStack] | str | None:
    """(trial id, folder, the held lock of its folder) of the trial this worker runs next:
    one a dead worker left running (file storages), a waiting one, or a new one of a search;
    None when the rest are running elsewhere; "done" when none is waiting or running."""
    with _claiming(store), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if store.server:
            optuna.storages.fail_stale_trials(study)  # and enqueued again by the callback
        trials = study.get_trials(deepcopy=False)
        # FrozenTrial._trial_id: the storage's id, as Optuna's own queue uses it.
        for t in trials if not store.server else ():
            if t.state == TrialState.RUNNING and (lock := _lock_folder(sweep_dir / _folder(t))):
                log.warning("trial %d was left running by a worker that stopped: resuming it "
                            "from its last checkpoint", t.number)  # fmt: skip
                return t._trial_id, _folder(t), lock
        for t in trials:
            if t.state == TrialState.WAITING and _pop(study, t._trial_id):
                return t._trial_id, _folder(t), _lock_folder(sweep_dir / _folder(t), required=True)
        if space.search and len({_folder(t) for t in trials}) < (space.trials or 0):
            new = study.ask()
            new.set_user_attr("folder", folder := f"trial-{new.number:04d}")
            return new._trial_id, folder, _lock_folder(sweep_dir / folder, required=True)
        busy = any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
        return None if busy else "done"


def _folder(t: optuna.trial.FrozenTrial) -> str:
    return t.user_attrs.get("folder") or f"trial-{t.number:04d}"


def _pop(study: optuna.Study, trial_id: int) -> bool:
    """Make waiting trial `trial_id` this worker's (False when another took it first)."""
    try:
        return study._storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def _lock_folder(folder: Path, *, required: bool = False) -> contextlib.ExitStack | None:
    """The held lock of a trial's folder (`lock_run`), or None when a live worker holds it;
    if `required`, a held lock is an error (a trial this worker has just claimed)."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(lock_run(folder))
    except ExperimentError:
        if required:
            raise
        return None
    return stack


@contextlib.contextmanager
def _heartbeat(store: _Store, trial_id: int) -> Iterator[None]:
    """On a database server, record the trial's heartbeat every interval while it runs."""
    if not store.server:
        yield
        return
    stop = threading.Event()
    interval = store.storage.get_heartbeat_interval()

    def beat() -> None:
        while True:
            store.storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _run_trial(
    study: optuna.Study,
    trial_id: int,
    space: Space,
    folder: Path,
    *,
    profile: str,
    experiment: str,
    overrides: Mapping[str, Any],
    root: str | Path | None,
    prune: bool,
    progress: bool,
) -> None:
    """Run one trial as an ordinary run in `folder` (resuming its checkpoint) and tell the
    study its validation accuracy; a run that fails as runs do (NaN loss, a checkpoint of
    other settings) or is pruned is told so, other errors leave it running, to be resumed."""
    trial = optuna.Trial(study, trial_id)
    params = {
        key: trial.suggest_categorical(key, list(values)) for key, values in space.grid.items()
    }
    for key, r in space.search.items():
        if r.kind == "int":
            params[key] = trial.suggest_int(key, int(r.low), int(r.high))
        else:
            params[key] = trial.suggest_float(key, r.low, r.high, log=r.kind == "log")
    cfg = get_config(profile, {**overrides, **params, "run_root": str(folder)}, root=root)
    run_dir = cfg.run_dir / experiment
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    trial.set_user_attr("worker", worker_id())
    log.info("sweep %s, %s: %s", study.study_name, folder.name, params)
    hook = _pruning_hook(trial, run_dir) if prune else None
    try:
        metrics = run_experiment(cfg, experiment, resume=True, progress=progress, on_step=hook)
    except optuna.TrialPruned as exc:
        trial.set_user_attr("pruned", str(exc))
        study.tell(trial, state=TrialState.PRUNED)
        return
    except VitlibError as exc:  # a value a search drew, a NaN loss: the trial, not the sweep
        log.warning("sweep %s, %s failed: %s", study.study_name, folder.name, exc)
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=TrialState.FAIL)
        return
    for key, value in _metrics_attrs(metrics).items():
        trial.set_user_attr(key, value)
    study.tell(trial, metrics["val_accuracy"])


def worker_id() -> str:
    """host:pid, recorded with each trial a worker runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _metrics_attrs(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The trial attributes of a finished run's metrics."""
    correct = int(sum(metrics["confusion_matrix"][i][i] for i in range(len(metrics["classes"]))))
    keys = ("val_accuracy", "test_accuracy", "val_loss", "test_loss", "epochs", "minutes",
            "train_minutes")  # fmt: skip
    return {
        **{k: metrics[k] for k in keys},
        "test_correct": correct,
        "n_test": metrics["n"]["test"],
    }


def _pruning_hook(trial: optuna.Trial, run_dir: Path):
    """An on_step hook that reports each finished epoch's validation accuracy (read from the
    epoch's checkpoint) at the first step of the next and prunes the trial when the median
    pruner says so."""
    from vitlib.resume import read_training_state

    reported: set[int] = set()

    def on_step(epoch: int, step: int, net: torch.nn.Module) -> None:
        if step or not epoch:
            return
        for row in read_training_state(run_dir / CHECKPOINT)["history"]:
            if row["epoch"] not in reported:
                trial.report(row["val_accuracy"], row["epoch"])
                reported.add(row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} by the median rule")

    return on_step


def sweep_rows(study: optuna.Study, sweep_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per trial folder (its last trial, where a server retried one): "trial",
    "number", "state", the swept settings, "val_accuracy", "test_accuracy", "test_low" and
    "test_high" (its 95% Wilson interval), "minutes", "worker", "run_dir"; None where a trial
    has not finished. In folder order. Given `sweep_dir` (the sweep's folder as this reader
    sees it), "run_dir" is the trial's folder under it: the worker that recorded it may have
    run elsewhere or from another working folder."""
    last: dict[str, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False):
        if _folder(t) not in last or t.number > last[_folder(t)].number:
            last[_folder(t)] = t
    rows = []
    for folder, t in sorted(last.items()):
        a = t.user_attrs
        row = {"trial": folder, "number": t.number, "state": t.state.name, **t.params}
        row |= {k: a.get(k) for k in ("val_accuracy", "test_accuracy", "test_correct", "n_test")}
        low, high = (None, None)
        if a.get("n_test"):
            low, high = wilson_interval(a["test_correct"], a["n_test"])
        row |= {"test_low": low, "test_high": high}
        row |= {k: a.get(k) for k in ("epochs", "minutes", "worker", "run_dir", "error")}
        if a.get("run_dir") and sweep_dir is not None:  # <trial>/<profile>/<experiment>
            recorded = Path(a["run_dir"])
            row["run_dir"] = str(Path(sweep_dir).resolve() / folder / recorded.parent.name
                                 / recorded.name)  # fmt: skip
        rows.append(row)
    return rows


def compare_trials(run_a: str | Path, run_b: str | Path) -> McNemar:
    """McNemar's test of two trials' runs on their test images (predictions.csv, the same
    images in the same order, else an ExperimentError)."""
    import csv

    correct, paths = [], []
    for run in (Path(run_a), Path(run_b)):
        with open(RunDir(run) / PREDICTIONS, newline="") as f:
            rows = list(csv.DictReader(f))
        correct.append([r["label"] == r["pred"] for r in rows])
        paths.append([r["path"] for r in rows])
    if paths[0] != paths[1]:
        raise ExperimentError(f"{run_a} and {run_b} were tested on different images; McNemar "
                              "compares two models on the same ones")  # fmt: skip
    return mcnemar(correct[0], correct[1])


def compare_to_setting(rows: Sequence[Mapping[str, Any]], setting: Mapping[str, Any]) -> dict:
    """The best finished trial by validation accuracy against the trial of `setting` (e.g. the
    study's own, lr 1e-4 for 5 epochs): {"best", "reference" (their rows), "test" (McNemar on
    the test images, best as a), "better" (the best is significantly better on test)}."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    matches = [r for r in done if all(r.get(k) == v for k, v in setting.items())]
    if not matches:
        raise ExperimentError(f"no finished trial has the settings {dict(setting)}; the grid "
                              "must hold them for the comparison")  # fmt: skip
    reference = matches[0]
    best = max(done, key=lambda r: (r["val_accuracy"], r is reference))
    test = compare_trials(best["run_dir"], reference["run_dir"])
    better = best is not reference and test.significant and test.only_a > test.only_b
    return {"best": best, "reference": reference, "test": test, "better": better}


def format_rows(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    """The rows as a plain-text table: trial, the swept `keys`, accuracies with the test's
    interval, minutes, state."""
    head = ["trial", *keys, "val acc", "test acc (95% CI)", "minutes", "state"]
    lines = [head]
    for r in rows:
        test = "—" if r["test_accuracy"] is None else (
            f"{r['test_accuracy']:.4f} ({r['test_low']:.3f}-{r['test_high']:.3f})")  # fmt: skip
        val = "—" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
        minutes = "—" if r["minutes"] is None else f"{r['minutes']:.1f}"
        lines.append([r["trial"], *(str(r.get(k)) for k in keys), val, test, minutes, r["state"]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def describe_comparison(result: Mapping[str, Any], keys: Sequence[str]) -> str:
    """`compare_to_setting`'s result in words: both settings with their test accuracy and
    interval, McNemar's counts and p-value, and the answer."""
    best, own, test = result["best"], result["reference"], result["test"]

    def show(r: Mapping[str, Any]) -> str:
        setting = ", ".join(f"{k}={r[k]}" for k in keys)
        return (f"{setting}: test {r['test_accuracy']:.2%} "
                f"(95% CI {r['test_low']:.1%}-{r['test_high']:.1%})")  # fmt: skip

    answer = (
        "the best setting is significantly better on test: the claim does not hold here"
        if result["better"]
        else "no setting is significantly better on test: the claim holds here"
    )
    return (
        f"best by validation: {show(best)}\nthe study's setting: {show(own)}\n"
        f"McNemar on {own['n_test']} test images: {test.only_a} right only by the best, "
        f"{test.only_b} only by the study's setting, p = {test.p_value:.3g}: {answer}"
    )
