"""Training only: zero-shot, the frozen-backbone probe, the fine-tune, one fit loop, evaluation.

Report section 3.2: the "before fine-tune" run trains a new 2-class head on a frozen ViT-B/16
(`linear_probe`), the fine-tune trains every parameter (`fine_tune`); both Adam, lr 1e-4,
batch 16, cosine decay, 5 epochs (`TrainConfig`). `zero_shot` is a baseline the study did not
have: the ImageNet-1k head's cat and dog classes, summed, with no training at all.

    result = fine_tune(model, datasets, cfg.finetune, run_dir="runs/smoke/finetune")

`fit` is the one optimisation loop; the loss is chosen once (cross-entropy, or DeiT's hard
distillation from a teacher). Every epoch ends with an atomic checkpoint (weights, optimizer,
scheduler, RNG, history), so a run killed at any point continues with `resume=True` and ends
with the metrics of a run never killed: each epoch's shuffle comes from its own generator
seeded by (seed, epoch). Batches come from `ImageDataset.batch`; under torchrun the processes
share each one and rank 0 alone writes (`vitlib.distributed`). Where results go is
`vitlib.runs`; which experiment to run, `vitlib.experiments`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitlib import distributed, tensorboard
from vitlib.config import TrainConfig
from vitlib.errors import ExperimentError, NonFiniteLossError
from vitlib.files import atomic_path
from vitlib.model import VisionTransformer, using_mode
from vitlib.recipe import (
    LossFn,
    distillation_loss,
    make_optimizer,
    make_scheduler,
    training_loss,
)
from vitlib.resume import TrainingRun, backbone_fingerprint, epoch_generator, run_inputs

__all__ = [
    "IMAGENET_CAT_CLASSES",
    "IMAGENET_DOG_CLASSES",
    "IMAGENET_GROUPS",
    "evaluate",
    "extract_features",
    "fine_tune",
    "fit",
    "linear_probe",
    "resolve_device",
    "zero_shot",
]

log = logging.getLogger(__name__)

# ImageNet-1k class indices: 281-285 tabby, tiger cat, Persian, Siamese, Egyptian cat;
# 151-268 the dog breeds, Chihuahua to Mexican hairless.
IMAGENET_CAT_CLASSES = tuple(range(281, 286))
IMAGENET_DOG_CLASSES = tuple(range(151, 269))
IMAGENET_GROUPS = {"cat": IMAGENET_CAT_CLASSES, "dog": IMAGENET_DOG_CLASSES}
CHECKPOINT = "checkpoint.pt"
FEATURES = "features.pt"

# on_step(epoch, step, net) runs before every optimisation step (epoch and step from 0); a hook
# for progress reporting, tests and fault injection.
StepHook = Callable[[int, int, nn.Module], None]


# --------------------------------------------------------------------------------------------
# The experiments
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def zero_shot(
    model: nn.Module,
    datasets: Mapping[str, Any],
    *,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Cat vs dog with no training: sum the ImageNet-1k head's cat and dog probabilities.

    p(cat) = sum of softmax over classes 281-285, p(dog) = over 151-268 (`IMAGENET_GROUPS`, in
    the dataset's class order); the prediction is the larger, and the two are renormalised to
    sum to 1. Returns {"applicable": False, "reason"} when the model has no trained 1000-class
    head (e.g. a random-init or 2-class model) or the dataset's classes have no ImageNet group.
    Otherwise "val"/"test": {"probs" (n, 2), "labels" (n,), "loss", "accuracy", "mass"}, where
    mass is the mean share of the 1000-way probability that fell on a cat or dog class.
    """
    reason = _zero_shot_unavailable(model, datasets["test"].classes)
    if reason:
        return {"applicable": False, "reason": reason, "trained": False}
    device = resolve_device(device)
    model.to(device).eval()
    groups = [list(IMAGENET_GROUPS[c]) for c in datasets["test"].classes]
    out: dict[str, Any] = {"applicable": True, "trained": False}
    for split in ("val", "test"):
        ds = datasets[split]
        probs, mass = [], []
        for idx in _batches(len(ds), batch_size, desc=f"zero-shot {split}", progress=progress):
            with autocast(device):
                p = model(ds.batch(idx, device)).float().softmax(dim=-1)  # (B, 1000)
            grouped = torch.stack([p[:, g].sum(1) for g in groups], dim=1)  # (B, K)
            mass.append(grouped.sum(1).cpu())
            probs.append((grouped / grouped.sum(1, keepdim=True)).cpu())
        out[split] = _scores(torch.cat(probs), _labels(ds))
        out[split]["mass"] = float(torch.cat(mass).mean())
    return out


