"""Drawing what pre-training buys: MAE reconstructions, and accuracy against labels.

plot_reconstructions    the MAE paper's Fig. 2: masked input, prediction, original
plot_label_efficiency   test accuracy (95% interval) against labelled images, per backbone
plot_pretraining_curve  the masked-patch loss per epoch
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure, FigureBase

from vitlib.viz.attention import plot_attention
from vitlib.viz.base import _array, _new_figure, _root

__all__ = [
    "plot_backbones",
    "plot_label_efficiency",
    "plot_pretraining_curve",
    "plot_reconstructions",
]

COLUMNS = ("masked", "prediction", "original")


def _display(images: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (B, 3, H, W) -> (B, H, W, 3) in [0, 1]: x * std + mean, clipped."""
    x = _array(images).transpose(0, 2, 3, 1)
    return np.clip(x * np.asarray(std) + np.asarray(mean), 0, 1)


def plot_reconstructions(
    images: Mapping[str, Any],
    *,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    fig: FigureBase | None = None,
    title: str | None = "MAE reconstructions",
) -> Figure:
    """One row per image, three columns: the masked input (hidden patches grey), the
    reconstruction (visible patches pasted back) and the original, as the MAE paper's Fig. 2.

    `images` holds "masked", "prediction" and "original", each (B, 3, H, W) normalised with
    `mean`/`std` (what `vitlib.pretrain.reconstruct` returns)."""
    missing = [k for k in COLUMNS if k not in images]
    if missing:
        raise ValueError(f"expected {list(COLUMNS)} in images, missing {missing}")
    shown = {k: _display(images[k], mean, std) for k in COLUMNS}
    rows = len(shown["original"])
    if rows == 0:
        raise ValueError("no images to show")
    fig = fig if fig is not None else _new_figure((6.0, 2.0 * rows))
    axes = np.asarray(fig.subplots(rows, 3, squeeze=False))
    for r in range(rows):
        for c, key in enumerate(COLUMNS):
            ax = axes[r, c]
            ax.imshow(shown[key][r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(key)
    if title:
        fig.suptitle(title)
    return _root(fig)


def plot_label_efficiency(
    rows: Sequence[Mapping[str, Any]],
    *,
    fig: FigureBase | None = None,
    title: str | None = "Test accuracy against labelled images",
) -> Figure:
    """Two panels (frozen probe, fine-tune): test accuracy against the number of labelled
    training images (log scale), one line per backbone, each point with its 95% interval.

    `rows` are `vitlib.efficiency` rows ("backbone", "method", "labels", "accuracy", "low",
    "high")."""
    if not rows:
        raise ValueError("no results given")
    fig = fig if fig is not None else _new_figure((10.0, 3.8))
    axes = fig.subplots(1, 2, sharey=True)
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    colours = matplotlib.colormaps["tab10"](np.arange(len(backbones)) % 10)
    for ax, method, name in zip(axes, ("probe", "finetune"), ("Frozen probe", "Fine-tune"),
                                strict=True):  # fmt: skip
        for backbone, colour in zip(backbones, colours, strict=True):
            points = sorted(
                (r for r in rows if r["backbone"] == backbone and r["method"] == method),
                key=lambda r: r["labels"],
            )
            if not points:
                continue
            x = np.array([p["labels"] for p in points], dtype=float)
            y = np.array([p["accuracy"] for p in points])
            err = np.array([[p["accuracy"] - p["low"] for p in points],
                            [p["high"] - p["accuracy"] for p in points]])  # fmt: skip
            ax.errorbar(x, y, yerr=err, fmt="-o", ms=4, capsize=3, color=colour, label=backbone)
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("Labelled training images")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Test accuracy (95% interval)")
    axes[1].legend(fontsize="small", loc="lower right")
    if title:
        fig.suptitle(title)
    return _root(fig)


def plot_pretraining_curve(
    history: Sequence[Mapping[str, Any]],
    *,
    fig: FigureBase | None = None,
    title: str | None = "MAE pre-training",
) -> Figure:
    """The masked-patch reconstruction loss (normalised pixels) per epoch."""
    if not history:
        raise ValueError("no epochs to show")
    fig = fig if fig is not None else _new_figure((4.5, 3.2))
    ax = fig.add_subplot()
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["train_loss"] for row in history], "-o", ms=3)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Masked-patch loss")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return _root(fig)


def plot_backbones(
    names: Sequence[str],
    image: Any,
    attention: Sequence[Any],
    similarity: Sequence[Any],
    *,
    fig: FigureBase | None = None,
    title: str | None = "Where each backbone looks, and what its position embedding holds",
) -> Figure:
    """One row per backbone: its last layer's class-token attention (mean of the heads, (G, G))
    over `image` (H, W, 3) uint8; the cosine similarity of the centre patch's and the corner
    patch's position embedding to every patch's, from a (G*G, G*G) `similarity`."""
    if not names or not len(names) == len(attention) == len(similarity):
        raise ValueError("expected one attention map and one similarity matrix per name")
    fig = fig if fig is not None else _new_figure((8.4, 2.7 * len(names)))
    axes = np.asarray(fig.subplots(len(names), 3, squeeze=False))
    for row, name in enumerate(names):
        plot_attention(image, attention[row], ax=axes[row, 0], title=f"{name}: attention")
        sim = _array(similarity[row])
        grid = int(round(np.sqrt(sim.shape[0])))
        patches = (((grid // 2) * grid + grid // 2, "centre"), (0, "corner"))
        for col, (patch, where) in enumerate(patches, start=1):
            ax = axes[row, col]
            ax.imshow(sim[patch].reshape(grid, grid), vmin=-1, vmax=1, cmap="viridis")
            ax.set_title(f"position similarity, {where}", fontsize="small")
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return _root(fig)
