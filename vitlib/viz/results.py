"""What a training run gave: loss and accuracy per epoch, the confusion matrix, and the
misclassified images (with the attention behind each mistake).

Histories are per epoch, as `vitlib.train` keeps them; the short names `train_acc` / `val_acc`
also do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, FigureBase

from vitlib.viz.attention import plot_attention
from vitlib.viz.base import _array, _axes, _grid_shape, _new_figure, _root

__all__ = ["plot_confusion_matrix", "plot_misclassified", "plot_training_curves"]

# Per-epoch history keys as vitlib.train writes them, and the short names also accepted.
METRICS = ("epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy")
METRIC_ALIASES = {"train_acc": "train_accuracy", "val_acc": "val_accuracy"}


def _history_columns(history: Any) -> dict[str, np.ndarray]:
    """A per-epoch history as {metric: [...]} or [{metric: value}, ...] -> {metric: array}."""
    if not isinstance(history, Mapping):
        rows = list(history)
        keys = {key for row in rows for key in row}
        history = {key: [row.get(key, np.nan) for row in rows] for key in keys}
    columns = {METRIC_ALIASES.get(key, key): values for key, values in history.items()}
    return {key: _array(columns[key]) for key in METRICS if key in columns}


def plot_training_curves(
    histories: Mapping[str, Any],
    *,
    fig: FigureBase | None = None,
    title: str | None = None,
) -> Figure:
    """Loss (top) and accuracy (bottom) per epoch, one column per run, train vs validation.

    `histories` maps a run name ("probe", "finetune") to its per-epoch history, either
    {"train_loss": [...], "train_accuracy": [...], "val_loss": [...], "val_accuracy": [...]}
    ("train_acc" / "val_acc" also do) or a list of per-epoch dicts with those keys, as
    `vitlib.train` keeps it (an optional "epoch" key gives the x values; other keys are
    ignored, missing metrics skipped). Rows share their y axis, so the runs compare at a glance.
    """
    runs = {name: _history_columns(h) for name, h in histories.items()}
    if not runs:
        raise ValueError("no histories given")
    fig = fig if fig is not None else _new_figure((3.6 * len(runs), 5.0))
    axes = np.asarray(fig.subplots(2, len(runs), sharey="row", squeeze=False))
    for col, (name, columns) in enumerate(runs.items()):
        for row, kind in enumerate(("loss", "accuracy")):
            ax = axes[row, col]
            for split, style in (("train", "-o"), ("val", "--s")):
                values = columns.get(f"{split}_{kind}")
                if values is None or not len(values):
                    continue
                epochs = columns.get("epoch", np.arange(1, len(values) + 1))[: len(values)]
                ax.plot(epochs, values, style, markersize=3.5, label=split)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(name)
            else:
                ax.set_xlabel("epoch")
            if col == 0:
                ax.set_ylabel(kind)
            if ax.lines:
                ax.xaxis.get_major_locator().set_params(integer=True)
                ax.legend(fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    return _root(fig)


def plot_confusion_matrix(
    matrix: Any,
    class_names: Sequence[str] | None = None,
    *,
    ax: Axes | None = None,
    normalize: bool = False,
    title: str | None = "Confusion matrix",
    cmap: str = "Blues",
) -> Figure:
    """A (K, K) confusion matrix, rows the true class, columns the predicted one, with counts.

    With `normalize`, colours and labels are row fractions (per-class recall), counts kept in
    brackets.
    """
    import seaborn as sns

    counts = _array(matrix)
    k = counts.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    shown = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    labels = [
        [f"{shown[i, j]:.1%}\n({counts[i, j]:.0f})" if normalize else f"{counts[i, j]:.0f}"
         for j in range(k)]
        for i in range(k)
    ]  # fmt: skip
    ax = _axes(ax, (1.2 * k + 2.0, 1.1 * k + 1.4))
    # seaborn: annotated cells, text colour by cell luminance, ticks centred on the cells.
    sns.heatmap(
        shown,
        ax=ax,
        annot=np.array(labels, dtype=object),
        fmt="",
        cmap=cmap,
        vmin=0,
        vmax=1 if normalize else None,
        square=True,
        xticklabels=names,
        yticklabels=names,
        annot_kws={"fontsize": "small"},
        cbar_kws={"shrink": 0.8},
    )
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    return _root(ax)


def plot_misclassified(
    images: Sequence[Any],
    true: Sequence[int],
    predicted: Sequence[int],
    probabilities: Any,
    class_names: Sequence[str],
    *,
    maps: Any | None = None,
    fig: FigureBase | None = None,
    ncols: int = 6,
    title: str | None = "Misclassified images",
    **overlay: Any,
) -> Figure:
    """Misclassified images with the true class, the prediction and its probability.

    `images` are display images (H, W, 3) uint8, `probabilities` (n, K) softmax outputs. With
    `maps` (n, G, G), e.g. `analysis.relevance_maps(...)[0]`, each image gets a second panel
    with the map over it ("why did it get this wrong?"). An empty list draws a note saying so.
    """
    n = len(images)
    if n == 0:
        fig = fig if fig is not None else _new_figure((4.0, 1.0))
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
        return _root(fig)
    probs = _array(probabilities)
    rows, cols = _grid_shape(n, ncols)
    per_item = 1 if maps is None else 2
    fig = fig if fig is not None else _new_figure((2.0 * cols, 2.3 * rows * per_item + 0.4))
    axes = np.asarray(fig.subplots(rows * per_item, cols, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    for i in range(n):
        row, col = divmod(i, cols)
        ax = axes[row * per_item, col]
        ax.imshow(np.asarray(images[i]))
        t, p = int(true[i]), int(predicted[i])
        ax.set_title(
            f"true {class_names[t]}\npred {class_names[p]} ({probs[i, p]:.2f})", fontsize="small"
        )
        if maps is not None:
            plot_attention(images[i], _array(maps[i]), ax=axes[row * per_item + 1, col], **overlay)
            axes[row * per_item + 1, col].set_axis_off()
    if title:
        fig.suptitle(title)
    return _root(fig)
