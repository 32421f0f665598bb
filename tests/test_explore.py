"""The explorer without a browser: widget values in, the map, the picture and the numbers out."""

import base64
import csv
import io
import json
from datetime import datetime, timezone

import numpy as np
import pytest
import torch
from helpers import JAX_CFG
from PIL import Image

from vitlib import analysis
from vitlib.data import ImageDataset, normalise, open_image
from vitlib.explore import Explorer, explore, overlay_png
from vitlib.model import build_vit

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_vit("vit_custom", num_classes=2, **TINY).eval()
    torch.nn.init.normal_(model.head.weight)
    for p in model.parameters():  # a random model attends almost uniformly; spread it out
        p.data.mul_(3)
    model.classes = ("cat", "dog")
    return model


@pytest.fixture(scope="module")
def dataset(model):
    images = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    images.flags.writeable = False  # as the memmap cache is
    cfg = model.pretrained_cfg
    return ImageDataset(images, np.array([0, 1, 0, 1, 0, 1]), [f"{i}.png" for i in range(6)],
                        classes=("cat", "dog"), mean=cfg["mean"], std=cfg["std"])  # fmt: skip


def _attention(model, dataset, i):
    x = normalise(
        np.array(dataset.images[i]), model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    )
    return analysis.get_attention(model, x)[1]  # (L, 1, H, N, N)


def test_moving_a_slider_shows_that_layer_and_head(model, dataset):
    explorer = explore(model, dataset, image=2, method="attention")
    attn = _attention(model, dataset, 2)
    shown = explorer.view.value
    explorer.widgets["layer"].value = 2
    explorer.widgets["head"].value = 2
    expected = analysis.attention_maps(attn, layer=1, query="cls")[1]
    assert torch.allclose(explorer.current_map(), expected, atol=1e-6)
    assert not torch.allclose(expected, analysis.attention_maps(attn, layer=2)[0])  # it matters
    assert explorer.view.value != shown
    display = np.array(dataset.images[2])
    assert explorer.view.value == overlay_png(display, expected, opacity=0.6, size=320)
    explorer.widgets["head"].value = 1
    assert torch.allclose(explorer.current_map(), analysis.attention_maps(attn, layer=1)[0])


def test_a_patch_query_and_rollout_up_to_the_layer(model, dataset):
    explorer = explore(model, dataset, image=1, method="rollout", query="patch", row=1, col=2)
    explorer.widgets["layer"].value = 2
    attn = _attention(model, dataset, 1)
    rollout = analysis.attention_rollout(attn[:2])[0]
    assert torch.allclose(explorer.current_map(), analysis.rollout_map(rollout, query=(1, 2)))
    assert explorer.widgets["head"].disabled and not explorer.widgets["row"].disabled
    explorer.widgets["query"].value = "class token"
    assert torch.allclose(explorer.current_map(), analysis.rollout_map(rollout, query="cls"))
    assert explorer.widgets["row"].disabled


def test_gradient_rollout_follows_the_class_and_the_position_map_the_patch(model, dataset):
    explorer = explore(model, dataset, image=0, method="gradient")
    maps = {}
    for target in (0, 1):
        explorer.widgets["target"].value = target
        maps[target] = explorer.current_map()
        x = explorer.state.tensor[None]
        _, attn, grads = analysis.get_attention_gradients(model, x, target=target)
        expected = analysis.rollout_map(analysis.gradient_rollout(attn, grads)[0])
        assert torch.allclose(maps[target], expected, atol=1e-6)
    assert not torch.allclose(maps[0], maps[1])
    explorer.widgets["method"].value = "position"
    explorer.widgets["row"].value, explorer.widgets["col"].value = 3, 1
    similarity = analysis.position_similarity(model.pos_embed)
    assert torch.allclose(explorer.current_map(), similarity[3 * 4 + 1].reshape(4, 4))


def test_one_forward_per_image_and_slider_moves_only_redraw(model, dataset):
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        explorer = explore(model, dataset, image=3)
        assert len(calls) == 1
        for layer in (1, 2, 3):
            explorer.widgets["layer"].value = layer
        explorer.widgets["opacity"].value = 0.3
        explorer.widgets["method"].value = "attention"
        assert len(calls) == 1 and explorer.renders >= 5
        explorer.widgets["method"].value = "gradient"  # one forward + backward for the class
        explorer.widgets["layer"].value = 1
        assert len(calls) == 2
        explorer.widgets["method"].value = "rollout"
        explorer.widgets["image"].value = 4
        explorer.widgets["image"].value = 3  # back to a kept image: no forward
        assert len(calls) == 3
    finally:
        hook.remove()


