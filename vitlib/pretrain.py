"""Masked-autoencoder pre-training (He et al. 2021, arXiv 2111.06377) of the vitlib ViT.

The model is `vitlib.mae`; this is its training: AdamW with the paper's betas, warm-up and
cosine (PretrainConfig.train), masks and augmentation from torch's global RNG, a checkpoint
every epoch (`vitlib.resume.TrainingRun`: weights, optimiser, schedule, RNG), so a killed run
resumes and ends as one never killed; a progress bar per epoch.

    metrics = run_pretraining(cfg)       # -> runs/<profile>/pretrain/encoder.safetensors, ...
    mae = load_mae(cfg)                  # encoder and decoder as trained, for the figures

The encoder is saved headless as a plain vitlib/timm state dict (as timm's `.mae` weights), so
`create_model(arch, pretrained=encoder_file, num_classes=2)` and a timm `VisionTransformer`
with num_classes=0 load it, and every experiment can start from it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitlib.checkpoints import build_model
from vitlib.config import Config, PretrainConfig
from vitlib.data import load_splits
from vitlib.errors import ExperimentError, NonFiniteLossError
from vitlib.files import atomic_path, write_json
from vitlib.mae import MaskedAutoencoder, build_mae, random_masking
from vitlib.model import VisionTransformer, using_mode
from vitlib.recipe import make_optimizer, make_scheduler
from vitlib.resume import TrainingRun, epoch_generator, run_inputs
from vitlib.runs import RunDir, lock_run
from vitlib.train import StepHook, autocast, resolve_device

__all__ = [
    "ENCODER",
    "MAE_WEIGHTS",
    "encoder_model",
    "encoder_state_dict",
    "ensure_pretrained",
    "held_out_loss",
    "load_mae",
    "pretrain",
    "recalibrate_batchnorm",
    "run_pretraining",
]

log = logging.getLogger(__name__)

ENCODER = "encoder.safetensors"  # the pre-trained encoder, headless, in timm layout
MAE_WEIGHTS = "mae.safetensors"  # encoder and decoder, for reconstructions
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
RECALIBRATION_BATCHES = 8  # unmasked batches that re-estimate the stem's BatchNorm statistics


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def encoder_state_dict(encoder: VisionTransformer) -> dict[str, Tensor]:
    """The encoder's weights without its classifier head(s), on the CPU: timm's layout of a
    headless ViT (num_classes=0), as timm's own `.mae` and `.dino` weights."""
    return {
        k: v.detach().cpu().contiguous()
        for k, v in encoder.state_dict().items()
        if not encoder.is_head_key(k)
    }


def pretrain(
    mae: MaskedAutoencoder,
    dataset: Any,
    pc: PretrainConfig,
    *,
    run_dir: str | Path,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    on_step: StepHook | None = None,
) -> list[dict[str, float]]:
    """Train `mae` on the images of `dataset` (labels ignored) with pc.train's AdamW, warm-up
    and cosine; checkpoint every epoch to run_dir/checkpoint.pt (resumed with `resume`).
    Batches are augmented where the dataset augments (random resized crops and flips, as the
    paper). Returns the per-epoch history {"epoch", "lr", "train_loss", "seconds", "images_per_s"}.
    """
    run_dir, device, tc = Path(run_dir), resolve_device(device), pc.train
    if len(dataset) == 0:
        raise ExperimentError("pre-training needs images; the training split is empty")
    run_dir.mkdir(parents=True, exist_ok=True)
    mae.to(device).requires_grad_(True)
    steps = math.ceil(len(dataset) / tc.batch_size)
    optimizer = make_optimizer(mae, tc)
    for group in optimizer.param_groups:
        group["betas"] = (0.9, 0.95)  # the paper's pre-training betas (its Table 8)
    settings = {k: getattr(pc, k) for k in ("mask_ratio", "decoder_dim", "decoder_depth",
                                            "decoder_heads", "norm_pix_loss")}  # fmt: skip
    inputs = run_inputs(mae.encoder, {"train": dataset})
    inputs["model"] = {**inputs["model"], "mae": settings}  # a resume with other MAE settings
    run = TrainingRun(
        mae, [p for p in mae.parameters()], optimizer, make_scheduler(optimizer, tc, steps), tc,
        run_dir / CHECKPOINT, "pretrain", seed, None, [], inputs,
    )  # fmt: skip
    start = run.restore() if resume else 0
    for epoch in range(start, tc.epochs):
        t0 = time.perf_counter()
        loss_sum = _pretrain_epoch(run, dataset, epoch, steps, device, progress, on_step)
        seconds = time.perf_counter() - t0
        run.history.append({
            "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / len(dataset), "seconds": seconds,
            "images_per_s": len(dataset) / seconds,
        })  # fmt: skip
        log.info("pretrain epoch %d/%d: loss %.4f (%.0f s)", epoch + 1, tc.epochs,
                 run.history[-1]["train_loss"], seconds)  # fmt: skip
        run.save(epoch + 1)
    return run.history


