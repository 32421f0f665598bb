"""Training state that makes a killed run end as one never killed.

A checkpoint holds the weights, optimiser, scheduler, history and every random generator's
state (torch, CUDA, Python, NumPy); each epoch's shuffle comes from its own generator seeded by
(seed, epoch) alone; a fingerprint of the fixed part a checkpoint does not hold (a frozen
backbone, a teacher) stops a resume from mixing two of them. Checkpoints are written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from vitlib.errors import ExperimentError
from vitlib.files import atomic_path

__all__ = [
    "TrainingRun",
    "backbone_fingerprint",
    "epoch_generator",
    "rng_state",
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
        }
        save_checkpoint(self.ckpt, state)

    def restore(self) -> int:
        """Load the checkpoint if it exists and fits these settings; the epochs already done."""
        if not self.ckpt.exists():
            log.info("%s: no checkpoint at %s; starting from epoch 1", self.settings, self.ckpt)
            return 0
        state = torch.load(self.ckpt, map_location="cpu", weights_only=True)
        if state["train_cfg"] != dataclasses.asdict(self.tc) or state["seed"] != self.seed:
            raise ExperimentError(
                f"{self.ckpt} was written with other settings "
                f"({state['train_cfg']}, seed {state['seed']}); to start over, rerun without "
                "--resume or delete that file"
            )
        if state["backbone"] != self.backbone:
            raise ExperimentError(
                f"{self.ckpt} was written for another frozen backbone or teacher (other "
                "weights); to start over, rerun without --resume or delete that file"
            )
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


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
