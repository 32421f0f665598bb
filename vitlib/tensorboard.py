"""TensorBoard event files beside every trained run's own files, when tensorboard is installed.

    pip install -e ".[tensorboard]"
    tensorboard --logdir runs/          # every run, sweep trials included, compared live

Event files go to tensorboard/<experiment>/ beside the run folder (`events_dir`: runs/smoke/
finetune -> runs/smoke/tensorboard/finetune), so the run folder holds only its own files.
`vitlib.train.fit` calls `log_step` after each optimisation step (the training loss and the
learning rate) and `log_epoch` after each epoch's checkpoint (train and validation loss and
accuracy, the learning rate), both on the global step (1 = after the first batch). The run
folder's own files (history.csv, metrics.json) stay the source of truth: without tensorboard
(an optional extra) nothing is written, and nothing here ever stops a run.

A resumed run continues the curve: its writer starts with `purge_step` at its first step, so
the steps logged after the checkpoint it resumes from (by the killed session) are dropped.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitlib import distributed

__all__ = ["EVENTS", "available", "close", "events_dir", "log_epoch", "log_step"]

log = logging.getLogger(__name__)

EVENTS = "tensorboard"  # the folder of event files, beside the run folders
# Per-epoch history keys (vitlib.runs.HISTORY_KEYS) and the tags they get.
EPOCH_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
    "lr": "lr/epoch",
}
STEP_TAGS = {"loss": "loss/train_step", "lr": "lr/step"}

_writers: dict[Path, tuple[Any, int]] = {}  # run folder -> (SummaryWriter, last step logged)


@functools.cache
def _writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        log.debug("tensorboard is not installed: no event files")
        return None
    return SummaryWriter


def available() -> bool:
    """Whether event files are written (tensorboard is installed)."""
    return _writer_class() is not None


def events_dir(run_dir: str | Path) -> Path:
    """Where the event files of the run in `run_dir` go: <parent>/tensorboard/<run's name>."""
    run_dir = Path(run_dir)
    return run_dir.parent / EVENTS / run_dir.name


def _writer(run_dir: Path, step: int, *, epoch: bool = False) -> Any:
    """The open writer of `run_dir`, opened at `step` (purging later steps of a killed session)
    when there is none or the steps went back (the run restarted in this process); an epoch's
    row shares the step of its last batch."""
    writer, last = _writers.get(run_dir, (None, 0))
    if writer is not None and (step < last or step == last and not epoch):
        writer.close()
        writer = None
    if writer is None:
        writer = _writer_class()(log_dir=str(events_dir(run_dir)), purge_step=step)
    _writers[run_dir] = (writer, step)
    return writer


def log_step(run: Any, step: int, loss: float) -> None:
    """Training loss and learning rate of global step `step` (from 1) of a `fit` run
    (`vitlib.resume.TrainingRun`: its checkpoint's folder, its optimiser)."""
    if not distributed.is_main() or not available():
        return
    writer = _writer(Path(run.ckpt).parent, step)
    writer.add_scalar(STEP_TAGS["loss"], loss, step)
    writer.add_scalar(STEP_TAGS["lr"], run.optimizer.param_groups[0]["lr"], step)


def log_epoch(run: Any, row: Mapping[str, float], step: int) -> None:
    """One history row (`vitlib.train.fit`: epoch, losses, accuracies, lr) at global step
    `step`, flushed to disk; the run's last epoch closes its writer."""
    if not distributed.is_main() or not available():
        return
    run_dir = Path(run.ckpt).parent
    writer = _writer(run_dir, step, epoch=True)
    for key, tag in EPOCH_TAGS.items():
        writer.add_scalar(tag, row[key], step)
    writer.flush()
    if row["epoch"] >= run.tc.epochs:
        close(run_dir)


def close(run_dir: str | Path | None = None) -> None:
    """Close the writer of `run_dir` (every writer with None)."""
    for path in [Path(run_dir)] if run_dir is not None else list(_writers):
        writer, _ = _writers.pop(path, (None, 0))
        if writer is not None:
            writer.close()