def _pretrain_epoch(
    run: TrainingRun,
    dataset: Any,
    epoch: int,
    steps: int,
    device: torch.device,
    progress: bool,
    on_step: StepHook | None,
) -> float:
    """One pass over `dataset` in this epoch's order; the summed loss. Masks and augmentation
    draw from torch's global RNG, which checkpoints save."""
    tc, mae = run.tc, run.net
    mae.train()
    order = torch.randperm(len(dataset), generator=epoch_generator(run.seed, epoch)).numpy()
    loss_sum = 0.0
    desc = f"pretrain epoch {epoch + 1}/{tc.epochs}"
    for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        idx = order[step * tc.batch_size : (step + 1) * tc.batch_size]
        if on_step is not None:
            on_step(epoch, step, mae)
        images = dataset.batch(idx, device, augment=True)
        with autocast(device):
            loss, _, _ = mae(images)
        value = loss.detach().item()
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"pretrain: the loss is {value} at epoch {epoch + 1}, step {step + 1}; lower "
                "pretrain.train.lr and start over, without --resume"
            )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip_norm:
            nn.utils.clip_grad_norm_(run.params, tc.grad_clip_norm)
        run.optimizer.step()
        run.scheduler.step()
        loss_sum += value * len(idx)
    return loss_sum


@torch.no_grad()
def recalibrate_batchnorm(
    encoder: VisionTransformer, dataset: Any, *, batch_size: int, device: torch.device
) -> int:
    """Re-estimate the BatchNorm statistics of a conv stem on unmasked images (the first
    RECALIBRATION_BATCHES batches): pre-training saw the stem's inputs 75% blanked, so its
    running means and variances would not fit whole images. The number of BatchNorm layers."""
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    # NOTE(paper): not in MAE (its ViT has no BatchNorm); the stem's weights are unchanged.
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches below
    with using_mode(encoder, training=True):
        for start in range(0, min(len(dataset), RECALIBRATION_BATCHES * batch_size), batch_size):
            idx = np.arange(start, min(len(dataset), start + batch_size))
            encoder.patch_embed(dataset.batch(idx, device))
    for bn in norms:
        bn.momentum = 0.1
    return len(norms)


@torch.no_grad()
def held_out_loss(
    mae: MaskedAutoencoder, dataset: Any, *, images: int, batch_size: int, device: torch.device
) -> float:
    """The masked-patch loss on the first `images` of `dataset`, unaugmented, with masks from a
    fixed seed: the same draw every time, so values from epoch to epoch compare."""
    n = min(images, len(dataset))
    if n == 0:
        return float("nan")
    generator, total = torch.Generator().manual_seed(0), 0.0
    with using_mode(mae, training=False):
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(n, start + batch_size))
            masking = random_masking(
                len(idx), mae.num_patches, mae.mask_ratio, device=device, generator=generator
            )
            with autocast(device):
                loss, _, _ = mae(dataset.batch(idx, device), masking)
            total += float(loss) * len(idx)
    return total / n


def encoder_model(cfg: Config) -> VisionTransformer:
    """The ViT that pre-training trains: cfg.model's architecture from a random init (seeded by
    cfg.seed): the same model the label-efficiency study trains from scratch."""
    return build_model(dataclasses.replace(cfg.model, pretrained=None), seed=cfg.seed)