def _zero_shot_unavailable(model: nn.Module, classes: tuple[str, ...]) -> str | None:
    """Why zero-shot cannot run (no ImageNet head, classes without a group), or None."""
    num_classes = getattr(model, "num_classes", None)
    weights = getattr(model, "provenance", {}).get("weights")
    if num_classes != 1000 or weights == "random init":
        why = (
            f"its head has {num_classes} outputs, not ImageNet-1k's 1000"
            if num_classes != 1000
            else "its weights are a random init"
        )
        return f"zero-shot needs a pretrained ImageNet-1k head; this model has none ({why})"
    unknown = [c for c in classes if c not in IMAGENET_GROUPS]
    if unknown:
        return (
            f"zero-shot maps only the classes {sorted(IMAGENET_GROUPS)} to ImageNet-1k classes; "
            f"this data set also has {unknown}"
        )
    return None


def linear_probe(
    model: VisionTransformer,
    datasets: Mapping[str, Any],
    train_cfg: TrainConfig,
    *,
    run_dir: str | Path,
    seed: int = 0,
    resume: bool = False,
    cached: bool = True,
    progress: bool = True,
    device: str | torch.device | None = None,
    on_step: StepHook | None = None,
    settings: str = "probe",
) -> dict[str, Any]:
    """Train the head of `model` on its frozen backbone (the study's "before fine-tune" run).

    With `cached` (the default) the pooled features of each split are computed once
    (`extract_features`, saved to run_dir/features.pt for resuming) and the head is trained
    on them; without it the backbone runs on every batch of every epoch. Both give the same
    head up to float rounding, since the backbone never changes. `model.head` is trained in
    place. `settings` is the config key of `train_cfg`, for messages. Returns {"history",
    "val", "test", "trained", "resumed_from"}.
    """
    run_dir = Path(run_dir)
    device = resolve_device(device)
    model.to(device)
    model.freeze_backbone()
    backbone = backbone_fingerprint(model)
    if cached and getattr(datasets["train"], "augment", False):
        log.info(
            "probe: the cached-feature probe sees each training image once, unaugmented; "
            "pass cached=False to train the head on augmented images"
        )
    if cached:
        features = _cached_features(
            model, datasets, run_dir / FEATURES, backbone, train_cfg.eval_batch_size,
            resume=resume, progress=progress, device=device,
        )  # fmt: skip
        net: nn.Module = model.head
        splits = {
            s: _TensorSplit(features[s].to(device), _labels(datasets[s]).to(device))
            for s in datasets
        }
    else:
        net, splits = model, {s: _ImageSplit(datasets[s], device) for s in datasets}
    return fit(
        net, splits, train_cfg, run_dir=run_dir, seed=seed, resume=resume, progress=progress,
        device=device, on_step=on_step, settings=settings, backbone=backbone,
        inputs=run_inputs(model, datasets),
    )  # fmt: skip


def fine_tune(
    model: nn.Module,
    datasets: Mapping[str, Any],
    train_cfg: TrainConfig,
    *,
    run_dir: str | Path,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    on_step: StepHook | None = None,
    teacher: nn.Module | None = None,
    settings: str = "finetune",
) -> dict[str, Any]:
    """Train every parameter of `model` in place (the study's fine-tune; from scratch for a
    random-init model; any classifier, e.g. a CNN teacher). Returns {"history", "val",
    "test", "trained", "resumed_from"}. `settings` is the config key of `train_cfg`
    ("finetune", "variants.train", ...), named in messages.

    With a `teacher` (a trained classifier, kept frozen in eval mode), `model` must be a
    distilled ViT and is trained with DeiT's hard distillation (`hard_distillation_loss`)."""
    device = resolve_device(device)
    model.to(device)
    model.requires_grad_(True)
    fixed, loss = None, training_loss(train_cfg)
    if teacher is not None:
        if not getattr(model, "distilled", False):
            raise ValueError("training with a teacher needs a ViT built with distilled=True")
        teacher.to(device).eval().requires_grad_(False)
        fixed = backbone_fingerprint(teacher)
        loss = distillation_loss(teacher, train_cfg.label_smoothing)
    return fit(
        model, {s: _ImageSplit(datasets[s], device) for s in datasets}, train_cfg,
        run_dir=Path(run_dir), seed=seed, resume=resume, progress=progress, device=device,
        on_step=on_step, settings=settings, backbone=fixed, loss=loss,
        inputs=run_inputs(model, datasets),
    )  # fmt: skip


