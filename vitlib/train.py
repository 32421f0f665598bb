"""The study's experiments: zero-shot, frozen-backbone probe and full fine-tune; resumable.

Report section 3.2: the "before fine-tune" run trains a new 2-class head on a frozen ViT-B/16
(`linear_probe`), the fine-tune trains every parameter (`fine_tune`); both Adam, lr 1e-4,
batch 16, cosine decay, 5 epochs (`TrainConfig`). `zero_shot` is a baseline the study did not
have: the ImageNet-1k head's cat and dog classes, summed, with no training at all.

    cfg = get_config("smoke")
    metrics = run_experiment(cfg, "probe")       # -> runs/smoke/probe/metrics.json, ...
    model = load_trained("runs/smoke/finetune")  # the fine-tuned ViT, for later notebooks

Every epoch ends with an atomic checkpoint (weights, optimizer, scheduler, RNG, history), so a
run killed at any point continues with `resume=True` and ends with the metrics of a run never
killed: each epoch's shuffle comes from its own generator seeded by (seed, epoch). Batches are
read straight from the dataset's decoded uint8 cache (`ImageDataset.images`), not image by
image.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import platform
import random
import socket
import sys
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

from vitlib.checkpoints import WEIGHT_SUFFIXES, create_model
from vitlib.config import Config, TrainConfig, to_dict
from vitlib.data import CLASSES, GET_DATA, data_provenance, load_splits
from vitlib.files import atomic_path, atomic_write
from vitlib.model import VisionTransformer

__all__ = [
    "EXPERIMENTS",
    "IMAGENET_CAT_CLASSES",
    "IMAGENET_DOG_CLASSES",
    "ExperimentError",
    "NonFiniteLossError",
    "backbone_fingerprint",
    "build_model",
    "check_inputs",
    "ensure_experiment",
    "ensure_trained",
    "extract_features",
    "fine_tune",
    "hard_distillation_loss",
    "image_batch",
    "linear_probe",
    "load_trained",
    "machine_info",
    "read_misclassified",
    "run_experiment",
    "save_trained",
    "versions",
    "write_csv",
    "write_json",
    "write_run",
    "zero_shot",
]

log = logging.getLogger(__name__)

EXPERIMENTS = ("zero-shot", "probe", "finetune")
# ImageNet-1k class indices: 281-285 tabby, tiger cat, Persian, Siamese, Egyptian cat;
# 151-268 the dog breeds, Chihuahua to Mexican hairless.
IMAGENET_CAT_CLASSES = tuple(range(281, 286))
IMAGENET_DOG_CLASSES = tuple(range(151, 269))
CHECKPOINT = "checkpoint.pt"
FEATURES = "features.pt"
MODEL_WEIGHTS, MODEL_JSON = "model.safetensors", "model.json"
HISTORY_KEYS = (
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "seconds",
)

# on_step(epoch, step, net) runs before every optimisation step (epoch and step from 0); a hook
# for progress reporting, tests and fault injection.
StepHook = Callable[[int, int, nn.Module], None]


class ExperimentError(RuntimeError):
    """An experiment that cannot start or go on; the message says what to do."""


class NonFiniteLossError(ExperimentError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


# --------------------------------------------------------------------------------------------
# The experiments
# --------------------------------------------------------------------------------------------


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
    before any heavy work: missing data or weights fail at once with what to download or pass.
    """
    started = time.perf_counter()
    check_inputs(cfg, experiment, need_data=datasets is None, need_weights=model is None)
    run_dir = cfg.run_dir / experiment
    run_dir.mkdir(parents=True, exist_ok=True)
    device = _device(device)
    if model is None:
        model = build_model(cfg, experiment)
    if datasets is None:
        datasets = load_splits(cfg.data, model.pretrained_cfg, seed=cfg.seed, progress=progress)

    if experiment == "zero-shot":
        result = zero_shot(
            model, datasets, batch_size=cfg.probe.eval_batch_size, device=device, progress=progress
        )
    elif experiment == "probe":
        result = linear_probe(
            model,
            datasets,
            cfg.probe,
            run_dir=run_dir,
            seed=cfg.seed,
            resume=resume,
            progress=progress,
            device=device,
            on_step=on_step,
        )
    else:
        if cfg.finetune.init_from_probe:
            _load_probe_head(model, cfg.run_dir / "probe")
        result = fine_tune(
            model,
            datasets,
            cfg.finetune,
            run_dir=run_dir,
            seed=cfg.seed,
            resume=resume,
            progress=progress,
            device=device,
            on_step=on_step,
        )

    return write_run(
        cfg,
        run_dir,
        model,
        result,
        datasets,
        experiment=experiment,
        arch=cfg.model.arch,
        device=device,
        started=started,
        resumed=resume,
    )


