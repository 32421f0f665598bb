"""Orchestration: which experiment to run, on what, checked before any heavy work.

    cfg = get_config("smoke")
    metrics = run_experiment(cfg, "probe")        # -> runs/smoke/probe/metrics.json, ...
    model = ensure_trained(cfg, "finetune")       # a finished run's model, trained if allowed

`run_experiment` checks the inputs (`check_inputs`: data folder, weights, the probe a fine-tune
starts from), builds the model (`vitlib.checkpoints.build_model`) and the splits
(`vitlib.data.load_splits`), trains (`vitlib.train`) and writes the run (`vitlib.runs`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vitlib.checkpoints import build_model, resolve_weights
from vitlib.config import Config
from vitlib.data import load_splits
from vitlib.errors import CheckpointError, DataError, ExperimentError
from vitlib.fetch import fetch_missing
from vitlib.manifest import GET_DATA
from vitlib.model import VisionTransformer
from vitlib.runs import METRICS, MODEL_WEIGHTS, RunDir, load_trained, lock_run, write_run
from vitlib.train import StepHook, fine_tune, linear_probe, resolve_device, zero_shot

__all__ = [
    "EXPERIMENTS",
    "ExperimentError",
    "check_inputs",
    "ensure_experiment",
    "ensure_trained",
    "experiment_model",
    "run_experiment",
]

log = logging.getLogger(__name__)

EXPERIMENTS = ("zero-shot", "probe", "finetune")


def run_experiment(
    cfg: Config,
    experiment: str,
    *,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    datasets: Mapping[str, Any] | None = None,
    model: VisionTransformer | None = None,
    on_step: StepHook | None = None,
) -> dict[str, Any]:
    """Run one experiment of profile `cfg` and write its outputs under cfg.run_dir/<experiment>.

    `experiment` is "zero-shot", "probe" or "finetune". Builds the model from cfg.model and
    the splits with `vitlib.data.load_splits` unless `model` / `datasets` ({"train", "val",
    "test"}) are given. Returns the metrics (also written to metrics.json). Inputs are checked
    before any heavy work: missing data or weights fail at once with what to download or pass,
    and a run already writing into the same folder (`vitlib.runs.lock_run`) is named.
    With `resume`, a checkpoint of other settings, data, model settings or weights is refused.
    """
    started = time.perf_counter()
    check_inputs(
        cfg, experiment, need_data=datasets is None, need_weights=model is None, progress=progress
    )
    run_dir = cfg.run_dir / experiment
    with lock_run(run_dir):
        if model is None:
            model = experiment_model(cfg, experiment)
        if datasets is None:
            datasets = load_splits(cfg.data, model.pretrained_cfg, seed=cfg.seed, progress=progress)
        return _run(cfg, experiment, model, datasets, run_dir, started=started, resume=resume,
                    progress=progress, device=resolve_device(device), on_step=on_step)  # fmt: skip


def _run(
    cfg: Config,
    experiment: str,
    model: VisionTransformer,
    datasets: Mapping[str, Any],
    run_dir: Path,
    *,
    started: float,
    resume: bool,
    progress: bool,
    device: torch.device,
    on_step: StepHook | None,
) -> dict[str, Any]:
    """Train (or evaluate) and write the run: `run_experiment` once its folder is locked."""
    train = dict(run_dir=run_dir, seed=cfg.seed, resume=resume, progress=progress, device=device,
                 on_step=on_step)  # fmt: skip
    if experiment == "zero-shot":
        result = zero_shot(
            model, datasets, batch_size=cfg.probe.eval_batch_size, device=device, progress=progress
        )
    elif experiment == "probe":
        result = linear_probe(model, datasets, cfg.probe, **train)
    else:
        if cfg.finetune.init_from_probe:
            _load_probe_head(model, cfg.run_dir / "probe")
        result = fine_tune(model, datasets, cfg.finetune, **train)
    return write_run(
        cfg, run_dir, model, result, datasets, experiment=experiment, arch=cfg.model.arch,
        device=device, started=started, resumed=resume,
    )  # fmt: skip


def check_inputs(
    cfg: Config,
    experiment: str,
    *,
    need_data: bool = True,
    need_weights: bool = True,
    progress: bool = True,
) -> None:
    """Fail in seconds, before any heavy work, when an input is missing: the experiment name,
    the data folder (downloaded first when the profile names its source, downloads are allowed
    and the network is there: `vitlib.fetch`), the weights (a missing file, or a timm tag neither cached nor
    downloadable) and, for a fine-tune from the probe's head, the probe's model."""
    if experiment not in EXPERIMENTS:
        raise ExperimentError(f"unknown experiment {experiment!r}; expected one of {EXPERIMENTS}")
    if need_data and cfg.data.source != "synthetic":
        root = cfg.data.root
        if root and not Path(root).is_dir() and cfg.data.download:
            try:
                fetch_missing(cfg.data, progress=progress)  # its own source, when online
            except DataError as exc:
                raise ExperimentError(f"{exc} (profile {cfg.profile!r})") from None
        if not root or not Path(root).is_dir():
            raise ExperimentError(
                f"data folder {root!r} not found (profile {cfg.profile!r}). The study used "
                "Kaggle's Dogs vs Cats train.zip (https://www.kaggle.com/c/dogs-vs-cats/data, "
                f"a login is needed): unzip it to {root or 'a folder'}. {GET_DATA}"
            )
    if need_weights and cfg.model.pretrained:
        try:
            resolve_weights(cfg.model.pretrained, cfg.model.arch, download=False)
        except CheckpointError as exc:
            raise ExperimentError(str(exc)) from None
    if experiment == "finetune" and cfg.finetune.init_from_probe:
        probe = cfg.run_dir / "probe" / MODEL_WEIGHTS
        if not probe.is_file():
            raise ExperimentError(
                f"finetune.init_from_probe is set but {probe} does not exist; run the probe "
                f"first: python -m vitlib train --profile {cfg.profile} --experiment probe"
            )


def experiment_model(cfg: Config, experiment: str = "probe") -> VisionTransformer:
    """The model an experiment starts from: cfg.model seeded by cfg.seed; zero-shot keeps a
    pretrained checkpoint's own (ImageNet) head."""
    return build_model(cfg.model, seed=cfg.seed, keep_head=experiment == "zero-shot")


