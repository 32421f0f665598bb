"""Every figure draws from a tiny model's data, saves as PNG + SVG, and leaves pyplot alone."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vitlib import analysis, viz  # noqa: E402
from vitlib.model import build_vit  # noqa: E402

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
HISTORY = {"train_loss": [0.9, 0.5], "train_acc": [0.6, 0.8], "val_loss": [1.0, 0.7]}
# As vitlib.train keeps it: one dict per epoch, "*_accuracy" and keys the figure does not use.
TRAIN_HISTORY = [
    dict(epoch=1, lr=1e-3, train_loss=0.7, train_accuracy=0.5, val_loss=0.6, val_accuracy=0.6),
    dict(epoch=2, lr=5e-4, train_loss=0.4, train_accuracy=0.8, val_loss=0.5, val_accuracy=0.7),
]


@pytest.fixture(scope="module")
def tiny():
    """A tiny model, two images, their display versions and the model-level summary."""
    torch.manual_seed(0)
    model = build_vit("vit_custom", num_classes=2, **TINY).eval()
    torch.nn.init.normal_(model.head.weight)
    x = torch.randn(2, 3, 32, 32)
    display = ((x.permute(0, 2, 3, 1) * 0.25 + 0.5).clamp(0, 1) * 255).byte().numpy()
    _, attn = analysis.get_attention(model, x)
    summary = analysis.summarise_model(model, x, k=6)
    return dict(model=model, x=x, display=display, attn=attn, summary=summary)


def _figures(tiny):
    """name -> a thunk drawing that figure, one per plot function (and per notable variant)."""
    attn, display, summary, model, x = (
        tiny[k] for k in ("attn", "display", "summary", "model", "x")
    )
    maps, logits = analysis.relevance_maps(model, x)
    probabilities = logits.softmax(dim=-1)
    for_dog, _ = analysis.relevance_maps(model, x[:1], method="gradient", target=1)
    return {
        viz.figure_name("position_similarity", "tiny"): lambda: viz.plot_position_similarity(
            summary["position_similarity"]
        ),
        viz.figure_name("attention", "tiny", "layer1", "head1", "cls"): lambda: viz.plot_attention(
            display[0], analysis.attention_maps(attn, layer=0)[0], colorbar=True
        ),
        viz.figure_name("attention_heads", "tiny", "layer2"): lambda: viz.plot_attention_heads(
            display[0], analysis.attention_maps(attn, layer=1, query=(1, 2)), query=(1, 2)
        ),
        viz.figure_name("attention_rollout", "tiny"): lambda: viz.plot_attention_panels(
            display[0], {"rollout": maps[0], "gradient rollout: dog": for_dog[0]}
        ),
        viz.figure_name("attention_distance", "tiny"): lambda: viz.plot_attention_distance(
            summary["attention_distance"]
        ),
        viz.figure_name("embedding_filters", "tiny"): lambda: viz.plot_filters(
            summary["filters"], summary["explained_variance"]
        ),
        viz.figure_name("training_curves"): lambda: viz.plot_training_curves(
            {"probe": HISTORY, "finetune": TRAIN_HISTORY}
        ),
        viz.figure_name("confusion_matrix", "finetune"): lambda: viz.plot_confusion_matrix(
            [[5, 1], [2, 4]], ["cat", "dog"], normalize=True
        ),
        viz.figure_name("misclassified", "finetune"): lambda: viz.plot_misclassified(
            display, [0, 1], [1, 0], probabilities, ["cat", "dog"], maps=maps
        ),
        viz.figure_name("misclassified", "probe"): lambda: viz.plot_misclassified(
            [], [], [], [], ["cat", "dog"]
        ),
        viz.figure_name("before_after"): lambda: viz.plot_before_after(
            {"pretrained": summary, "fine-tuned": summary}
        ),
        viz.figure_name("patches", "tiny"): lambda: viz.plot_patches(display[0], 8),
    }


def test_every_figure_draws_and_saves_png_and_svg(tiny, tmp_path):
    import matplotlib.pyplot as plt  # only to check that viz leaves its state alone

    open_figures, rc = plt.get_fignums(), dict(matplotlib.rcParams)
    figures = _figures(tiny)
    assert len(figures) == 12
    for name, draw in figures.items():
        fig = draw()
        assert isinstance(fig, Figure), name
        paths = viz.save_figure(fig, tmp_path / "figures", name)
        assert [p.name for p in paths] == [f"{name}.png", f"{name}.svg"]
        assert paths[0].read_bytes().startswith(b"\x89PNG"), name
        assert b"<svg" in paths[1].read_bytes()[:2000], name
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(
        f"{name}.{ext}" for name in figures for ext in ("png", "svg")
    )  # nothing else left behind (no temporary files)
    assert plt.get_fignums() == open_figures  # no figure went through pyplot
    assert dict(matplotlib.rcParams) == rc


def test_figure_names_are_stable():
    assert viz.figure_name("attention_heads", "Fine-tuned", "layer 11") == (
        "attention_heads_fine-tuned_layer-11"
    )
    assert viz.figure_name("training_curves") == "training_curves"
    with pytest.raises(ValueError, match="unknown figure"):
        viz.figure_name("attention_map")


def test_save_figure_is_reproducible_and_checks_names(tmp_path):
    fig = viz.plot_attention_distance(np.arange(6.0).reshape(3, 2))
    first = [p.read_bytes() for p in viz.save_figure(fig, tmp_path / "a", "distance")]
    second = [p.read_bytes() for p in viz.save_figure(fig, tmp_path / "b", "distance")]
    assert first == second
    for bad in ("../up", "a/b", "figure.png", ""):
        with pytest.raises(ValueError, match="file stem"):
            viz.save_figure(fig, tmp_path, bad)


def test_plots_draw_on_the_axes_or_subfigure_they_are_given(tiny):
    fig = Figure()
    left, right = fig.subfigures(1, 2)
    ax = left.add_subplot()
    assert viz.plot_attention(tiny["display"][0], torch.rand(4, 4), ax=ax) is fig
    assert ax.images  # drawn there
    assert viz.plot_filters(tiny["summary"]["filters"], fig=right) is fig
    assert len(right.axes) == 6
    assert len(fig.axes) == 7


def test_position_similarity_panels_are_laid_out_like_the_patch_grid():
    sim = torch.rand(16, 16)
    fig = viz.plot_position_similarity(sim)
    mosaic = fig.axes[0].images[0].get_array()
    step = 5  # a 4x4 panel and one blank column / row
    for row in range(4):
        for col in range(4):
            panel = mosaic[row * step : row * step + 4, col * step : col * step + 4]
            np.testing.assert_allclose(panel, sim[row * 4 + col].reshape(4, 4).numpy())
    assert np.ma.getmaskarray(mosaic)[4].all()  # the gap between panel rows is blank
    assert len(fig.axes) == 2  # the mosaic and one shared colour bar


def test_training_curves_take_columns_or_rows():
    as_rows = [
        dict(zip(HISTORY, values, strict=True)) for values in zip(*HISTORY.values(), strict=True)
    ]
    by_columns = viz.plot_training_curves({"probe": HISTORY})
    by_rows = viz.plot_training_curves({"probe": as_rows})
    for a, b in zip(by_columns.axes, by_rows.axes, strict=True):
        assert [line.get_ydata().tolist() for line in a.lines] == [
            line.get_ydata().tolist() for line in b.lines
        ]
    loss_axes = by_columns.axes[0]
    assert [line.get_label() for line in loss_axes.lines] == ["train", "val"]
    assert loss_axes.lines[1].get_ydata().tolist() == HISTORY["val_loss"]
    # vitlib.train's history: both splits of both metrics, against its "epoch" column.
    fig = viz.plot_training_curves({"probe": HISTORY, "finetune": TRAIN_HISTORY})
    accuracy = fig.axes[3]  # second row (accuracy), second column (finetune)
    assert [line.get_ydata().tolist() for line in accuracy.lines] == [[0.5, 0.8], [0.6, 0.7]]
    assert accuracy.lines[0].get_xdata().tolist() == [1, 2]


def test_confusion_matrix_writes_the_counts():
    fig = viz.plot_confusion_matrix([[7, 1], [3, 9]], ["cat", "dog"])
    assert [t.get_text() for t in fig.axes[0].texts] == ["7", "1", "3", "9"]


def test_new_figures_show_themselves_in_jupyter():
    fig = viz.plot_confusion_matrix([[1, 0], [0, 1]])
    assert isinstance(fig, viz.NotebookFigure)
    assert fig._repr_png_().startswith(b"\x89PNG")  # what IPython displays, no pyplot needed


def test_patches_are_pulled_apart_in_reading_order():
    image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    fig = viz.plot_patches(image, 8, gap=2)
    exploded = fig.axes[1].images[0].get_array()
    assert exploded.shape == (18, 18, 3)
    assert np.array_equal(exploded[10:, :8], image[8:, :8])  # patch (1, 0) below the gap
    assert np.array_equal(exploded[:8, 10:], image[:8, 8:])  # patch (0, 1)
    assert (exploded[8:10] == 255).all()  # the white gap between patch rows
