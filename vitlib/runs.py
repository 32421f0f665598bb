"""The run-folder format: what a finished experiment leaves in runs/<profile>/<experiment>/.

    run = RunDir("runs/smoke/finetune")
    run.finished                 # metrics.json is there (it is written last)
    run.read_metrics()           # test accuracy, history, confusion matrix, classes, ...
    model = run.load_model()     # the trained ViT (model.safetensors + model.json)

Files, each written atomically:

    metrics.json        accuracies and losses, per-epoch history, confusion matrix, classes
    run.json            settings, versions, machine, weights' and data's provenance
    history.csv         the per-epoch history (trained runs)
    predictions.csv     every test image: path, label, prediction, class probabilities
    misclassified.csv   the wrong ones
    model.safetensors   the trained weights, and model.json to rebuild the model
    checkpoint.pt       the training state (vitlib.train), for --resume
    run.lock            while a run writes here (`lock_run`): who, where, since when

Experiments, variants, the report and the benchmarks read and write runs through this module.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitlib import distributed
from vitlib.config import Config, to_dict
from vitlib.data import data_provenance
from vitlib.errors import ExperimentError
from vitlib.files import atomic_path, write_csv, write_json
from vitlib.model import VisionTransformer
from vitlib.resume import run_inputs

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = [
    "HISTORY_KEYS",
    "LOCK",
    "METRICS",
    "RunDir",
    "load_trained",
    "lock_run",
    "machine_info",
    "read_misclassified",
    "save_trained",
    "versions",
    "write_run",
]

log = logging.getLogger(__name__)

METRICS, RUN_INFO = "metrics.json", "run.json"
HISTORY, PREDICTIONS, MISCLASSIFIED = "history.csv", "predictions.csv", "misclassified.csv"
MODEL_WEIGHTS, MODEL_JSON = "model.safetensors", "model.json"
LOCK = "run.lock"
HISTORY_KEYS = (
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "seconds",
)


class RunDir:
    """One run's folder and the files in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def finished(self) -> bool:
        """Whether the run finished: metrics.json is written last."""
        return (self.path / METRICS).is_file()

    def read_metrics(self) -> dict[str, Any]:
        """metrics.json; ExperimentError when the run has not finished."""
        return self._read(METRICS)

    def read_info(self) -> dict[str, Any] | None:
        """run.json (settings, provenance), or None if the run never finished once."""
        path = self.path / RUN_INFO
        return json.loads(path.read_text()) if path.is_file() else None

    def load_model(self) -> VisionTransformer:
        return load_trained(self.path)

    def _read(self, name: str) -> dict[str, Any]:
        path = self.path / name
        if not path.is_file():
            raise ExperimentError(
                f"{path} not found: the run in {self.path} has not finished; run it first "
                "(its notebook, or python -m vitlib train --profile <profile> --experiment ...)"
            )
        return json.loads(path.read_text())


