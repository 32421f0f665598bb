"""Training state that makes a killed run end as one never killed.

A checkpoint holds the weights, optimiser, scheduler, history and every random generator's
state (torch, CUDA, Python, NumPy); each epoch's shuffle comes from its own generator seeded by
(seed, epoch) alone; a fingerprint of the fixed part a checkpoint does not hold (a frozen
backbone, a teacher) and a record of what the run trains on (`run_inputs`: the data, the model's
settings, the weights file) stop a resume from mixing two runs. Checkpoints are written
atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitlib.config import TrainConfig
from vitlib.data import data_provenance
from vitlib.errors import ExperimentError
from vitlib.files import atomic_path

__all__ = [
    "TrainingRun",
    "backbone_fingerprint",
    "epoch_generator",
    "input_differences",
    "read_training_state",
    "rng_state",
    "run_inputs",
    "save_checkpoint",
    "set_rng_state",
]

log = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """What one fit optimises with and where it checkpoints: the state a resume restores."""

    net: nn.Module
    params: list[Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    tc: TrainConfig
    ckpt: Path
    settings: str  # the config key of `tc`, named in messages
    seed: int
    backbone: str | None  # backbone_fingerprint of the fixed part (frozen backbone, teacher)
    history: list[dict[str, float]]
    inputs: dict[str, Any] | None = None  # run_inputs of the model and data: what it trains on

    def save(self, epoch: int) -> None:
        """Checkpoint everything a resumed run needs to continue exactly from here."""
        state = {
            "epoch": epoch,
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "train_cfg": dataclasses.asdict(self.tc),
            "seed": self.seed,
            "backbone": self.backbone,
            "inputs": self.inputs,
        }
        save_checkpoint(self.ckpt, state)

    def restore(self) -> int:
        """Load the checkpoint if it exists and fits these settings; the epochs already done."""
        if not self.ckpt.exists():
            log.info("%s: no checkpoint at %s; starting from epoch 1", self.settings, self.ckpt)
            return 0
        state = read_training_state(self.ckpt)
        self._check(state)
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.history[:] = state["history"]
        log.info(
            "%s: resuming after epoch %d of %d from %s",
            self.settings, state["epoch"], self.tc.epochs, self.ckpt,
        )  # fmt: skip
        return state["epoch"]

    def _check(self, state: Mapping[str, Any]) -> None:
        """ExperimentError unless `state` was written by a run of these settings, seed, data,
        model settings, weights and fixed part."""
        again = "to start over, rerun without --resume or delete that file"
        if state["train_cfg"] != dataclasses.asdict(self.tc) or state["seed"] != self.seed:
            raise ExperimentError(
                f"{self.ckpt} was written with other settings "
                f"({state['train_cfg']}, seed {state['seed']}); {again}"
            )
        if self.inputs is not None:
            changed = input_differences(state.get("inputs"), self.inputs)
            if changed:
                raise ExperimentError(
                    f"{self.ckpt} was written by a run trained on other inputs: "
                    f"{'; '.join(changed)}. Resuming would mix two runs; {again}, or pass "
                    "--set run_root=<another folder> to keep both"
                )
        if state["backbone"] != self.backbone:
            raise ExperimentError(
                f"{self.ckpt} was written for another frozen backbone or teacher (other "
                f"weights); {again}"
            )


def read_training_state(path: Path) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`, read without running code from it; an
    ExperimentError saying what to do when it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a checkpoint, or objects beyond plain data
        text = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
        raise ExperimentError(
            f"cannot read the training checkpoint {path} ({why}); to start over, rerun "
            "without --resume or delete that file"
        ) from None


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffle of epoch `epoch` depends on (seed, epoch) only, so a resumed run repeats it."""
    return torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    )


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def backbone_fingerprint(model: nn.Module) -> str:
    """sha256 of every parameter and buffer but the classifier heads' (`is_head_key` of a vitlib
    ViT; a model without it, e.g. a CNN teacher, is hashed whole): identifies a frozen part."""
    is_head = getattr(model, "is_head_key", lambda key: False)
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not is_head(name):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_inputs(model: nn.Module, datasets: Mapping[str, Any]) -> dict[str, Any]:
    """What a run trains on, for run.json and the checkpoint: {"data": sha256 of the data,
    "model": the model's settings, "weights": sha256 of the weights file it started from (None
    for a random init)}, and where data and weights came from ("data_source",
    "weights_source"), for messages.

    The data's sha256 is its manifest's (`data_provenance`: the files, classes and splits); data
    without a manifest (made in memory) is hashed from its paths, labels, classes and info. The
    model's settings are a vitlib ViT's `arch_config`; another model (a CNN teacher) is named by
    its class and the names and shapes of its tensors."""
    provenance = data_provenance(datasets)
    weights = getattr(model, "provenance", None) or {}
    return {
        "data": provenance.get("manifest_sha256") or _hash_datasets(datasets),
        "data_source": str(provenance.get("source", "in memory")),
        "model": _model_settings(model),
        "weights": weights.get("sha256"),
        "weights_source": str(weights.get("weights", "unknown")),
    }


def input_differences(before: Mapping[str, Any] | None, now: Mapping[str, Any]) -> list[str]:
    """What differs between two `run_inputs` records, in words (empty when nothing does)."""
    if before is None:
        return ["the data, model settings and weights are not recorded in it (an older vitlib)"]
    out = []
    if before.get("data") != now["data"]:
        out.append(
            f"the data differs ({before.get('data_source')}, sha256 {_short(before.get('data'))}"
            f" then; {now['data_source']}, sha256 {_short(now['data'])} now)"
        )
    if before.get("model") != now["model"]:
        old, new = before.get("model") or {}, now["model"]
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        changes = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:6])
        out.append(f"the model settings differ ({changes})")
    if before.get("weights") != now["weights"]:
        out.append(
            f"the weights differ ({before.get('weights_source')}, sha256 "
            f"{_short(before.get('weights'))} then; {now['weights_source']}, sha256 "
            f"{_short(now['weights'])} now)"
        )
    return out


def _model_settings(model: nn.Module) -> dict[str, Any]:
    arch = getattr(model, "arch_config", None)
    if arch is not None:
        return json.loads(json.dumps(arch, default=str))  # tuples as lists, as a reload gives
    shapes = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}", "tensors": digest}


def _hash_datasets(datasets: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    for split in sorted(datasets):
        ds = datasets[split]
        digest.update(json.dumps([split, list(ds.classes), ds.info], default=str).encode())
        for path, label in zip(ds.paths, np.asarray(ds.labels).tolist(), strict=True):
            digest.update(f"{path}\t{label}\n".encode())
    return digest.hexdigest()


def _short(sha: str | None) -> str:
    return "none" if sha is None else f"{sha[:12]}..."


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