@torch.no_grad()
def extract_features(
    model: VisionTransformer,
    dataset: Any,
    *,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Tensor:
    """Pooled (class-token) features of every image of `dataset`: (n, D) float32 on the CPU."""
    device = resolve_device(device)
    model.to(device).eval()
    out = []
    for idx in _batches(len(dataset), batch_size, desc="features", progress=progress):
        with autocast(device):
            out.append(model.extract_features(dataset.batch(idx, device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


@dataclass
class _ImageSplit:
    """Images read in batches from a dataset (`ImageDataset.batch`), augmented where the
    dataset says so (DataConfig.augment: the train split only)."""

    dataset: Any
    device: torch.device

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, idx: np.ndarray) -> tuple[Tensor, Tensor]:
        x = self.dataset.batch(idx, self.device, augment=True)
        y = torch.from_numpy(np.asarray(self.dataset.labels)[idx]).to(self.device)
        return x, y


@dataclass
class _TensorSplit:
    """Precomputed inputs (e.g. features (n, D)) and labels (n,), on one device."""

    inputs: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: np.ndarray) -> tuple[Tensor, Tensor]:
        i = torch.from_numpy(idx).to(self.inputs.device)
        return self.inputs[i], self.labels[i]


Split = _ImageSplit | _TensorSplit


def fit(
    net: nn.Module,
    splits: Mapping[str, Split],
    tc: TrainConfig,
    *,
    run_dir: Path,
    seed: int,
    resume: bool,
    progress: bool,
    device: torch.device,
    on_step: StepHook | None,
    settings: str,
    backbone: str | None = None,
    loss: LossFn | None = None,
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Optimise the trainable parameters of `net` on splits["train"] with `loss` (default
    cross-entropy); checkpoint every epoch; evaluate on "val" every epoch, "test" at the end.
    `backbone` (the fixed part a checkpoint does not hold: the probe's backbone, a teacher) and
    `inputs` (`run_inputs`) stop a resume mixing two runs; `settings` names `tc`'s config key.
    Among several processes (`vitlib.distributed`) each takes its share of every batch of
    tc.batch_size, and rank 0 alone checkpoints and shows progress."""
    train = splits["train"]
    if len(train) == 0:
        raise ExperimentError("the training split is empty")
    distributed.check_batch_size(tc.batch_size, f"{settings}.batch_size")
    progress = progress and distributed.is_main()
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
    steps = math.ceil(len(train) / tc.batch_size)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = make_optimizer(net, tc)
    run = TrainingRun(
        net, params, optimizer, make_scheduler(optimizer, tc, steps), tc, run_dir / CHECKPOINT,
        settings, seed, backbone, [], inputs,
    )  # fmt: skip
    start = run.restore() if resume else 0
    distributed.agree(start, "the epoch to resume from")
    distributed.share_rng()  # augmentation draws the same on every rank
    objective = distributed.objective(net, loss or training_loss(tc), device)
    val = None
    for epoch in range(start, tc.epochs):
        t0 = time.perf_counter()
        desc = f"{settings} epoch {epoch + 1}/{tc.epochs}"
        with tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
            loss_sum, correct = _train_epoch(
                run, train, epoch, steps, objective, device, on_step, bar
            )
        val = evaluate(net, splits["val"], tc.eval_batch_size, device)
        run.history.append({
            "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / len(train), "train_accuracy": correct / len(train),
            "val_loss": val["loss"], "val_accuracy": val["accuracy"],
            "seconds": time.perf_counter() - t0,
        })  # fmt: skip
        _log_epoch(settings, run.history[-1], tc.epochs)
        if distributed.is_main():
            run.save(epoch + 1)
            tensorboard.log_epoch(run, run.history[-1], (epoch + 1) * steps)
    net.eval()
    if val is None:  # resumed after the last epoch
        val = evaluate(net, splits["val"], tc.eval_batch_size, device)
    test = evaluate(net, splits["test"], tc.eval_batch_size, device)
    return {
        "history": run.history,
        "val": val,
        "test": test,
        "trained": True,
        "resumed_from": start if resume and start else None,
    }


def _train_epoch(
    run: TrainingRun,
    train: Split,
    epoch: int,
    steps: int,
    objective: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    device: torch.device,
    on_step: StepHook | None,
    bar: tqdm,
) -> tuple[float, int]:
    """One pass over the training split in this epoch's order: (summed loss, correct).
    `objective(x, y)` is (loss, logits) (`distributed.objective`)."""
    tc = run.tc
    whole = isinstance(train, _ImageSplit) and train.dataset.augment  # draws per global batch
    run.net.train()
    order = torch.randperm(len(train), generator=epoch_generator(run.seed, epoch)).numpy()
    loss_sum, correct = 0.0, 0
    for step in range(steps):
        idx = order[step * tc.batch_size : (step + 1) * tc.batch_size]
        if on_step is not None:
            on_step(epoch, step, run.net)
        x, y, n = distributed.local_batch(train, idx, whole=whole)  # this rank's share
        with autocast(device):
            loss, logits = objective(x, y)
        loss_value, hits = distributed.batch_totals(loss, logits[:n].argmax(1) == y[:n], len(idx))
        if not math.isfinite(loss_value):
            raise _non_finite(run, loss_value, epoch, step)
        run.optimizer.zero_grad(set_to_none=True)
        distributed.weighted(loss, n, len(idx)).backward()
        if tc.grad_clip_norm:
            nn.utils.clip_grad_norm_(run.params, tc.grad_clip_norm)
        run.optimizer.step()
        run.scheduler.step()
        loss_sum += loss_value * len(idx)
        correct += hits
        bar.set_postfix(loss=f"{loss_value:.4f}")
        bar.update()
        tensorboard.log_step(run, epoch * steps + step + 1, loss_value)
    return loss_sum, correct


def _non_finite(run: TrainingRun, loss_value: float, epoch: int, step: int) -> NonFiniteLossError:
    kept = (
        f"the last good checkpoint, {run.ckpt} (after epoch {len(run.history)}), is kept"
        if run.ckpt.exists()
        else "no checkpoint had been written yet"
    )
    return NonFiniteLossError(
        f"{run.settings}: the loss is {loss_value} at epoch {epoch + 1}, step {step + 1}; "
        f"{kept}. Lower the learning rate (e.g. --set {run.settings}.lr=...) and start over, "
        "without --resume."
    )


def _log_epoch(settings: str, row: Mapping[str, float], epochs: int) -> None:
    log.info(
        "%s epoch %d/%d: train loss %.4f acc %.4f, val loss %.4f acc %.4f (%.0f s)",
        settings,
        row["epoch"],
        epochs,
        *(row[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")),
        row["seconds"],
    )


@torch.no_grad()
def evaluate(net: nn.Module, split: Split, batch_size: int, device: torch.device) -> dict[str, Any]:
    """Class probabilities of every item of `split` in eval mode (the mode is restored):
    {"loss", "accuracy", "probs" (n, K), "labels" (n,)}."""
    probs, labels = [], []
    with using_mode(net, training=False):
        for idx in _batches(len(split), batch_size, progress=False):
            x, y = split.batch(idx)
            with autocast(device):
                probs.append(net(x).float().softmax(dim=-1).cpu())
            labels.append(y.cpu())
    return _scores(torch.cat(probs), torch.cat(labels))


def _scores(probs: Tensor, labels: Tensor) -> dict[str, Any]:
    """Loss, accuracy and the raw arrays from class probabilities (n, K) and labels (n,)."""
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), labels) if len(labels) else torch.tensor(0.0)
    return {
        "loss": float(nll),
        "accuracy": int((probs.argmax(1) == labels).sum()) / len(labels) if len(labels) else 0.0,
        "probs": probs.numpy(),
        "labels": labels.numpy(),
    }


def _cached_features(
    model: VisionTransformer,
    datasets: Mapping[str, Any],
    path: Path,
    backbone: str,
    batch_size: int,
    *,
    resume: bool,
    progress: bool,
    device: torch.device,
) -> dict[str, Tensor]:
    """Features of every split, from `path` when resuming and it was made from the same
    backbone and images, else extracted now and saved to `path`."""
    key = {
        "backbone": backbone,
        **{f"paths/{s}": "\n".join(map(str, datasets[s].paths)) for s in datasets},
    }
    if resume and path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            log.info("probe: features read from %s", path)
            return saved["features"]
        log.info("probe: %s is for other weights or images; extracting again", path)
    features = {
        s: extract_features(
            model, datasets[s], batch_size=batch_size, device=device, progress=progress
        )
        for s in datasets
    }
    if distributed.is_main():
        with atomic_path(path) as tmp:
            torch.save({"key": key, "features": features}, tmp)
    return features


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _labels(dataset: Any) -> Tensor:
    return torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64))


def _batches(
    n: int, batch_size: int, *, desc: str = "", progress: bool = False
) -> Iterator[np.ndarray]:
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        yield np.arange(start, min(n, start + batch_size))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when there is a GPU and the CPU otherwise."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (weights stay float32); plain float32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
