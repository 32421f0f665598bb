"""Drawing the study's figures: data in, a matplotlib Figure out.

Every plot function takes plain data (arrays, tensors, lists, dicts; computed by
`vitlib.analysis` or read from a run directory) and draws on the Axes (`ax=`) or Figure /
SubFigure (`fig=`) it is given, or on a new `matplotlib.figure.Figure`, and returns the root
Figure. Nothing here imports pyplot: no global figure state, no `plt.show()`. A new figure is
a `NotebookFigure`, which Jupyter shows as a PNG when it is the last expression of a cell (or
passed to `display`), with or without `%matplotlib inline`; `save_figure` keeps it.

Figures (file stems come from `figure_name`, written by `save_figure` as .png and .svg):

    position_similarity_<model>   plot_position_similarity  paper Fig. 7 centre, study Fig. 3
    attention_heads_<model>_...   plot_attention_heads      study Fig. 5: all heads of a layer
    attention_<model>_...         plot_attention            one head / one query over the image
    attention_rollout_<model>_... plot_attention_panels     study Fig. 6: rollout vs "for dog"
    attention_distance_<model>    plot_attention_distance   paper Fig. 7 right
    embedding_filters_<model>     plot_filters              paper Fig. 7 left
    training_curves               plot_training_curves      probe and fine-tune side by side
    confusion_matrix_<experiment> plot_confusion_matrix
    misclassified_<experiment>    plot_misclassified        with probabilities and rollout
    before_after                  plot_before_after         filters, positions, distances x models
    variants                      plot_variant_comparison   accuracy vs time, params, memory
    attention_memory              plot_attention_memory     bytes vs tokens per attention kind
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, FigureBase
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from vitlib.files import atomic_write

__all__ = [
    "FIGURES",
    "NotebookFigure",
    "figure_name",
    "plot_attention",
    "plot_attention_distance",
    "plot_attention_heads",
    "plot_attention_memory",
    "plot_attention_panels",
    "plot_before_after",
    "plot_confusion_matrix",
    "plot_filters",
    "plot_misclassified",
    "plot_patches",
    "plot_position_similarity",
    "plot_training_curves",
    "plot_variant_comparison",
    "save_figure",
]

# The stems of every figure the notebooks write; `figure_name` appends the parts.
FIGURES = (
    "position_similarity",
    "attention",
    "attention_heads",
    "attention_rollout",
    "attention_distance",
    "embedding_filters",
    "training_curves",
    "confusion_matrix",
    "misclassified",
    "before_after",
    "patches",
    "variants",
    "attention_memory",
)
ATTENTION_CMAP = "inferno"
# Per-epoch history keys as vitlib.train writes them, and the short names also accepted.
METRICS = ("epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy")
METRIC_ALIASES = {"train_acc": "train_accuracy", "val_acc": "val_accuracy"}


# ---------------------------------------------------------------------------- helpers


def _array(x: Any) -> np.ndarray:
    """A tensor, array or nested list -> a float NumPy array (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def _root(obj: Axes | FigureBase) -> Figure:
    """The Figure an Axes or SubFigure belongs to (the one that saves)."""
    fig = obj if isinstance(obj, FigureBase) else obj.figure
    while not isinstance(fig, Figure):
        fig = fig.figure
    return fig


class NotebookFigure(Figure):
    """A Figure that shows itself as a PNG in Jupyter without pyplot's inline backend."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()


def _new_figure(figsize: tuple[float, float]) -> Figure:
    return NotebookFigure(figsize=figsize, layout="constrained")


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    return ax if ax is not None else _new_figure(figsize).add_subplot()


def _grid_shape(n: int, ncols: int | None) -> tuple[int, int]:
    ncols = max(1, min(n, ncols or math.ceil(math.sqrt(n))))
    return math.ceil(n / ncols), ncols


def _minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def _slug(part: Any) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", str(part).lower()).strip("-")


def figure_name(kind: str, *parts: Any) -> str:
    """A stable file stem: `figure_name("attention_heads", "finetuned", "layer11")`.

    `kind` is one of `FIGURES`; parts are lower-cased and made file-name safe.
    """
    if kind not in FIGURES:
        raise ValueError(f"unknown figure {kind!r}; expected one of {FIGURES}")
    return "_".join([kind, *(s for s in map(_slug, parts) if s)])


def save_figure(
    fig: Figure | FigureBase, directory: str | Path, name: str, *, dpi: int = 150
) -> list[Path]:
    """Write `name`.png and `name`.svg into `directory` (created if missing); return both paths.

    Each file is rendered in memory and written with `vitlib.files.atomic_write` (a temporary
    file renamed into place), so a reader never sees half a figure. The SVG carries no date
    and fixed ids, so re-rendering an unchanged figure gives an identical file.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name.endswith((".png", ".svg")):
        raise ValueError(f"figure name must be a plain file stem without extension, got {name!r}")
    fig = _root(fig)
    paths = []
    for fmt, metadata in (("png", {"Software": None}), ("svg", {"Date": None})):
        buffer = io.BytesIO()
        with matplotlib.rc_context({"svg.hashsalt": name}):
            fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
        path = Path(directory) / f"{name}.{fmt}"
        atomic_write(path, buffer.getvalue())
        paths.append(path)
    return paths


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


# ---------------------------------------------------------------------- training


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
    counts = _array(matrix)
    k = counts.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    shown = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    ax = _axes(ax, (1.2 * k + 2.0, 1.1 * k + 1.4))
    image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=1 if normalize else None)
    threshold = (shown.max() + shown.min()) / 2
    for i in range(k):
        for j in range(k):
            count = f"{counts[i, j]:.0f}"
            text = f"{shown[i, j]:.1%}\n({count})" if normalize else count
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize="small",
                color="white" if shown[i, j] > threshold else "black",
            )
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, shrink=0.8)
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


# ------------------------------------------------------------------- variants


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