def write_run(
    cfg: Config,
    run_dir: Path,
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
    `time.perf_counter()` at its start. A trained vitlib model is saved (`save_trained`);
    metrics.json is written last, so its presence means the run finished.
    """
    if result.get("trained") and isinstance(model, VisionTransformer):
        save_trained(
            model,
            run_dir,
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
        "weights": dict(getattr(model, "provenance", {})),
        "data": data_provenance(datasets),
        "resumed": bool(resumed and result.get("resumed_from")),
        "resumed_from_epoch": result.get("resumed_from"),
        "minutes": metrics["minutes"],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
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

    p(cat) = sum of softmax over classes 281-285, p(dog) = over 151-268; the prediction is the
    larger, and the two are renormalised to sum to 1. Returns {"applicable": False, "reason"}
    when the model has no trained 1000-class head (e.g. a random-init or 2-class model).
    Otherwise "val"/"test": {"probs" (n, 2), "labels" (n,), "loss", "accuracy", "mass"}, where
    mass is the mean share of the 1000-way probability that fell on a cat or dog class.
    """
    num_classes = getattr(model, "num_classes", None)
    weights = getattr(model, "provenance", {}).get("weights")
    if num_classes != 1000 or weights == "random init":
        why = (
            f"its head has {num_classes} outputs, not ImageNet-1k's 1000"
            if num_classes != 1000
            else "its weights are a random init"
        )
        return {
            "applicable": False,
            "reason": f"zero-shot needs a pretrained ImageNet-1k head; this model has none ({why})",
            "trained": False,
        }
    device = _device(device)
    model.to(device).eval()
    cats, dogs = list(IMAGENET_CAT_CLASSES), list(IMAGENET_DOG_CLASSES)
    out: dict[str, Any] = {"applicable": True, "trained": False}
    for split in ("val", "test"):
        ds = datasets[split]
        _check_classes(ds)
        probs, mass = [], []
        for idx in _batches(len(ds), batch_size, desc=f"zero-shot {split}", progress=progress):
            with _autocast(device):
                p = model(image_batch(ds, idx, device)).float().softmax(dim=-1)  # (B, 1000)
            two = torch.stack([p[:, cats].sum(1), p[:, dogs].sum(1)], dim=1)  # (B, 2)
            mass.append(two.sum(1).cpu())
            probs.append((two / two.sum(1, keepdim=True)).cpu())
        out[split] = _scores(torch.cat(probs), _labels(ds))
        out[split]["mass"] = float(torch.cat(mass).mean())
    return out


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
) -> dict[str, Any]:
    """Train the head of `model` on its frozen backbone (the study's "before fine-tune" run).

    With `cached` (the default) the class-token features of each split are computed once
    (`extract_features`, saved to run_dir/features.pt for resuming) and the head is trained
    on them; without it the backbone runs on every batch of every epoch. Both give the same
    head up to float rounding, since the backbone never changes. `model.head` is trained in
    place. Returns {"history", "val", "test", "trained", "resumed_from"}.
    """
    run_dir = Path(run_dir)
    device = _device(device)
    model.to(device)
    model.freeze_backbone()
    backbone = backbone_fingerprint(model)
    if cached and getattr(datasets["train"], "augment", False):
        log.warning(
            "probe: the cached-feature probe sees each training image once, unaugmented; "
            "pass cached=False to train the head on augmented images"
        )
    if cached:
        features = _cached_features(
            model,
            datasets,
            run_dir / FEATURES,
            backbone,
            train_cfg.eval_batch_size,
            resume,
            progress,
            device,
        )
        net: nn.Module = model.head
        splits = {
            s: _TensorSplit(features[s].to(device), _labels(datasets[s]).to(device))
            for s in datasets
        }
    else:
        net, splits = model, {s: _ImageSplit(datasets[s], device) for s in datasets}
    return _fit(
        net,
        splits,
        train_cfg,
        run_dir=run_dir,
        seed=seed,
        resume=resume,
        progress=progress,
        device=device,
        on_step=on_step,
        name="probe",
        backbone=backbone,
    )


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
) -> dict[str, Any]:
    """Train every parameter of `model` in place (the study's fine-tune; from scratch for a
    random-init model; any classifier, e.g. a CNN teacher). Returns {"history", "val",
    "test", "trained", "resumed_from"}.

    With a `teacher` (a trained classifier, kept frozen in eval mode), `model` must be a
    distilled ViT and is trained with DeiT's hard distillation (`hard_distillation_loss`)."""
    device = _device(device)
    model.to(device)
    model.requires_grad_(True)
    fixed = None
    if teacher is not None:
        if not getattr(model, "distilled", False):
            raise ValueError("training with a teacher needs a ViT built with distilled=True")
        teacher.to(device).eval().requires_grad_(False)
        fixed = backbone_fingerprint(teacher)
    return _fit(
        model,
        {s: _ImageSplit(datasets[s], device) for s in datasets},
        train_cfg,
        run_dir=Path(run_dir),
        seed=seed,
        resume=resume,
        progress=progress,
        device=device,
        on_step=on_step,
        name="finetune",
        backbone=fixed,
        teacher=teacher,
    )


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
    device = _device(device)
    model.to(device).eval()
    out = []
    for idx in _batches(len(dataset), batch_size, desc="features", progress=progress):
        with _autocast(device):
            out.append(model.extract_features(image_batch(dataset, idx, device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


@dataclass
class _ImageSplit:
    """Images read in batches from a dataset's decoded uint8 cache, augmented where the
    dataset says so (DataConfig.augment: the train split only)."""

    dataset: Any
    device: torch.device

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, idx: np.ndarray) -> tuple[Tensor, Tensor]:
        x = image_batch(self.dataset, idx, self.device, augment=True)
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


def _fit(
    net: nn.Module,
    splits: Mapping[str, _ImageSplit | _TensorSplit],
    tc: TrainConfig,
    *,
    run_dir: Path,
    seed: int,
    resume: bool,
    progress: bool,
    device: torch.device,
    on_step: StepHook | None,
    name: str,
    backbone: str | None = None,
    teacher: nn.Module | None = None,
) -> dict[str, Any]:
    """Optimise the trainable parameters of `net` on splits["train"]; checkpoint every epoch;
    evaluate on "val" every epoch and on "test" at the end. `backbone` fingerprints the fixed
    part that the checkpoint does not hold (the probe's backbone, a distillation teacher), so
    a resume cannot mix two of them. With a `teacher`, the loss is hard distillation."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT
    train = splits["train"]
    if len(train) == 0:
        raise ExperimentError("the training split is empty")
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = _optimizer(params, tc)
    steps_per_epoch = math.ceil(len(train) / tc.batch_size)
    scheduler = _scheduler(optimizer, tc, steps_per_epoch)
    history: list[dict[str, float]] = []
    start, val = 0, None
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["train_cfg"] != dataclasses.asdict(tc) or state["seed"] != seed:
            raise ExperimentError(
                f"{ckpt_path} was written with other settings "
                f"({state['train_cfg']}, seed {state['seed']}); to start over, rerun without "
                "--resume or delete that file"
            )
        if state["backbone"] != backbone:
            raise ExperimentError(
                f"{ckpt_path} was written for another frozen backbone or teacher (other "
                "weights); to start over, rerun without --resume or delete that file"
            )
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        history, start = state["history"], state["epoch"]
        log.info("%s: resuming after epoch %d of %d from %s", name, start, tc.epochs, ckpt_path)
    elif resume:
        log.info("%s: no checkpoint at %s; starting from epoch 1", name, ckpt_path)

    for epoch in range(start, tc.epochs):
        t0 = time.perf_counter()
        net.train()
        order = torch.randperm(len(train), generator=_epoch_generator(seed, epoch)).numpy()
        loss_sum, correct = 0.0, 0
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"{name} epoch {epoch + 1}/{tc.epochs}",
            disable=not progress,
            leave=False,
        )
        for step in range(steps_per_epoch):
            idx = order[step * tc.batch_size : (step + 1) * tc.batch_size]
            if on_step is not None:
                on_step(epoch, step, net)
            x, y = train.batch(idx)
            with _autocast(device):
                if teacher is None:
                    logits = net(x)
                    loss = F.cross_entropy(logits.float(), y)
                else:
                    with torch.no_grad():
                        teacher_labels = teacher(x).argmax(dim=1)
                    class_logits, distill_logits = net.forward_distilled(x)
                    loss = hard_distillation_loss(
                        class_logits.float(), distill_logits.float(), y, teacher_labels
                    )
                    logits = (class_logits + distill_logits) / 2  # DeiT's inference
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                bar.close()
                kept = (
                    f"the last good checkpoint, {ckpt_path} (after epoch {len(history)}), is kept"
                    if ckpt_path.exists()
                    else "no checkpoint had been written yet"
                )
                raise NonFiniteLossError(
                    f"{name}: the loss is {loss_value} at epoch {epoch + 1}, step {step + 1}; "
                    f"{kept}. Lower the learning rate (e.g. --set {name}.lr=...) and start "
                    "over, without --resume."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip_norm:
                nn.utils.clip_grad_norm_(params, tc.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            loss_sum += loss_value * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{loss_value:.4f}")
            bar.update()
        bar.close()
        val = _evaluate(net, splits["val"], tc.eval_batch_size, device)
        history.append(
            {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": loss_sum / len(train),
                "train_accuracy": correct / len(train),
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "seconds": time.perf_counter() - t0,
            }
        )
        row = history[-1]
        log.info(
            "%s epoch %d/%d: train loss %.4f acc %.4f, val loss %.4f acc %.4f (%.0f s)",
            name,
            epoch + 1,
            tc.epochs,
            *(row[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")),
            row["seconds"],
        )
        _save_checkpoint(
            ckpt_path,
            {
                "epoch": epoch + 1,
                "net": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "history": history,
                "train_cfg": dataclasses.asdict(tc),
                "seed": seed,
                "backbone": backbone,
            },
        )

    net.eval()
    if val is None:  # resumed after the last epoch
        val = _evaluate(net, splits["val"], tc.eval_batch_size, device)
    test = _evaluate(net, splits["test"], tc.eval_batch_size, device)
    return {
        "history": history,
        "val": val,
        "test": test,
        "trained": True,
        "resumed_from": start if resume and start else None,
    }


@torch.no_grad()
def _evaluate(
    net: nn.Module, split: _ImageSplit | _TensorSplit, batch_size: int, device: torch.device
) -> dict[str, Any]:
    was_training = net.training
    net.eval()
    probs, labels = [], []
    for idx in _batches(len(split), batch_size, progress=False):
        x, y = split.batch(idx)
        with _autocast(device):
            probs.append(net(x).float().softmax(dim=-1).cpu())
        labels.append(y.cpu())
    net.train(was_training)
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


def hard_distillation_loss(
    class_logits: Tensor, distill_logits: Tensor, labels: Tensor, teacher_labels: Tensor
) -> Tensor:
    """DeiT's hard distillation (arXiv 2012.12877, eq. 3), a scalar:
    (CE(class_logits, labels) + CE(distill_logits, teacher_labels)) / 2, where logits are
    (B, K) and labels (B,) class indices, `teacher_labels` the teacher's argmax."""
    return (
        F.cross_entropy(class_logits, labels) + F.cross_entropy(distill_logits, teacher_labels)
    ) / 2


def _optimizer(params: list[Tensor], tc: TrainConfig) -> torch.optim.Optimizer:
    fused = bool(params) and params[0].is_cuda
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)
    raise ValueError(f"unknown optimizer {tc.optimizer!r}; expected 'adam' or 'adamw'")


def _scheduler(
    optimizer: torch.optim.Optimizer, tc: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step multiplier: linear warm-up over `warmup_epochs`, then cosine to 0 at the last
    step (as CosineAnnealingLR(T_max = all steps)) or constant."""
    if tc.schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {tc.schedule!r}; expected 'cosine' or 'constant'")
    total = tc.epochs * steps_per_epoch
    warmup = round(tc.warmup_epochs * steps_per_epoch)
    cosine = tc.schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffle of epoch `epoch` depends on (seed, epoch) only, so a resumed run repeats it."""
    return torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    )


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def backbone_fingerprint(model: nn.Module) -> str:
    """sha256 of every parameter and buffer but the head's: identifies a frozen backbone."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not name.startswith("head."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _cached_features(
    model: VisionTransformer,
    datasets: Mapping[str, Any],
    path: Path,
    backbone: str,
    batch_size: int,
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
    with atomic_path(path) as tmp:
        torch.save({"key": key, "features": features}, tmp)
    return features


# --------------------------------------------------------------------------------------------
# Inputs: cheap checks, model, data
# --------------------------------------------------------------------------------------------


def check_inputs(
    cfg: Config, experiment: str, *, need_data: bool = True, need_weights: bool = True
) -> None:
    """Fail in seconds, before any heavy work, when an input is missing: the experiment name,
    the data folder, the weights (a missing file, or a timm tag neither cached nor
    downloadable) and, for a fine-tune from the probe's head, the probe's model."""
    if experiment not in EXPERIMENTS:
        raise ExperimentError(f"unknown experiment {experiment!r}; expected one of {EXPERIMENTS}")
    if need_data and cfg.data.source != "synthetic":
        root = cfg.data.root
        if not root or not Path(root).is_dir():
            raise ExperimentError(
                f"data folder {root!r} not found (profile {cfg.profile!r}). The study used "
                "Kaggle's Dogs vs Cats train.zip (https://www.kaggle.com/c/dogs-vs-cats/data, "
                f"a login is needed): unzip it to {root or 'a folder'}. {GET_DATA}"
            )
    if need_weights and cfg.model.pretrained:
        _check_weights(cfg.model.arch, cfg.model.pretrained)
    if experiment == "finetune" and cfg.finetune.init_from_probe:
        probe = cfg.run_dir / "probe" / MODEL_WEIGHTS
        if not probe.is_file():
            raise ExperimentError(
                f"finetune.init_from_probe is set but {probe} does not exist; run the probe "
                f"first: python -m vitlib train --profile {cfg.profile} --experiment probe"
            )


def _check_weights(arch: str, pretrained: str) -> None:
    path = Path(pretrained).expanduser()
    if path.suffix.lower() in WEIGHT_SUFFIXES or os.sep in pretrained or path.exists():
        if not path.is_file():
            raise ExperimentError(
                f"weights file {path} not found. For the study's ViT-B/16 download "
                "https://github.com/rwightman/pytorch-image-models/releases/download/"
                "v0.1-vitjx/jx_vit_base_p16_224-80ecf9dd.pth (or a timm-layout .safetensors / "
                "Google .npz) and pass its path with --weights PATH (model.pretrained), or "
                "pass a timm tag such as 'vit_base_patch16_224.orig_in21k_ft_in1k'."
            )
        return
    import timm.models

    pcfg = timm.models.get_pretrained_cfg(pretrained, allow_unregistered=False)
    if pcfg is None:
        raise ExperimentError(
            f"{pretrained!r} is neither a weights file nor a timm pretrained tag; list the "
            "tags with timm.list_pretrained('vit_*')"
        )
    pcfg = pcfg.to_dict()
    hub_id, url = pcfg.get("hf_hub_id"), pcfg.get("url")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        filename = pcfg.get("hf_hub_filename") or "model.safetensors"
        if isinstance(try_to_load_from_cache(hub_id, filename), str):
            return
    elif url and (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file():
        return
    host = "huggingface.co" if hub_id else (url or "").split("/")[2]
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        where = f"https://huggingface.co/{hub_id}" if hub_id else url
        raise ExperimentError(
            f"the weights {pretrained!r} are not in the local cache and {host} cannot be "
            f"reached ({exc}). On a machine with internet download them from {where}"
            + (f" (the study's file: {url})" if hub_id and url else "")
            + ", copy the file here and pass its path with --weights PATH (model.pretrained)."
        ) from None


def build_model(cfg: Config, experiment: str = "probe") -> VisionTransformer:
    """The model of cfg.model, seeded by cfg.seed; zero-shot keeps a checkpoint's own head."""
    m = cfg.model
    num_classes = None if experiment == "zero-shot" and m.pretrained else m.num_classes
    torch.manual_seed(cfg.seed)
    return create_model(
        m.arch,
        pretrained=m.pretrained,
        num_classes=num_classes,
        img_size=m.img_size,
        **m.arch_kwargs,
    )


def _load_probe_head(model: VisionTransformer, probe_dir: Path) -> None:
    from safetensors.torch import load_file

    sd = load_file(probe_dir / MODEL_WEIGHTS)
    model.head.load_state_dict({"weight": sd["head.weight"], "bias": sd["head.bias"]})
    log.info("finetune: head initialised from %s", probe_dir / MODEL_WEIGHTS)


def image_batch(
    dataset: Any, idx: np.ndarray, device: torch.device, *, augment: bool = False
) -> Tensor:
    """Normalised images (B, 3, H, W) of dataset[idx] on `device`, read from its uint8 cache
    (B, H, W, 3); with `augment`, randomly transformed first if the dataset augments (torch's
    global RNG, which the checkpoints save, so a resumed run draws the same transforms).

    The uint8 batch goes to the device and is normalised there: a quarter of the bytes to copy,
    and for a GPU run the CPU only gathers (a float batch of 64 at 224 px is 38 MB of fresh
    memory, whose page faults cost more than the arithmetic)."""
    images = torch.from_numpy(np.ascontiguousarray(dataset.images[idx]))
    if augment and getattr(dataset, "augment", False):
        images = dataset.augment_batch(images)
    return dataset.normalise(images.to(device, non_blocking=True))


def _labels(dataset: Any) -> Tensor:
    return torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64))


