"""Comparing the model variants: accuracy against cost, and attention memory against
sequence length.

Draws what `vitlib.variants` measures: its comparison rows and `attention_memory_by_length`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, FigureBase
from matplotlib.ticker import MaxNLocator

from vitlib.viz.base import _axes, _new_figure, _root
from vitlib.viz.results import _history_columns

__all__ = ["plot_attention_memory", "plot_variant_comparison"]


def plot_variant_comparison(
    rows: Sequence[Mapping[str, Any]],
    histories: Mapping[str, Any],
    *,
    fig: FigureBase | None = None,
    title: str | None = None,
) -> Figure:
    """Four panels: validation accuracy per epoch, and final validation accuracy against
    training minutes, parameters and attention memory (MiB), one colour per variant.

    `rows` are `vitlib.variants` comparison rows ("variant", "val_accuracy",
    "train_minutes", "params", "attention_bytes"); `histories` maps a variant to its
    per-epoch history (as `plot_training_curves` takes it).
    """
    if not rows:
        raise ValueError("no variants given")
    fig = fig if fig is not None else _new_figure((14.0, 3.4))
    axes = fig.subplots(1, 4, sharey=True)
    colours = matplotlib.colormaps["tab10"](np.arange(len(rows)) % 10)
    for row, colour in zip(rows, colours, strict=True):
        name = row["variant"]
        columns = _history_columns(histories.get(name, []))
        if "val_accuracy" in columns:
            values = columns["val_accuracy"]
            axes[0].plot(
                np.arange(1, len(values) + 1), values, "-o", ms=3, color=colour, label=name
            )
        for ax, key, scale in zip(
            axes[1:], ("train_minutes", "params", "attention_bytes"), (1, 1e-6, 2**-20), strict=True
        ):
            ax.scatter(row[key] * scale, row["val_accuracy"], s=40, color=colour)
            ax.annotate(
                name,
                (row[key] * scale, row["val_accuracy"]),
                fontsize="x-small",
                xytext=(3, 3),
                textcoords="offset points",
            )
    axes[0].set_xlabel("epoch")
    axes[0].xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("validation accuracy")
    axes[0].legend(fontsize="x-small", frameon=False)
    for ax, label in zip(
        axes[1:],
        ("training time (min)", "parameters (millions)", "attention memory per layer (MiB)"),
        strict=True,
    ):
        ax.set_xlabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(4))
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _root(fig)


def plot_attention_memory(
    token_counts: Sequence[int],
    memory: Mapping[str, Sequence[float]],
    *,
    ax: Axes | None = None,
    title: str | None = "Attention memory against sequence length",
) -> Figure:
    """Bytes held by one attention layer against tokens N, log-log, one line per kind
    ({kind: [bytes per N]}, as `vitlib.variants.attention_memory_by_length` gives), with
    dotted guides of slope 1 (linear) and 2 (quadratic) through the first point."""
    ax = _axes(ax, (4.6, 3.6))
    n = np.asarray(token_counts, dtype=float)
    for kind, values in memory.items():
        ax.plot(n, np.asarray(values, dtype=float) / 2**20, "-o", ms=4, label=kind)
    first = min(float(v[0]) for v in memory.values()) / 2**20
    for power, label in ((1, "~N"), (2, "~N²")):
        ax.plot(n, first * (n / n[0]) ** power, ":", color="grey", lw=1)
        ax.annotate(label, (n[-1], first * (n[-1] / n[0]) ** power), fontsize="x-small")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens N")
    ax.set_ylabel("MiB (forward, kept for backward)")
    ax.legend(fontsize="small", frameon=False)
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title)
    return _root(ax)
