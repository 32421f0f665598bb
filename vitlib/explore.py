"""Exploring where a ViT looks, live in JupyterLab: one image, any layer, head, query and method.

    from vitlib.explore import explore
    explore(model, test, run_dir=cfg.run_dir / "finetune")     # the last expression of a cell

The widget (ipywidgets) picks an image (the test split, the run's misclassified images first, or
an uploaded file, preprocessed with the model's own `pretrained_cfg`), a layer and a head, the
query token (the class token or a patch, by row and column) and a method:

    attention   one head's raw attention in one layer (`analysis.attention_maps`)
    rollout     attention rollout through layers 1..layer (Abnar & Zuidema 2020)
    gradient    class-specific, gradient-weighted rollout through layers 1..layer (after
                Chefer et al. 2021) for the chosen class
    position    cosine similarity of the query patch's position embedding with every other's
                (the paper's Figure 7, centre, one patch at a time)

and the overlay's opacity; the predicted probabilities are shown beside the image. Each image
costs one forward pass (its attention is kept, `ImageState`), a class's gradient one backward
pass the first time it is asked for; a slider move only indexes what is kept and redraws a PNG
with NumPy and Pillow (no matplotlib figure), in milliseconds.

`Explorer` holds the logic and is usable without a browser: set a widget's value and
`current_map()`, `view.value` and `probabilities.value` follow. Displayed in a notebook, it is
the live widget where a widget manager runs (JupyterLab) and a PNG of its current view
elsewhere (the HTML report, which leaves widget views out: `vitlib.report.build_html`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import matplotlib
import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor, nn

from vitlib import analysis
from vitlib.data import open_image
from vitlib.errors import DataError
from vitlib.images import load_image

__all__ = ["METHODS", "Explorer", "ImageState", "explore", "overlay_png"]

log = logging.getLogger(__name__)

METHODS = {
    "attention": "attention (one head)",
    "rollout": "rollout",
    "gradient": "gradient rollout (class)",
    "position": "position embedding",
}
UPLOADED = "uploaded"


@dataclass
class ImageState:
    """One analysed image: what every redraw reads. `attentions` (L, H, N, N) and
    `probabilities` (K,) come from one forward pass; `gradients[k]` (L, H, N, N), d logit_k /
    d attention, from one backward pass the first time class k is asked for."""

    tensor: Tensor  # (3, H, W), normalised
    display: np.ndarray  # (H, W, 3) uint8
    name: str
    probabilities: Tensor  # (K,)
    attentions: Tensor  # (L, H, N, N)
    gradients: dict[int, Tensor] = field(default_factory=dict)


def analyse_image(model: nn.Module, tensor: Tensor, display: np.ndarray, name: str) -> ImageState:
    """The forward pass behind every view of one image (3, H, W)."""
    logits, attentions = analysis.get_attention(model, tensor[None])
    return ImageState(tensor, display, name, logits.softmax(-1)[0], attentions[:, 0])


def overlay_png(
    display: np.ndarray,
    amap: Tensor | np.ndarray,
    *,
    opacity: float = 0.6,
    cmap: str = "inferno",
    size: int = 320,
    query: tuple[int, int] | None = None,
) -> bytes:
    """A (G, G) map, min-max scaled and coloured, over its image (H, W, 3) uint8, as PNG bytes.

    The image is enlarged by a whole factor to about `size` pixels (nearest neighbour, so
    patches stay sharp); `query`, a (row, col) patch, is outlined in cyan.
    """
    amap = np.asarray(amap.detach().float().cpu() if isinstance(amap, Tensor) else amap, float)
    if amap.ndim != 2:
        raise ValueError(f"expected one (G, G) map, got shape {amap.shape}")
    span = amap.max() - amap.min()
    scaled = (amap - amap.min()) / span if span > 0 else np.zeros_like(amap)
    colours = matplotlib.colormaps[cmap](scaled)[..., :3] * 255  # (G, G, 3)
    height, width = display.shape[:2]
    rows = np.arange(height) * amap.shape[0] // height
    cols = np.arange(width) * amap.shape[1] // width
    stretched = colours[rows][:, cols]  # (H, W, 3): each patch's colour over its pixels
    blended = (1 - opacity) * display.astype(float) + opacity * stretched
    image = Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
    factor = max(1, round(size / max(height, width)))
    image = image.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    if query is not None:
        cell_h, cell_w = height * factor / amap.shape[0], width * factor / amap.shape[1]
        r, c = query
        box = (c * cell_w, r * cell_h, (c + 1) * cell_w - 1, (r + 1) * cell_h - 1)
        ImageDraw.Draw(image).rectangle(box, outline=(0, 255, 255), width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over size: it is redrawn live
    return buffer.getvalue()


class Explorer:
    """The explorer's state and widgets (`box`); see the module docstring.

    `model` is a vitlib ViT (its `classes` name the outputs); `dataset` an `ImageDataset` of
    display-size images (the test split), or None for uploads only; `misclassified`, test
    positions listed first (most confident mistake first, as `runs.read_misclassified` gives);
    `image`, the one shown first (a test position or a path; default the first listed).
    At most `cache_size` analysed images are kept.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Any | None = None,
        *,
        misclassified: Sequence[int] = (),
        image: int | str | Path | None = None,
        size: int = 320,
        cache_size: int = 16,
    ) -> None:
        self.model = model.eval()
        self.dataset = dataset
        self.classes = tuple(getattr(model, "classes", range(model.num_classes)))
        self.classes = tuple(str(c) for c in self.classes)
        self.size, self.cache_size = size, cache_size
        self.prefix = getattr(model, "num_prefix_tokens", 1)  # class (and distillation) tokens
        self.grid = model.patch_embed.grid_size
        self.positions = analysis.position_similarity(
            model.pos_embed, num_prefix_tokens=self.prefix
        )  # (G*G, G*G), image-independent
        self.states: OrderedDict[Any, ImageState] = OrderedDict()
        self.state: ImageState | None = None  # the image shown
        self._muted = False
        self.renders = 0  # redraws so far (a test's and a user's clock)
        self.widgets = self._make_widgets(misclassified)
        self.view = widgets.Image(format="png", layout=widgets.Layout(width=f"{size}px"))
        self.probabilities = widgets.HTML()
        self.status = widgets.HTML()
        controls = widgets.VBox(list(self.widgets.values()) + [self.status])
        self.box = widgets.HBox([self.view, widgets.VBox([self.probabilities, controls])])
        choices = self.widgets["image"]
        if isinstance(image, int):
            choices.value = image  # before the observers: one forward, for this image
        for name, widget in self.widgets.items():
            handler = {"image": self._on_image, "upload": self._on_upload}.get(name)
            widget.observe(handler or self._on_change, names="value")
        if image is not None and not isinstance(image, int):
            self.show(image)
        elif choices.value is not None:
            self.show(choices.value)

    # --------------------------------------------------------------------------- widgets

    def _image_options(self, misclassified: Sequence[int]) -> list[tuple[str, Any]]:
        if self.dataset is None:
            return []
        wrong = [int(i) for i in misclassified if 0 <= int(i) < len(self.dataset)]
        rest = [i for i in range(len(self.dataset)) if i not in set(wrong)]
        classes = self.dataset.classes

        def label(i: int, mark: str) -> str:
            return f"{mark}#{i} {classes[int(self.dataset.labels[i])]}"

        return [(label(i, "✗ "), i) for i in wrong] + [(label(i, ""), i) for i in rest]

    def _make_widgets(self, misclassified: Sequence[int]) -> dict[str, widgets.Widget]:
        depth, heads = len(self.model.blocks), self.model.num_heads
        wide = {"style": {"description_width": "80px"}}
        query = ["class token", "patch"] if self.prefix else ["patch"]
        return {
            "image": widgets.Dropdown(
                options=self._image_options(misclassified), description="image", **wide
            ),
            "upload": widgets.FileUpload(accept="image/*", description="upload"),
            "method": widgets.ToggleButtons(
                options=[(label, key) for key, label in METHODS.items()],
                value="rollout",
                description="method",
                **wide,
            ),
            "layer": widgets.IntSlider(value=depth, min=1, max=depth, description="layer", **wide),
            "head": widgets.IntSlider(value=1, min=1, max=heads, description="head", **wide),
            "query": widgets.ToggleButtons(options=query, description="query", **wide),
            "row": widgets.IntSlider(value=0, min=0, max=self.grid - 1, description="row", **wide),
            "col": widgets.IntSlider(value=0, min=0, max=self.grid - 1, description="col", **wide),
            "target": widgets.Dropdown(
                options=[(c, k) for k, c in enumerate(self.classes)], description="class", **wide
            ),
            "opacity": widgets.FloatSlider(
                value=0.6, min=0.0, max=1.0, step=0.05, description="opacity", **wide
            ),
        }

    def _on_image(self, change: Any = None) -> None:
        index = self.widgets["image"].value
        if index is None:
            return
        self.show(index)

    def _on_change(self, change: Any = None) -> None:
        if self.state is not None and not self._muted:
            self.redraw()

    def _on_upload(self, change: Any) -> None:
        files = change["new"]
        if not files:
            return
        upload = files[-1]
        try:
            self.show_upload(bytes(upload["content"]), upload.get("name", UPLOADED))
        except DataError as exc:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"

    # ----------------------------------------------------------------------------- state

    def show(
        self, source: int | str | Path | Image.Image, *, key: Any = None, name: str | None = None
    ) -> ImageState:
        """Analyse (once; then from the cache, under `key`: by default the position, the path
        or the PIL image's pixels) and show a test position, a path or a PIL image."""
        if key is None:
            pixels = isinstance(source, Image.Image)
            key = ("image", hashlib.sha256(source.tobytes()).hexdigest()) if pixels else source
        if key not in self.states:
            if isinstance(source, int):
                tensor, display = open_image(source, self.model.pretrained_cfg, self.dataset)
                name = f"test #{source}"
            else:
                tensor, display = open_image(source, self.model.pretrained_cfg)
                name = name or (Path(source).name if isinstance(source, str | Path) else UPLOADED)
            self.states[key] = analyse_image(self.model, tensor, display, name)
            while len(self.states) > self.cache_size:
                self.states.popitem(last=False)
        self.states.move_to_end(key)
        self.state = self.states[key]
        predicted = int(self.state.probabilities.argmax())
        self._muted = True  # one redraw below, not one per widget set
        try:
            self.widgets["target"].value = predicted  # "where it looks for what it saw"
        finally:
            self._muted = False
        self.status.value = ""
        self.redraw()
        return self.state

    def show_upload(self, content: bytes, name: str = UPLOADED) -> ImageState:
        """An uploaded file's bytes, decoded as the data layer decodes files (EXIF rotation,
        any mode to RGB) and preprocessed with the model's `pretrained_cfg`."""
        try:
            image = load_image(io.BytesIO(content))
        except Exception as exc:  # PIL raises many types for a bad file
            raise DataError(
                f"{name}: not an image vitlib can read ({type(exc).__name__}: {exc}); upload "
                "a JPEG, PNG, BMP, GIF, WebP or TIFF photo"
            ) from None
        return self.show(image, key=("upload", hashlib.sha256(content).hexdigest()), name=name)

    @property
    def picture(self) -> bytes:
        """The PNG shown now (the view's value; a kernel's comm may hand it back as a
        memoryview)."""
        return bytes(self.view.value)

    def settings(self) -> dict[str, Any]:
        """The widgets' current values."""
        return {name: w.value for name, w in self.widgets.items() if name != "upload"}

    def query(self) -> str | tuple[int, int]:
        s = self.settings()
        if s["query"] == "patch" or s["method"] == "position":
            return (s["row"], s["col"])
        return "cls"

    def gradients(self, target: int) -> Tensor:
        """d logit_target / d attention of the shown image (L, H, N, N), computed once."""
        state = self.state
        if target not in state.gradients:
            _, _, grads = analysis.get_attention_gradients(
                self.model, state.tensor[None], target=target
            )
            state.gradients[target] = grads[:, 0]
        return state.gradients[target]

    def current_map(self) -> Tensor:
        """The (G, G) map the widgets select, for the shown image."""
        s, state, query = self.settings(), self.state, self.query()
        layer = s["layer"] - 1
        attn = state.attentions[:, None]  # (L, 1, H, N, N)
        if s["method"] == "attention":
            return analysis.attention_maps(
                attn, layer=layer, query=query, num_prefix_tokens=self.prefix
            )[s["head"] - 1]
        if s["method"] == "position":
            row, col = query
            return self.positions[row * self.grid + col].reshape(self.grid, self.grid)
        if s["method"] == "rollout":
            rollout = analysis.attention_rollout(attn[: layer + 1])
        else:
            grads = self.gradients(s["target"])[:, None]
            rollout = analysis.gradient_rollout(attn[: layer + 1], grads[: layer + 1])
        return analysis.rollout_map(rollout[0], query=query, num_prefix_tokens=self.prefix)

    # ------------------------------------------------------------------------- drawing

    def redraw(self) -> None:
        """Draw the current map and probabilities into `view` and `probabilities`."""
        s = self.settings()
        method = s["method"]
        self.widgets["head"].disabled = method != "attention"
        self.widgets["target"].disabled = method != "gradient"
        self.widgets["query"].disabled = method == "position"
        patch = self.query() != "cls"
        self.widgets["row"].disabled = self.widgets["col"].disabled = not patch
        self.view.value = overlay_png(
            self.state.display,
            self.current_map(),
            opacity=s["opacity"],
            size=self.size,
            query=self.query() if patch else None,
        )
        self.probabilities.value = self._probability_table()
        self.renders += 1

    def _probability_table(self) -> str:
        probs = self.state.probabilities.tolist()
        top = sorted(range(len(probs)), key=lambda k: -probs[k])[:5]
        rows = "".join(
            f"<tr><td>{html.escape(self.classes[k])}</td><td style='text-align:right'>"
            f"{probs[k]:.3f}</td><td><div style='background:#4c72b0;height:10px;"
            f"width:{100 * probs[k]:.0f}px'></div></td></tr>"
            for k in top
        )
        return f"<b>{html.escape(self.state.name)}</b><table>{rows}</table>"

    def describe(self) -> str:
        """The current view in words (the static view's alternative text)."""
        s = self.settings()
        query = "the class token" if self.query() == "cls" else f"patch {self.query()}"
        what = {
            "attention": f"head {s['head']}'s attention in layer {s['layer']}",
            "rollout": f"attention rollout through layer {s['layer']}",
            "gradient": f"gradient rollout for '{self.classes[s['target']]}' through layer "
            f"{s['layer']}",
            "position": "position-embedding similarity",
        }[s["method"]]
        probs = self.state.probabilities
        best = int(probs.argmax())
        return (
            f"Attention explorer, {self.state.name}: {what} of {query}, over the image; "
            f"predicted {self.classes[best]} ({float(probs[best]):.2f})"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The live widget, and a PNG of the current view for where widgets cannot run."""
        data = dict(self.box._repr_mimebundle_(**kwargs) or {})
        if self.state is not None:
            data["image/png"] = base64.b64encode(self.picture).decode("ascii")
            data["text/plain"] = self.describe()
        return data, {"image/png": {"alt": data.get("text/plain", "attention explorer")}}


def explore(
    model: nn.Module,
    dataset: Any | None = None,
    *,
    run_dir: str | Path | None = None,
    image: int | str | Path | None = None,
    **settings: Any,
) -> Explorer:
    """An `Explorer` over `dataset` (the test split), the misclassified images of `run_dir`
    (a finished run folder, e.g. runs/<profile>/finetune) listed first; `image` shown first;
    `settings` set widgets by name (method="gradient", layer=3, opacity=0.4, ...)."""
    misclassified: Sequence[int] = ()
    if run_dir is not None and dataset is not None:
        from vitlib.runs import read_misclassified

        misclassified = read_misclassified(run_dir)["index"].tolist()
    explorer = Explorer(model, dataset, misclassified=misclassified, image=image)
    unknown = set(settings) - set(explorer.widgets)
    if unknown:
        raise ValueError(f"unknown explorer settings {sorted(unknown)}; expected some of "
                         f"{sorted(set(explorer.widgets) - {'upload'})}")  # fmt: skip
    for name, value in settings.items():
        explorer.widgets[name].value = value
    return explorer