def _upload(explorer, content, name):
    explorer.widgets["upload"].value = (
        {"name": name, "type": "image/png", "size": len(content),
         "content": memoryview(content), "last_modified": datetime.now(timezone.utc)},
    )  # fmt: skip


def test_an_upload_is_preprocessed_with_the_models_config():
    tuned = build_vit("vit_custom", num_classes=2, **{**TINY, "img_size": 24}).eval()
    tuned.pretrained_cfg = dict(JAX_CFG)  # 24 px, crop 0.9, mean/std 0.5: not the dataset's
    tuned.classes = ("cat", "dog")
    explorer = Explorer(tuned)  # uploads only
    assert explorer.state is None and explorer.widgets["image"].options == ()
    rng = np.random.default_rng(2)
    photo = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    _upload(explorer, buffer.getvalue(), "mine.png")
    tensor, display = open_image(photo, JAX_CFG)
    assert explorer.state.name == "mine.png" and explorer.state.display.shape == (24, 24, 3)
    assert np.array_equal(explorer.state.display, display)
    assert torch.equal(explorer.state.tensor, tensor)
    with torch.no_grad():
        expected = tuned(tensor[None]).softmax(-1)[0]
    assert torch.allclose(explorer.state.probabilities, expected, atol=1e-6)
    assert "mine.png" in explorer.probabilities.value


def test_an_upload_that_is_not_an_image_is_refused_in_words(model, dataset):
    explorer = explore(model, dataset, image=0)
    before = explorer.state
    _upload(explorer, b"GIF89a but not really", "broken.gif")
    assert explorer.state is before
    assert "broken.gif: not an image vitlib can read" in explorer.status.value


def test_the_runs_misclassified_images_are_listed_first(model, dataset, tmp_path):
    run = tmp_path / "finetune"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"classes": ["cat", "dog"]}))
    with open(run / "misclassified.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["index", "path", "label", "pred", "p_cat", "p_dog"])
        rows.writerow([4, "4.png", "cat", "dog", 0.4, 0.6])
        rows.writerow([1, "1.png", "dog", "cat", 0.9, 0.1])  # the more confident mistake
    explorer = explore(model, dataset, run_dir=run)
    options = explorer.widgets["image"].options
    assert [value for _, value in options] == [1, 4, 0, 2, 3, 5]
    assert options[0][0] == "✗ #1 dog" and options[2][0] == "#0 cat"
    assert explorer.state.name == "test #1"  # the first listed is shown


def test_without_a_widget_manager_it_shows_a_still_with_alternative_text(model, dataset):
    explorer = explore(model, dataset, image=5, method="attention", layer=2, head=2)
    data, metadata = explorer._repr_mimebundle_()
    assert base64.b64decode(data["image/png"]) == explorer.view.value
    assert "application/vnd.jupyter.widget-view+json" in data
    alt = metadata["image/png"]["alt"]
    assert "test #5" in alt and "head 2's attention in layer 2" in alt and "class token" in alt


def test_overlay_blends_the_map_over_the_image():
    display = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    amap = np.arange(4.0).reshape(2, 2)
    plain = np.asarray(Image.open(io.BytesIO(overlay_png(display, amap, opacity=0, size=16))))
    assert np.array_equal(plain, display.repeat(2, 0).repeat(2, 1))  # enlarged 2x, untouched
    full = np.asarray(Image.open(io.BytesIO(overlay_png(display, amap, opacity=1, size=8))))
    assert np.array_equal(full[:4, :4], np.broadcast_to(full[0, 0], (4, 4, 3)))  # one patch
    assert full[0, 0].sum() < full[-1, -1].sum()  # inferno: the low corner dark, the high light
    with pytest.raises(ValueError, match=r"one \(G, G\) map"):
        overlay_png(display, np.zeros(4))


def test_unknown_settings_are_named(model, dataset):
    with pytest.raises(ValueError, match=r"unknown explorer settings \['levels'\]"):
        explore(model, dataset, levels=3)
