"""Attention over an input image: one map, named maps in a row, every head of a layer, and
the patch grid those maps live on.

The study's Figures 5 and 6 and the paper's Figure 1. Images are display images (H, W, 3)
uint8; maps (G, G) come from `analysis.attention_maps`, `rollout_map` or `relevance_maps`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, FigureBase
from matplotlib.patches import Rectangle

from vitlib.viz.base import _array, _axes, _grid_shape, _minmax, _new_figure, _root

__all__ = [
    "plot_attention",
    "plot_attention_heads",
    "plot_attention_panels",
    "plot_patches",
]

ATTENTION_CMAP = "inferno"


# ---------------------------------------------------------------------- attention


def _draw_image(
    ax: Axes,
    image: Any,
    *,
    title: str | None = None,
    query: tuple[int, int] | None = None,
    grid: tuple[int, int] | None = None,
) -> None:
    """A display image without ticks; `query`, a (row, col) cell of a `grid`, outlined."""
    img = np.asarray(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    if query is not None and grid is not None:
        cell_h, cell_w = img.shape[0] / grid[0], img.shape[1] / grid[1]
        row, col = query
        corner = (col * cell_w - 0.5, row * cell_h - 0.5)  # pixel centres sit on integers
        ax.add_patch(Rectangle(corner, cell_w, cell_h, fill=False, edgecolor="cyan", linewidth=1.5))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize="medium")


def plot_attention(
    image: Any,
    attention: Any,
    *,
    ax: Axes | None = None,
    query: tuple[int, int] | None = None,
    title: str | None = None,
    alpha: float = 0.6,
    cmap: str = ATTENTION_CMAP,
    normalize: bool = True,
    interpolation: str = "nearest",
    colorbar: bool = False,
) -> Figure:
    """One attention map (G, G) drawn over its image (H, W, 3) uint8.

    The map is stretched over the whole image (any display size), min-max scaled unless
    `normalize=False`; `query`, a (row, col) patch, is outlined. For the class-token query
    leave it None. Maps come from `analysis.attention_maps`, `rollout_map` or `relevance_maps`.
    """
    amap = _array(attention)
    if amap.ndim != 2:
        raise ValueError(f"expected one (G, G) map, got {amap.shape}")
    if normalize:
        amap = _minmax(amap)
    ax = _axes(ax, (3.2, 3.2))
    _draw_image(ax, image, title=title, query=query, grid=amap.shape)
    height, width = np.asarray(image).shape[:2]
    shown = ax.imshow(
        amap,
        cmap=cmap,
        alpha=alpha,
        extent=(-0.5, width - 0.5, height - 0.5, -0.5),  # stretched over the image's pixels
        interpolation=interpolation,
        vmin=0 if normalize else None,
        vmax=1 if normalize else None,
    )
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, shrink=0.8)
    return _root(ax)


def plot_attention_panels(
    image: Any,
    maps: Mapping[str, Any],
    *,
    fig: FigureBase | None = None,
    show_image: bool = True,
    query: tuple[int, int] | None = None,
    **overlay: Any,
) -> Figure:
    """The image, then one overlay per named map, in a row.

    For the study's Figure 6: `{"rollout": ..., "gradient rollout: dog": ..., "... cat": ...}`,
    each (G, G). `overlay` goes to `plot_attention` (alpha, cmap, normalize, interpolation).
    """
    panels = len(maps) + int(show_image)
    fig = fig if fig is not None else _new_figure((2.6 * panels, 2.9))
    axes = np.atleast_1d(fig.subplots(1, panels))
    if show_image:
        grid = _array(next(iter(maps.values()))).shape if maps else None
        _draw_image(axes[0], image, title="image", query=query, grid=grid)
    for ax, (label, amap) in zip(axes[int(show_image) :], maps.items(), strict=True):
        plot_attention(image, amap, ax=ax, query=query, title=label, **overlay)
    return _root(fig)


def plot_attention_heads(
    image: Any,
    maps: Any,
    *,
    fig: FigureBase | None = None,
    query: tuple[int, int] | None = None,
    title: str | None = None,
    ncols: int | None = None,
    **overlay: Any,
) -> Figure:
    """All heads of one layer: the image, then head 1..H's map over it (the study's Figure 5).

    `maps` is (H, G, G) from `analysis.attention_maps`. Each head is scaled on its own (pass
    `normalize=False` to compare raw probabilities).
    """
    maps = _array(maps)
    heads = maps.shape[0]
    rows, cols = _grid_shape(heads + 1, ncols or min(heads + 1, 7))
    fig = fig if fig is not None else _new_figure((2.0 * cols, 2.1 * rows + 0.3))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    _draw_image(axes[0], image, title="image", query=query, grid=maps.shape[1:])
    axes[0].title.set_fontsize("small")
    for head, ax in enumerate(axes[1 : heads + 1]):
        plot_attention(image, maps[head], ax=ax, query=query, **overlay)
        ax.set_title(f"head {head + 1}", fontsize="small")
    for ax in axes[heads + 1 :]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _root(fig)


# ------------------------------------------------------------------ patches


def plot_patches(
    image: Any, patch_size: int, *, fig: FigureBase | None = None, gap: int = 2
) -> Figure:
    """The image (H, W, 3) uint8 with its patch grid, beside the patches pulled apart in
    reading order: the tokens the ViT sees (the paper's Figure 1)."""
    image = np.asarray(image)
    height, width = image.shape[:2]
    rows, cols = height // patch_size, width // patch_size
    step = patch_size + gap
    exploded = np.full((rows * step - gap, cols * step - gap, 3), 255, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            exploded[r * step : r * step + patch_size, c * step : c * step + patch_size] = image[
                r * patch_size : (r + 1) * patch_size, c * patch_size : (c + 1) * patch_size
            ]
    fig = fig if fig is not None else _new_figure((8.0, 4.2))
    left, right = fig.subplots(1, 2)
    left.imshow(image)
    for k in range(1, rows):
        left.axhline(k * patch_size - 0.5, color="white", linewidth=0.8)
    for k in range(1, cols):
        left.axvline(k * patch_size - 0.5, color="white", linewidth=0.8)
    left.set_title(f"{height}x{width} image, {patch_size}x{patch_size} patches")
    right.imshow(exploded)
    right.set_title(f"{rows * cols} patch tokens (+1 class token)")
    for ax in (left, right):
        ax.set_axis_off()
    return _root(fig)