def write_run(
    cfg: Config,
    run_dir: str | Path,
    model: nn.Module,
    result: Mapping[str, Any],
    datasets: Mapping[str, Any],
    *,
    experiment: str,
    arch: str,
    device: str | torch.device | None,
    started: float,
    resumed: bool = False,
) -> dict[str, Any]:
    """Write a finished run's outputs under `run_dir` and return its metrics.

    `result` is what `zero_shot` / `linear_probe` / `fine_tune` returned; `started` the
    `time.perf_counter()` at its start. A trained vitlib model is saved (`save_trained`) with
    the dataset's classes; metrics.json is written last, so its presence means the run finished.
    Among several processes (`vitlib.distributed`) rank 0 alone writes; all return the metrics.
    """
    run_dir = Path(run_dir)
    classes = tuple(datasets["test"].classes)
    writes = distributed.is_main()
    if writes and result.get("trained") and isinstance(model, VisionTransformer):
        save_trained(
            model,
            run_dir,
            classes=classes,
            extra={"arch": arch, "experiment": experiment, "profile": cfg.profile},
        )
    metrics = _summarise(result, datasets, experiment=experiment, profile=cfg.profile)
    metrics["minutes"] = (time.perf_counter() - started) / 60  # this call, data loading included
    metrics["train_minutes"] = sum(h["seconds"] for h in metrics["history"]) / 60  # all sessions
    run_info = {
        "experiment": experiment,
        "profile": cfg.profile,
        "config": to_dict(cfg),
        "versions": versions(),
        "machine": machine_info(device),
        "world_size": distributed.world_size(),  # processes that trained it, this session
        "weights": dict(getattr(model, "provenance", {})),
        "data": data_provenance(datasets),
        "fingerprint": run_inputs(model, datasets),  # what --resume compares
        "resumed": bool(resumed and result.get("resumed_from")),
        "resumed_from_epoch": result.get("resumed_from"),
        "minutes": metrics["minutes"],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if not writes:
        return metrics
    _write_outputs(run_dir, metrics, result, datasets["test"], run_info)
    log.info(
        "%s/%s: test accuracy %s in %.1f min -> %s",
        cfg.profile,
        experiment,
        "n/a" if metrics.get("test_accuracy") is None else f"{metrics['test_accuracy']:.4f}",
        metrics["minutes"],
        run_dir,
    )
    return metrics


@contextlib.contextmanager
def lock_run(run_dir: str | Path) -> Iterator[Path]:
    """Hold run_dir/run.lock while the block runs, so two runs never write one folder.

    A second run into `run_dir` meanwhile fails at once with an ExperimentError naming the first
    (pid, host, start time, command). The lock is an flock, which the system drops when its
    process ends, however it ends (SIGKILL included), so a lock file left by a process that is
    gone is taken over with a warning. The file is removed when the block ends. Where files
    cannot be locked (Windows, some network file systems) the run goes on with a warning.
    Among several processes, rank 0 holds the lock for all (the others write nothing)."""
    path = Path(run_dir) / LOCK
    if not distributed.is_main():
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path)
    try:
        yield path
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # while still locked: a waiting run then sees a new file
            os.close(fd)


