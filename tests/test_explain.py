"""`vitlib explain`: probabilities and one figure per photo, any format the data layer reads,
and bad files refused by name before the model loads."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import REAL, exif_rotated, photo
from PIL import Image

from vitlib.__main__ import main
from vitlib.config import get_config
from vitlib.data import open_image
from vitlib.explain import class_names, explain_photos, find_photos
from vitlib.images import IMAGE_SUFFIXES
from vitlib.model import build_vit
from vitlib.runs import load_trained, save_trained
from vitlib.viz import figure_name

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run's model folder, as a fine-tune leaves it."""
    torch.manual_seed(0)
    model = build_vit("vit_custom", num_classes=2, **TINY).eval()
    torch.nn.init.normal_(model.head.weight)
    folder = tmp_path_factory.mktemp("runs") / "finetune"
    save_trained(model, folder, classes=("cat", "dog"))
    return folder


def _photos(folder: Path) -> list[Path]:
    """One photo per format and awkward mode the data layer reads."""
    made = [photo(folder / f"p{suffix.replace('.', '_')}{suffix}", size=(40, 30))
            for suffix in (".jpg", ".png", ".bmp", ".gif", ".webp", ".tif")]  # fmt: skip
    made.append(photo(folder / "grey.png", mode="L"))
    made.append(photo(folder / "clear.png", mode="RGBA"))
    made.append(exif_rotated(folder / "sideways.jpg"))
    return made


def _lines(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.strip().splitlines())


def test_explain_prints_each_photos_probabilities_and_writes_its_figure(run, tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "figures"
    assert main(["explain", *map(str, photos), "--run", str(run), "--out", str(out)]) == 0
    printed = _lines(capsys.readouterr().out)
    model = load_trained(run)
    assert set(printed) == {str(p) for p in photos}
    for path in photos:
        tensor, _ = open_image(path, model.pretrained_cfg)
        with torch.no_grad():
            expected = model(tensor[None]).softmax(-1)[0]
        text, figure = printed[str(path)].split(" -> ")
        numbers = dict(item.rsplit(" ", 1) for item in text.split(", "))
        assert numbers == {c: f"{float(p):.3f}" for c, p in zip(("cat", "dog"), expected)}
        png = Path(figure)
        assert png.parent == out and png.with_suffix(".svg").is_file()
        assert png.name == figure_name("attention_rollout", "explain", path.stem) + ".png"
        with Image.open(png) as image:  # four panels: the photo, rollout, cat, dog
            assert image.width > 3 * image.height


def test_folders_stand_for_their_images_and_equal_names_do_not_collide(run, tmp_path):
    for name in ("a", "b"):
        photo(tmp_path / name / "pet.jpg")
    (tmp_path / "a" / "notes.txt").write_text("not a photo, and not listed")
    photos = find_photos([tmp_path / "a", tmp_path / "b"])
    assert photos == [tmp_path / "a" / "pet.jpg", tmp_path / "b" / "pet.jpg"]
    results = explain_photos(load_trained(run), photos, tmp_path / "out")
    names = [r.figures[0].name for r in results]
    assert names == ["attention_rollout_explain_pet.png", "attention_rollout_explain_pet-2.png"]
    for result in results:
        assert torch.isclose(result.probabilities.sum(), torch.tensor(1.0))
        assert result.top(1)[0][1] == pytest.approx(float(result.probabilities.max()))


def test_bad_files_are_named_with_what_is_wrong_before_the_model_loads(tmp_path, capsys):
    good = photo(tmp_path / "good.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("a shopping list, not a photo")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    empty = tmp_path / "empty.png"
    empty.touch()
    (tmp_path / "nothing").mkdir()
    bad = [text, cut, empty, tmp_path / "missing.png", tmp_path / "nothing"]
    no_run = tmp_path / "no-run"  # loading it would fail differently: it is never reached
    status = main(["explain", str(good), *map(str, bad), "--run", str(no_run)])
    error = capsys.readouterr().err
    assert status == 2 and error.startswith("vitlib explain: error: cannot explain these photos")
    assert f"{text}: not an image (format not recognised)" in error
    assert f"{cut}: truncated image" in error
    assert f"{empty}: empty file (0 bytes)" in error
    assert f"{tmp_path / 'missing.png'}: no such file" in error
    assert f"{tmp_path / 'nothing'}: a folder without images" in error
    assert str(good) + ":" not in error and "no-run" not in error
    assert all(s.lstrip(".") in error for s in IMAGE_SUFFIXES)  # what it does read


def test_weights_explain_with_the_checkpoints_own_head(tmp_path, capsys):
    cfg = get_config("smoke")
    model = build_vit(cfg.model.arch, num_classes=3, img_size=cfg.model.img_size,
                      **cfg.model.arch_kwargs)  # fmt: skip
    weights = tmp_path / "three.pth"
    torch.save(model.state_dict(), weights)
    picture = photo(tmp_path / "x.png")
    out = tmp_path / "out"
    assert main(["explain", str(picture), "--weights", str(weights), "--out", str(out)]) == 0
    printed = _lines(capsys.readouterr().out)[str(picture)]
    items = [item.rsplit(" ", 1) for item in printed.split(" -> ")[0].split(", ")]
    assert sorted(name for name, _ in items) == ["class 0", "class 1", "class 2"]
    values = [float(v) for _, v in items]
    assert values == sorted(values, reverse=True)  # likeliest first
    assert (out / "attention_rollout_explain_x.png").is_file()


def test_class_names_of_an_imagenet_head_are_imagenet_s():
    names = class_names(SimpleNamespace(num_classes=1000))
    assert names[0] == "tench" and names[281] == "tabby" and len(set(names)) > 990
    assert class_names(SimpleNamespace(num_classes=2, classes=("cat", "dog"))) == ("cat", "dog")


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real photos not found at {REAL}")
def test_explain_on_real_photos(run, tmp_path, capsys):
    photos = sorted(REAL.rglob("*.jpg"))[:3]
    assert photos, f"no .jpg under {REAL}"
    out = tmp_path / "out"
    assert main(["explain", *map(str, photos), "--run", str(run), "--out", str(out)]) == 0
    printed = _lines(capsys.readouterr().out)
    assert set(printed) == {str(p) for p in photos}
    for line in printed.values():
        probabilities = [
            float(item.rsplit(" ", 1)[1]) for item in line.split(" -> ")[0].split(", ")
        ]
        assert np.isclose(sum(probabilities), 1.0, atol=2e-3)
    assert len(list(out.glob("*.png"))) == 3
