"""What every figure shares: a new Figure that shows itself in Jupyter, a stable name, saving.

`NotebookFigure` (made by `_new_figure` / `_axes` when a plot function is given no Axes or
Figure) displays as a PNG without pyplot; `_root` finds the Figure that saves. `figure_name` and
`save_figure` turn a figure into reproducible .png and .svg files: the one place `vitlib.viz`
touches files. `FIGURES` lists the stems the notebooks write.
"""

from __future__ import annotations

import base64
import io
import math
import re
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, FigureBase

from vitlib.files import atomic_write

__all__ = ["FIGURES", "NotebookFigure", "describe_figure", "figure_name", "save_figure"]

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
    """A Figure that shows itself as a PNG in Jupyter without pyplot's inline backend, with
    its titles and axis labels as the image's alternative text (`describe_figure`)."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        png = base64.b64encode(self._repr_png_()).decode("ascii")
        alt = describe_figure(self)
        return {"image/png": png, "text/plain": alt}, {"image/png": {"alt": alt}}


def describe_figure(fig: Figure | FigureBase, *, limit: int = 400) -> str:
    """A figure in words, from what it says: its title, then each panel's title and axis
    labels ("Figure: Confusion matrix; panel: x predicted, y true"), at most `limit` chars."""
    fig = _root(fig)
    parts = []
    for sub in [fig, *fig.subfigs]:
        title = sub._suptitle.get_text() if getattr(sub, "_suptitle", None) else ""
        if title:
            parts.append(title)
    panels = []
    for ax in fig.get_axes():
        words = [ax.get_title()]
        xlabel, ylabel = ax.get_xlabel(), ax.get_ylabel()
        if xlabel or ylabel:
            words.append(f"x: {xlabel or '-'}, y: {ylabel or '-'}")
        text = ", ".join(w for w in words if w)
        if text and text not in panels:
            panels.append(text)
    shown = len(panels)
    if not parts and not panels:
        return "Figure"
    text = "Figure: " + " ".join("; ".join([*parts, *panels[:8]]).split())
    if shown > 8:
        text += f"; and {shown - 8} more panels"
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