def run_pretraining(
    cfg: Config,
    *,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    datasets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pre-train cfg.model's encoder with MAE on the train split of cfg.data (labels ignored) and
    write runs/<profile>/pretrain/: encoder.safetensors (headless timm layout), encoder.json
    (its settings and preprocessing), checkpoint.pt and, last, metrics.json (history, held-out
    loss, minutes). Returns the metrics."""
    from safetensors.torch import save_file

    from vitlib.experiments import check_inputs

    started, device = time.perf_counter(), resolve_device(device)
    run_dir, pc = cfg.run_dir / "pretrain", cfg.pretrain
    if datasets is None:
        check_inputs(cfg, "probe", need_weights=False, progress=progress)
    with lock_run(run_dir):
        encoder = encoder_model(cfg)
        if datasets is None:
            datasets = load_splits(cfg.data, encoder.pretrained_cfg, seed=cfg.seed,
                                   progress=progress)  # fmt: skip
        mae = build_mae(encoder, pc)
        history = pretrain(mae, datasets["train"], pc, run_dir=run_dir, seed=cfg.seed,
                           resume=resume, progress=progress, device=device)  # fmt: skip
        finishing = time.perf_counter()
        stem_norms = recalibrate_batchnorm(
            encoder, datasets["train"], batch_size=pc.train.eval_batch_size, device=device
        )
        val_loss = held_out_loss(mae, datasets["val"], images=pc.held_out_images,
                                 batch_size=pc.train.eval_batch_size, device=device)  # fmt: skip
        with atomic_path(run_dir / ENCODER) as tmp:
            save_file(encoder_state_dict(encoder), str(tmp))
        with atomic_path(run_dir / MAE_WEIGHTS) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in mae.state_dict().items()},
                      str(tmp))  # fmt: skip
        write_json(run_dir / "encoder.json", {"arch": cfg.model.arch,
                   "arch_config": encoder.arch_config, "pretrained_cfg": encoder.pretrained_cfg})  # fmt: skip
        metrics = {
            "profile": cfg.profile, "history": history, "val_loss": val_loss,
            "images": len(datasets["train"]), "epochs": pc.train.epochs,
            # Its epochs in every session (a resumed one would count only its own), and the end.
            "minutes": (sum(h["seconds"] for h in history) + time.perf_counter() - finishing) / 60,
            "session_minutes": (time.perf_counter() - started) / 60, "device": str(device),
            "settings": dataclasses.asdict(pc), "batchnorm_recalibrated": stem_norms,
            "encoder": str(run_dir / ENCODER), "resumed": resume,
        }  # fmt: skip
        write_json(run_dir / METRICS, metrics)  # last: its presence means the run finished
    return metrics


def ensure_pretrained(
    cfg: Config, *, progress: bool = True, build: bool | None = None
) -> dict[str, Any]:
    """The metrics of the profile's finished pre-training (runs/<profile>/pretrain); when there
    is none, pre-train now, continuing a stopped run from its checkpoint, if `build` (default:
    cfg.build_missing, e.g. smoke; notebook 07 passes True), else raise an ExperimentError with
    the command to run."""
    run = RunDir(cfg.run_dir / "pretrain")
    if run.finished and (run / ENCODER).is_file():
        return run.read_metrics()
    if not (cfg.build_missing if build is None else build):
        raise ExperimentError(
            f"{run / METRICS} not found: the pre-training of profile {cfg.profile!r} has not "
            f"been done. Run: python -m vitlib pretrain --profile {cfg.profile}"
        )
    log.info("no pre-trained encoder in %s: pre-training now (profile %s)", run, cfg.profile)
    return run_pretraining(cfg, resume=True, progress=progress)


def load_mae(cfg: Config, *, progress: bool = True) -> MaskedAutoencoder:
    """The profile's pre-trained MAE, encoder and decoder (`ensure_pretrained` first), in eval
    mode on the CPU, the encoder with the preprocessing it was trained with."""
    from safetensors.torch import load_file

    ensure_pretrained(cfg, progress=progress)
    mae = build_mae(encoder_model(cfg), cfg.pretrain)
    mae.load_state_dict(load_file(cfg.run_dir / "pretrain" / MAE_WEIGHTS))
    return mae.eval()