def _load_probe_head(model: VisionTransformer, probe_dir: Path) -> None:
    from safetensors.torch import load_file

    sd = load_file(probe_dir / MODEL_WEIGHTS)
    model.head.load_state_dict({"weight": sd["head.weight"], "bias": sd["head.bias"]})
    log.info("finetune: head initialised from %s", probe_dir / MODEL_WEIGHTS)


def ensure_experiment(cfg: Config, experiment: str, *, progress: bool = True) -> dict[str, Any]:
    """The metrics of a finished run of `experiment`; when there is none, run it if the profile
    allows (cfg.build_missing, e.g. smoke), else raise ExperimentError saying what to run."""
    run = RunDir(cfg.run_dir / experiment)
    metrics_path = run / METRICS
    if run.finished:
        return run.read_metrics()
    if not cfg.build_missing:
        raise ExperimentError(
            f"{metrics_path} not found: the {experiment} run of profile {cfg.profile!r} has not "
            f"been done. Run its notebook first, or: python -m vitlib train --profile "
            f"{cfg.profile} --experiment {experiment}"
        )
    log.warning("%s not found: running %s now (profile %s)", metrics_path, experiment, cfg.profile)
    return run_experiment(cfg, experiment, progress=progress)


def ensure_trained(cfg: Config, experiment: str, *, progress: bool = True) -> VisionTransformer:
    """The model a finished `experiment` run saved, trained first where `ensure_experiment`
    allows it."""
    ensure_experiment(cfg, experiment, progress=progress)
    return load_trained(cfg.run_dir / experiment)
