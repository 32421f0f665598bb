"""How often a grid point runs twice when several workers share one Optuna storage.

    python -m benchmarks.bench_sweep [--workers 4] [--points 8] [--seconds 0.2] [--repeats 3]

Each worker is a process; all start at the same moment (an Event) and each trial sleeps
`--seconds` (the objective does no work: this measures the claiming, not training). Three ways:

- `grid_sampler`: Optuna's GridSampler alone, `study.optimize` in every worker;
- `enqueued`: the points enqueued once, workers popping waiting trials with `study.optimize`
  (Optuna's own queue; SQLite has no row locks, so two workers can pop one trial);
- `vitlib`: `vitlib.sweep`'s claiming (enqueued once, every claim under the storage's lock file).

Written to benchmarks/results/sweep.json: for each storage and way, trials run, points run more
than once, and points never run, over `--repeats` sweeps.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from benchmarks.common import format_table, write_result

WAYS = ("grid_sampler", "enqueued", "vitlib")


def _storage(url: str) -> Any:
    """An URL as it is, a journal file's path as its JournalStorage."""
    if "://" in url:
        return url
    return optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(url))


def _worker(way: str, url: str, points: int, seconds: float, start: Any, out: Any) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    start.wait()
    ran: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        ran.append(trial.suggest_categorical("x", list(range(points))))
        time.sleep(seconds)
        return 0.0

    if way == "vitlib":
        ran = _vitlib_worker(url, points, seconds)
    else:
        sampler = (
            optuna.samplers.GridSampler({"x": list(range(points))})
            if way == "grid_sampler"
            else None
        )
        study = optuna.load_study(study_name="bench", storage=_storage(url), sampler=sampler)
        if way == "grid_sampler":
            study.optimize(objective)  # GridSampler stops the study when every point ran
        while way == "enqueued" and study.get_trials(states=(TrialState.WAITING,)):
            study.optimize(objective, n_trials=1)  # pops a waiting trial (or, late, a new one)
    out.put(ran)


def _vitlib_worker(url: str, points: int, seconds: float) -> list[int]:
    from vitlib.sweep import Space, _next_trial, open_store, open_study

    space = Space(grid={"x": tuple(range(points))})
    store = open_store(url, Path("unused"))
    study = open_study(store, "bench-vitlib", {"bench": True}, space)
    ran = []
    folders = Path(url.removeprefix("sqlite:///")).parent / "folders"  # shared, as runs/ is
    while (claim := _next_trial(study, store, folders, space)) != "done":
        if claim is None:
            time.sleep(0.05)
            continue
        trial_id, _, lock = claim
        with lock:
            trial = optuna.Trial(study, trial_id)
            ran.append(trial.suggest_categorical("x", list(space.grid["x"])))
            time.sleep(seconds)
            study.tell(trial, 0.0)
    return ran


def measure(way: str, url: str, *, workers: int, points: int, seconds: float) -> dict[str, Any]:
    """One sweep of `points` by `workers` processes started together: what each point got."""
    if way != "vitlib":
        study = optuna.create_study(study_name="bench", storage=_storage(url))
        if way == "enqueued":
            for x in range(points):
                study.enqueue_trial({"x": x})
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(way, url, points, seconds, start, out))
             for _ in range(workers)]  # fmt: skip
    for p in procs:
        p.start()
    time.sleep(3)  # every worker imported and waiting
    began = time.perf_counter()
    start.set()
    ran = [x for _ in procs for x in out.get(timeout=600)]
    for p in procs:
        p.join()
    counts = Counter(ran)
    return {
        "trials": len(ran),
        "duplicated_points": sum(1 for c in counts.values() if c > 1),
        "missing_points": points - len(counts),
        "seconds": time.perf_counter() - began,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for storage in ("sqlite", "journal"):
        for way in WAYS:
            totals = Counter()
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    url = (
                        f"sqlite:///{tmp}/bench.db"
                        if storage == "sqlite"
                        else f"{tmp}/bench.journal"
                    )
                    got = measure(way, url, workers=args.workers, points=args.points,
                                  seconds=args.seconds)  # fmt: skip
                totals.update(got)
                print(storage, way, got, flush=True)
            rows.append({"storage": storage, "way": way, "sweeps": args.repeats,
                         "points": args.points, "workers": args.workers,
                         **{k: round(v, 1) if k == "seconds" else v for k, v in totals.items()}})  # fmt: skip
    print(format_table(rows, list(rows[0])))
    result = {"rows": rows, "settings": vars(args)}
    write_result("sweep", result)
    return result


if __name__ == "__main__":
    main()
