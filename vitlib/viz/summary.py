"""What a model learned, as `analysis.summarise_model` gives it: the paper's Figure 7, and the
same three views side by side for several models (what fine-tuning changed).

Position-embedding similarity (Fig. 7 centre, the study's Fig. 3), mean attention distance per
head and depth (Fig. 7 right) and the principal components of the patch-embedding filters
(Fig. 7 left).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, FigureBase

from vitlib.viz.base import _array, _axes, _grid_shape, _minmax, _new_figure, _root

__all__ = [
    "plot_attention_distance",
    "plot_before_after",
    "plot_filters",
    "plot_position_similarity",
]

# ------------------------------------------------------------ position embeddings


def plot_position_similarity(
    similarity: Any,
    *,
    fig: FigureBase | None = None,
    title: str | None = "Position embedding similarity",
    vmin: float = -1.0,
    vmax: float = 1.0,
    cmap: str = "viridis",
) -> Figure:
    """The paper's Figure 7 (centre): one small map per patch, laid out like the patch grid.

    `similarity` is (G*G, G*G) from `analysis.position_similarity`. The panel at (row, col)
    shows the cosine similarity of that patch's position embedding with every patch's; all
    panels share one colour scale and one colour bar.
    """
    sim = _array(similarity)
    grid = math.isqrt(sim.shape[0])
    if sim.shape != (grid * grid, grid * grid):
        raise ValueError(f"expected a (G*G, G*G) similarity matrix, got {sim.shape}")
    fig = fig if fig is not None else _new_figure((5.2, 4.5))
    # One image with a one-pixel blank gap between panels draws fast even for 24x24 grids.
    step = grid + 1
    padded = np.full((grid, grid, step, step), np.nan)
    padded[:, :, :grid, :grid] = sim.reshape(grid, grid, grid, grid)  # (row, col, key_r, key_c)
    mosaic = padded.transpose(0, 2, 1, 3).reshape(grid * step, grid * step)[:-1, :-1]
    ax = fig.add_subplot()
    colours = matplotlib.colormaps[cmap].with_extremes(bad="white")
    image = ax.imshow(mosaic, cmap=colours, vmin=vmin, vmax=vmax, interpolation="nearest")
    every = max(1, math.ceil(grid / 12))
    ticks = np.arange(0, grid, every)
    ax.set_xticks(ticks * step + (grid - 1) / 2, [str(t + 1) for t in ticks])
    ax.set_yticks(ticks * step + (grid - 1) / 2, [str(t + 1) for t in ticks])
    ax.tick_params(length=0)
    ax.set_xlabel("Input patch column")
    ax.set_ylabel("Input patch row")
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="Cosine similarity")
    return _root(fig)


# ------------------------------------------------------------ attention distance


def plot_attention_distance(
    distances: Any,
    *,
    ax: Axes | None = None,
    title: str | None = "Mean attention distance",
    ylim: tuple[float, float] | None = None,
) -> Figure:
    """The paper's Figure 7 (right): mean attention distance of each head against depth.

    `distances` is (L, H) in pixels from `analysis.attention_distance`, one dot per head,
    coloured by head; or a mapping {label: (L, H)} to compare models (e.g. pretrained vs
    fine-tuned), one colour per model, side by side within each layer.
    """
    ax = _axes(ax, (4.2, 3.4))
    if isinstance(distances, Mapping):
        series = {label: _array(d) for label, d in distances.items()}
        width = 0.5 / max(1, len(series))
        for i, (label, dist) in enumerate(series.items()):
            layers = np.arange(1, dist.shape[0] + 1) + (i - (len(series) - 1) / 2) * width
            x = np.repeat(layers, dist.shape[1])
            ax.scatter(x, dist.ravel(), s=14, alpha=0.8, label=label)
        ax.legend(fontsize="small", frameon=False)
        depth = max(d.shape[0] for d in series.values())
    else:
        dist = _array(distances)
        depth, heads = dist.shape
        # tab20 pairs light and dark shades of one hue, so it only serves beyond ten heads.
        colours = matplotlib.colormaps["tab10" if heads <= 10 else "tab20"](np.arange(heads) % 20)
        for head in range(heads):
            ax.scatter(
                np.arange(1, depth + 1),
                dist[:, head],
                s=14,
                color=colours[head],
                alpha=0.85,
                label=f"head {head + 1}",
            )
        if heads <= 16:
            ax.legend(fontsize="x-small", frameon=False, ncols=2, loc="lower right")
    ax.set_xticks(np.arange(1, depth + 1, max(1, depth // 12)))
    ax.set_xlim(0.5, depth + 0.5)
    ax.set_xlabel("Network depth (layer)")
    ax.set_ylabel("Mean attention distance (pixels)")
    if ylim is None:  # from 0, with room above the highest dot
        highest = max(float(c.get_offsets()[:, 1].max()) for c in ax.collections)
        ylim = (0.0, 1.08 * highest if highest > 0 else 1.0)
    ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    return _root(ax)


# ------------------------------------------------------------- patch-embedding PCA


def plot_filters(
    components: Any,
    explained: Any | None = None,
    *,
    fig: FigureBase | None = None,
    ncols: int = 7,
    title: str | None = "Patch-embedding filters: principal components",
) -> Figure:
    """The paper's Figure 7 (left): principal components (k, C, P, P) as small RGB patches.

    Each component is min-max scaled on its own for display (its sign is arbitrary up to
    `analysis.filter_pca`'s convention); inputs with C != 3 are shown as their channel mean.
    `explained` (k,), fractions of variance, labels each patch.
    """
    comps = _array(components)
    k = comps.shape[0]
    rows, cols = _grid_shape(k, ncols)
    fig = fig if fig is not None else _new_figure((1.0 * cols + 0.4, 1.1 * rows + 0.5))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    ratios = None if explained is None else _array(explained)
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= k:
            ax.set_axis_off()
            continue
        comp = comps[i]
        patch = comp.transpose(1, 2, 0) if comp.shape[0] == 3 else comp.mean(axis=0)
        ax.imshow(_minmax(patch), cmap=None if patch.ndim == 3 else "gray", interpolation="nearest")
        if ratios is not None:
            ax.set_title(f"{100 * ratios[i]:.1f}%", fontsize="x-small", pad=2)
    if title:
        total = "" if ratios is None else f" ({100 * ratios.sum():.0f}% of variance)"
        fig.suptitle(title + total, fontsize="medium")
    return _root(fig)


# ------------------------------------------------------------------ before / after


def plot_before_after(
    summaries: Mapping[str, Mapping[str, Any]],
    *,
    fig: FigureBase | None = None,
    k: int | None = None,
) -> Figure:
    """What fine-tuning changed: filters, position similarity and attention distance per model.

    `summaries` maps a label ("pretrained", "fine-tuned") to `analysis.summarise_model`'s dict;
    one column per model, one row per view, attention distances on a shared y axis. `k` shows
    only the first k filter components.
    """
    if not summaries:
        raise ValueError("no summaries given")
    labels = list(summaries)
    shown = min(len(_array(s["filters"])[:k]) for s in summaries.values())
    filter_rows, filter_cols = _grid_shape(shown, 7)
    # Row heights in column widths: the filter grid's own aspect, a square mosaic, a scatter.
    heights = (filter_rows / filter_cols + 0.15, 0.9, 0.7)
    width = 5.0
    fig = fig if fig is not None else _new_figure((width * len(labels), width * sum(heights)))
    cells = np.asarray(fig.subfigures(3, len(labels), squeeze=False, height_ratios=heights))
    top = max(float(_array(s["attention_distance"]).max()) for s in summaries.values())
    for col, label in enumerate(labels):
        summary = summaries[label]
        filters = _array(summary["filters"])[:k]
        explained = _array(summary["explained_variance"])[:k]
        plot_filters(filters, explained, fig=cells[0, col], title=f"{label}: filter PCs")
        plot_position_similarity(
            summary["position_similarity"], fig=cells[1, col], title=f"{label}: positions"
        )
        plot_attention_distance(
            summary["attention_distance"],
            ax=cells[2, col].add_subplot(),
            title=f"{label}: attention distance",
            ylim=(0, 1.08 * top if top > 0 else 1.0),
        )
    return _root(fig)