def _acquire(path: Path) -> int | None:
    """An open, flock-ed descriptor of `path` holding this process's details."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is None:
                raise OSError("file locks need fcntl, which this system lacks")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ExperimentError(_busy_message(path, holder)) from None
        except OSError as exc:
            os.close(fd)
            log.warning("cannot lock %s (%s); make sure no other run writes there", path, exc)
            return None
        if _is_file_at(fd, path):
            break
        os.close(fd)  # the last holder removed the file between our open and lock: again
    previous = _read_holder(fd)
    if previous:
        log.warning(
            "%s: taking over the lock of pid %s on %s (started %s), which ended without "
            "releasing it",
            path, previous.get("pid"), previous.get("host"), previous.get("started"),
        )  # fmt: skip
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    return fd


def _read_holder(fd: int) -> dict[str, Any]:
    """The details a lock file holds ({} when empty or unreadable)."""
    try:
        holder = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _busy_message(path: Path, holder: Mapping[str, Any]) -> str:
    who = (
        f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
        f" ({holder.get('command')})"
        if holder
        else "a process that is starting now"
    )
    return (
        f"{path.parent} is in use by another run: {who}. Wait for it to finish or stop it, or "
        "pass --set run_root=<another folder> to run beside it"
    )


def _summarise(
    result: Mapping[str, Any], datasets: Mapping[str, Any], *, experiment: str, profile: str
) -> dict[str, Any]:
    """The JSON-ready metrics of one run (metrics.json)."""
    classes = list(datasets["test"].classes)
    metrics: dict[str, Any] = {
        "experiment": experiment,
        "profile": profile,
        "applicable": result.get("applicable", True),
        "classes": classes,
        "n": {s: len(datasets[s]) for s in ("train", "val", "test") if s in datasets},
        "epochs": len(result.get("history", [])),
        "history": result.get("history", []),
    }
    if not metrics["applicable"]:
        metrics["reason"] = result["reason"]
        return metrics
    for split in ("val", "test"):
        metrics[f"{split}_accuracy"] = result[split]["accuracy"]
        metrics[f"{split}_loss"] = result[split]["loss"]
        if "mass" in result[split]:
            metrics[f"{split}_imagenet_mass"] = result[split]["mass"]
    test = result["test"]
    pred = test["probs"].argmax(1)
    cm = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(cm, (test["labels"], pred), 1)
    metrics["confusion_matrix"] = cm.tolist()  # rows: true class, columns: predicted
    metrics["n_misclassified"] = int((pred != test["labels"]).sum())
    return metrics


def _prediction_rows(test: Mapping[str, Any], dataset: Any) -> list[dict[str, Any]]:
    classes = dataset.classes
    pred = test["probs"].argmax(1)
    return [
        {
            "index": i,
            "path": str(dataset.paths[i]),
            "label": classes[int(test["labels"][i])],
            "pred": classes[int(pred[i])],
            **{f"p_{c}": round(float(test["probs"][i, k]), 6) for k, c in enumerate(classes)},
        }
        for i in range(len(pred))
    ]


def _write_outputs(
    run_dir: Path,
    metrics: Mapping[str, Any],
    result: Mapping[str, Any],
    test_dataset: Any,
    run_info: Mapping[str, Any],
) -> None:
    write_json(run_dir / RUN_INFO, run_info)
    if result.get("trained"):
        write_csv(run_dir / HISTORY, metrics["history"], HISTORY_KEYS)
    if metrics["applicable"]:
        rows = _prediction_rows(result["test"], test_dataset)
        keys = ("index", "path", "label", "pred", *(f"p_{c}" for c in test_dataset.classes))
        write_csv(run_dir / PREDICTIONS, rows, keys)
        write_csv(run_dir / MISCLASSIFIED, [r for r in rows if r["label"] != r["pred"]], keys)
    write_json(run_dir / METRICS, metrics)  # last: its presence means the run finished


def save_trained(
    model: VisionTransformer,
    run_dir: str | Path,
    *,
    classes: tuple[str, ...] | list[str],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write run_dir/model.safetensors and model.json (sizes, classes, preprocessing, weights'
    provenance) so that `load_trained(run_dir)` rebuilds the model."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / MODEL_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(
        run_dir / MODEL_JSON,
        {
            "arch_config": model.arch_config,
            "classes": list(classes),
            "pretrained_cfg": model.pretrained_cfg,
            "provenance": dict(getattr(model, "provenance", {})),
            **(extra or {}),
        },
    )


def load_trained(run_dir: str | Path) -> VisionTransformer:
    """The model a probe or fine-tune saved in run_dir (e.g. runs/full/finetune), on the CPU,
    in eval mode, with its `pretrained_cfg`, `provenance` and `classes`."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    if not (run_dir / MODEL_JSON).is_file():
        raise ExperimentError(
            f"no trained model in {run_dir} ({MODEL_JSON} missing); run the experiment first, "
            "e.g. python -m vitlib train --profile <profile> --experiment finetune"
        )
    meta = json.loads((run_dir / MODEL_JSON).read_text())
    model = VisionTransformer(**meta["arch_config"])
    model.load_state_dict(load_file(run_dir / MODEL_WEIGHTS))
    model.pretrained_cfg = meta["pretrained_cfg"]
    model.provenance = {**meta["provenance"], "trained": str(run_dir)}
    model.classes = tuple(meta["classes"])
    return model.eval()


def read_misclassified(run_dir: str | Path, *, limit: int | None = None) -> dict[str, Any]:
    """The misclassified test images of a run (its misclassified.csv), most confident mistake
    first: {"index": (n,) positions in the test split, "true": (n,), "predicted": (n,),
    "probabilities": (n, K), "classes": the K class names, in label order}."""
    run_dir = Path(run_dir)
    classes = RunDir(run_dir).read_metrics()["classes"]
    with open(run_dir / MISCLASSIFIED, newline="") as f:
        rows = list(csv.DictReader(f))
    probabilities = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows]).reshape(
        -1, len(classes)
    )
    order = np.argsort(-probabilities.max(axis=1), kind="stable")[:limit]
    return {
        "index": np.array([int(rows[i]["index"]) for i in order], dtype=np.int64),
        "true": np.array([classes.index(rows[i]["label"]) for i in order], dtype=np.int64),
        "predicted": np.array([classes.index(rows[i]["pred"]) for i in order], dtype=np.int64),
        "probabilities": probabilities[order],
        "classes": tuple(classes),
    }


def versions() -> dict[str, str]:
    """Library versions for run metadata: python, torch, timm, numpy, vitlib."""
    import timm

    import vitlib

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "vitlib": vitlib.__version__,
    }


def machine_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """Where a run or benchmark ran: platform, CPU count, torch threads, accelerator (device
    None: CUDA if there is one, else the CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": sys.version.split()[0],
    }
