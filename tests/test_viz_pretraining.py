"""The pre-training figures draw what they are given, save, and refuse what they cannot draw."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vitlib import viz  # noqa: E402
from vitlib.viz.pretraining import (  # noqa: E402
    plot_backbones,
    plot_label_efficiency,
    plot_pretraining_curve,
    plot_reconstructions,
)

ROWS = [
    {"backbone": b, "method": m, "labels": n, "accuracy": a, "low": a - 0.05, "high": a + 0.04}
    for b, base in (("random init", 0.55), ("MAE (here)", 0.7))
    for m in ("probe", "finetune")
    for n, a in ((100, base), (1000, base + 0.1))
]


def test_reconstructions_show_one_row_per_image_and_three_columns(tmp_path):
    images = {k: torch.randn(2, 3, 16, 16) for k in ("masked", "prediction", "original")}
    fig = plot_reconstructions(images)
    assert len(fig.axes) == 6 and [ax.get_title() for ax in fig.axes[:3]] == [
        "masked", "prediction", "original"
    ]  # fmt: skip
    shown = fig.axes[2].images[0].get_array()
    expected = np.clip(images["original"][0].permute(1, 2, 0).numpy() * 0.5 + 0.5, 0, 1)
    assert np.allclose(shown, expected)  # un-normalised with mean = std = 0.5
    paths = viz.save_figure(fig, tmp_path, "07_reconstructions")
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(ValueError, match="missing"):
        plot_reconstructions({"masked": images["masked"]})


def test_label_efficiency_draws_a_line_with_intervals_per_backbone_and_method():
    fig = plot_label_efficiency(ROWS)
    probe, finetune = fig.axes
    assert probe.get_xscale() == "log" and [t.get_text() for t in finetune.get_legend().texts] == [
        "random init", "MAE (here)"
    ]  # fmt: skip
    line = probe.lines[0]
    assert list(line.get_xdata()) == [100, 1000] and list(line.get_ydata()) == [0.55, 0.65]
    with pytest.raises(ValueError, match="no results"):
        plot_label_efficiency([])


def test_the_loss_curve_and_the_backbone_views_draw():
    fig = plot_pretraining_curve([{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.6}])
    assert list(fig.axes[0].lines[0].get_ydata()) == [1.0, 0.6]
    sim = torch.eye(16)
    image = np.zeros((32, 32, 3), np.uint8)
    fig = plot_backbones(["a", "b"], image, [torch.rand(4, 4)] * 2, [sim, sim])
    assert len(fig.axes) == 6
    centre = fig.axes[1].images[0].get_array()
    assert centre[2, 2] == 1 and centre.sum() == 1  # patch (2, 2) is only like itself
    with pytest.raises(ValueError, match="one attention map"):
        plot_backbones(["a"], image, [], [sim])
