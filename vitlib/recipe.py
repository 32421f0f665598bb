"""How a model is optimised: the losses, the parameter groups, the optimiser and the schedule.

The study (report section 3.2): cross-entropy, Adam at lr 1e-4, cosine decay over every step,
no weight decay. Options for training from scratch follow DeiT (arXiv 2012.12877): AdamW with
decoupled weight decay that exempts biases, norms, the position embedding and the tokens, a
linear warm-up, and hard distillation from a CNN teacher.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlib.config import TrainConfig

__all__ = [
    "LossFn",
    "cross_entropy_loss",
    "distillation_loss",
    "hard_distillation_loss",
    "make_optimizer",
    "make_scheduler",
    "parameter_groups",
    "training_loss",
]

# loss(net, x, y) -> (scalar loss, logits (B, K) for the training accuracy)
LossFn = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, Tensor]]


def cross_entropy_loss(
    net: nn.Module, x: Tensor, y: Tensor, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """The study's loss: cross-entropy of net(x) (B, K) against labels y (B,); with
    `label_smoothing` e, against (1 - e) one-hot + e / K (Szegedy et al. 2016; the study: 0)."""
    logits = net(x)
    return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing), logits


def training_loss(tc: TrainConfig) -> LossFn:
    """The cross-entropy `tc` asks for (its label_smoothing)."""
    return functools.partial(cross_entropy_loss, label_smoothing=tc.label_smoothing)


def distillation_loss(teacher: nn.Module, label_smoothing: float = 0.0) -> LossFn:
    """DeiT's training loss for a distilled ViT with a frozen `teacher`: hard distillation on
    the teacher's argmax; the logits are DeiT's inference (the mean of the two heads)."""

    def loss(net: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            teacher_labels = teacher(x).argmax(dim=1)
        class_logits, distill_logits = net.forward_distilled(x)
        value = hard_distillation_loss(
            class_logits.float(), distill_logits.float(), y, teacher_labels, label_smoothing
        )
        return value, (class_logits + distill_logits) / 2

    return loss


def hard_distillation_loss(
    class_logits: Tensor,
    distill_logits: Tensor,
    labels: Tensor,
    teacher_labels: Tensor,
    label_smoothing: float = 0.0,
) -> Tensor:
    """DeiT's hard distillation (arXiv 2012.12877, eq. 3), a scalar:
    (CE(class_logits, labels) + CE(distill_logits, teacher_labels)) / 2, where logits are
    (B, K) and labels (B,) class indices, `teacher_labels` the teacher's argmax. Label
    smoothing, if any, applies to the true labels' term only, as DeiT's."""
    return (
        F.cross_entropy(class_logits, labels, label_smoothing=label_smoothing)
        + F.cross_entropy(distill_logits, teacher_labels)
    ) / 2


def parameter_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters of `net` in two optimiser groups: decayed (weight matrices,
    convolution kernels) and not decayed (1-D parameters: biases and norms; and the model's
    `no_weight_decay()` names: position embedding, class and distillation tokens), as timm and
    DeiT train ViTs. A group with no parameters is left out."""
    exempt = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in exempt else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(net: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """Adam (the study's; weight decay as L2) or AdamW (decoupled) over `parameter_groups`."""
    groups = parameter_groups(net, tc.weight_decay)
    fused = bool(groups) and groups[0]["params"][0].is_cuda
    if tc.optimizer == "adam":
        return torch.optim.Adam(groups, lr=tc.lr, fused=fused)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tc.lr, fused=fused)
    raise ValueError(f"unknown optimizer {tc.optimizer!r}; expected 'adam' or 'adamw'")


def make_scheduler(
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