def _check_classes(dataset: Any) -> None:
    if tuple(dataset.classes) != CLASSES:
        raise ExperimentError(f"expected classes {CLASSES}, got {tuple(dataset.classes)}")


def _batches(
    n: int, batch_size: int, *, desc: str = "", progress: bool = False
) -> Iterator[np.ndarray]:
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        yield np.arange(start, min(n, start + batch_size))


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (weights stay float32); plain float32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def _summarise(
    result: Mapping[str, Any], datasets: Mapping[str, Any], *, experiment: str, profile: str
) -> dict[str, Any]:
    """The JSON-ready metrics of one run (metrics.json)."""
    metrics: dict[str, Any] = {
        "experiment": experiment,
        "profile": profile,
        "applicable": result.get("applicable", True),
        "classes": list(CLASSES),
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
    cm = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    np.add.at(cm, (test["labels"], pred), 1)
    metrics["confusion_matrix"] = cm.tolist()  # rows: true class, columns: predicted
    metrics["n_misclassified"] = int((pred != test["labels"]).sum())
    return metrics


def _prediction_rows(test: Mapping[str, Any], dataset: Any) -> list[dict[str, Any]]:
    pred = test["probs"].argmax(1)
    return [
        {
            "index": i,
            "path": str(dataset.paths[i]),
            "label": CLASSES[int(test["labels"][i])],
            "pred": CLASSES[int(pred[i])],
            **{f"p_{c}": round(float(test["probs"][i, k]), 6) for k, c in enumerate(CLASSES)},
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
    write_json(run_dir / "run.json", run_info)
    if result.get("trained"):
        write_csv(run_dir / "history.csv", metrics["history"], HISTORY_KEYS)
    if metrics["applicable"]:
        rows = _prediction_rows(result["test"], test_dataset)
        keys = ("index", "path", "label", "pred", *(f"p_{c}" for c in CLASSES))
        write_csv(run_dir / "predictions.csv", rows, keys)
        write_csv(run_dir / "misclassified.csv", [r for r in rows if r["label"] != r["pred"]], keys)
    write_json(run_dir / "metrics.json", metrics)  # last: its presence means the run finished


def save_trained(
    model: VisionTransformer, run_dir: str | Path, *, extra: Mapping[str, Any] | None = None
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
            "classes": list(CLASSES),
            "pretrained_cfg": model.pretrained_cfg,
            "provenance": dict(getattr(model, "provenance", {})),
            **(extra or {}),
        },
    )


def load_trained(run_dir: str | Path) -> VisionTransformer:
    """The model a probe or fine-tune saved in run_dir (e.g. runs/full/finetune), on the CPU,
    in eval mode, with its `pretrained_cfg` and `provenance`."""
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
    return model.eval()


def read_misclassified(run_dir: str | Path, *, limit: int | None = None) -> dict[str, np.ndarray]:
    """The misclassified test images of a run (its misclassified.csv), most confident mistake
    first: {"index": (n,) positions in the test split, "true": (n,), "predicted": (n,),
    "probabilities": (n, K)}."""
    with open(Path(run_dir) / "misclassified.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    probabilities = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows]).reshape(
        -1, len(CLASSES)
    )
    order = np.argsort(-probabilities.max(axis=1), kind="stable")[:limit]
    return {
        "index": np.array([int(rows[i]["index"]) for i in order], dtype=np.int64),
        "true": np.array([CLASSES.index(rows[i]["label"]) for i in order], dtype=np.int64),
        "predicted": np.array([CLASSES.index(rows[i]["pred"]) for i in order], dtype=np.int64),
        "probabilities": probabilities[order],
    }


def ensure_experiment(cfg: Config, experiment: str, *, progress: bool = True) -> dict[str, Any]:
    """The metrics of a finished run of `experiment`; when there is none, run it if the profile
    allows (cfg.build_missing, e.g. smoke), else raise ExperimentError saying what to run."""
    metrics_path = cfg.run_dir / experiment / "metrics.json"
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
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


def write_json(path: str | Path, obj: Any) -> None:
    """`obj` as indented JSON, atomically (numpy scalars and paths become plain values)."""
    atomic_write(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv(path: str | Path, rows: list[Mapping[str, Any]], keys: tuple[str, ...]) -> None:
    """Rows of dicts as CSV with columns `keys`, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.device):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


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
    """Where a run or benchmark ran: platform, CPU count, torch threads, accelerator."""
    device = _device(device)
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": sys.version.split()[0],
    }
