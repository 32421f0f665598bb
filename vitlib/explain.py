"""`python -m vitlib explain PHOTO...`: where a trained model looks in your own photos.

    python -m vitlib explain my_cat.jpg holiday/           # the smoke profile's fine-tune
    python -m vitlib explain dog.png --run runs/full/finetune
    python -m vitlib explain dog.png --weights vit_base_patch16_224.augreg2_in21k_ft_in1k

For each photo (a file the data layer reads: JPEG, PNG, BMP, GIF, WebP, TIFF, PPM/PGM, any
mode, EXIF rotation applied; a folder stands for the images in it) it prints the class
probabilities and writes one figure: the photo as the model sees it (preprocessed with the
model's own `pretrained_cfg`), attention rollout (Abnar & Zuidema 2020), and the class-specific
gradient rollout (after Chefer et al. 2021) for each class, or for the three likeliest of a
larger head. Every photo is checked before the model loads, so a bad file fails in a second,
naming the file and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vitlib import analysis, viz
from vitlib.config import Config
from vitlib.data import open_image
from vitlib.errors import DataError
from vitlib.images import IMAGE_SUFFIXES, check_image, is_image_name

__all__ = ["Explanation", "class_names", "explain_photos", "find_photos", "load_model"]

log = logging.getLogger(__name__)

MAX_CLASS_MAPS = 3  # class-specific maps drawn for a head with more classes than this + 1


@dataclass(frozen=True)
class Explanation:
    """One photo explained: its class probabilities (K,), in the model's class order, and the
    figure files written (.png and .svg)."""

    photo: Path
    probabilities: torch.Tensor
    classes: tuple[str, ...]
    figures: tuple[Path, ...]

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The k likeliest classes with their probabilities, likeliest first."""
        values, index = self.probabilities.topk(min(k, len(self.classes)))
        return [(self.classes[i], float(v)) for v, i in zip(values, index.tolist(), strict=True)]


def find_photos(paths: Iterable[str | Path]) -> list[Path]:
    """The photos named: files as given, folders as the image files directly in them (by
    name, sorted). Raises a DataError naming every path that is missing, not an image or
    unreadable, and why, before any work is done."""
    photos, problems = [], []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image_name(p.name))
            if not found:
                problems.append(f"{path}: a folder without images")
            photos += found
        elif not path.exists():
            problems.append(f"{path}: no such file")
        else:
            photos.append(path)
    for photo in photos:
        reason = check_image(photo)
        if reason:
            problems.append(f"{photo}: {reason}")
    if problems:
        formats = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
        raise DataError(
            "cannot explain these photos:\n  " + "\n  ".join(problems) + f"\nexplain reads image "
            f"files ({formats}) or folders of them; check the paths and that each file opens"
        )
    if not photos:
        raise DataError("no photos given: pass one or more image files or folders")
    return photos


def class_names(model: nn.Module) -> tuple[str, ...]:
    """The model's class names: a trained run's own, ImageNet-1k's for a 1000-class head
    (timm's `ImageNetInfo`), otherwise "class 0", "class 1", ..."""
    if getattr(model, "classes", None):
        return tuple(str(c) for c in model.classes)
    k = model.num_classes
    if k == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return tuple(info.index_to_description(i).split(",")[0] for i in range(k))
    return tuple(f"class {i}" for i in range(k))


def load_model(
    cfg: Config, *, run: str | Path | None = None, weights: str | None = None
) -> nn.Module:
    """The model to explain with: `weights` (a file or timm tag) in the profile's architecture
    with the checkpoint's own head; else a finished run's (`run`, e.g. runs/full/finetune);
    else the profile's fine-tuned run (cfg.run_dir / "finetune")."""
    from vitlib.checkpoints import build_model
    from vitlib.runs import load_trained

    if weights is not None:
        model_cfg = dataclasses.replace(cfg.model, pretrained=weights)
        return build_model(model_cfg, seed=cfg.seed, keep_head=True).eval()
    return load_trained(run if run is not None else cfg.run_dir / "finetune")


def explain_photos(
    model: nn.Module, photos: Sequence[Path], out_dir: str | Path
) -> list[Explanation]:
    """Explain each photo (already checked: `find_photos`) and write its figure to out_dir."""
    classes = class_names(model)
    out_dir, written, results = Path(out_dir), set(), []
    for photo in photos:
        tensor, display = open_image(photo, model.pretrained_cfg)
        maps, logits = analysis.relevance_maps(model, tensor[None], method="rollout")
        probabilities = logits.softmax(-1)[0]
        panels = {"rollout": maps[0]}
        for k in _explained_classes(probabilities):
            rollout, _ = analysis.relevance_maps(model, tensor[None], method="gradient", target=k)
            panels[f"for '{classes[k]}' ({float(probabilities[k]):.2f})"] = rollout[0]
        fig = viz.plot_attention_panels(display, panels)
        fig.suptitle(photo.name, fontsize="medium")
        name = _unique(viz.figure_name("attention_rollout", "explain", photo.stem), written)
        figures = tuple(viz.save_figure(fig, out_dir, name))
        results.append(Explanation(photo, probabilities, classes, figures))
        log.info("%s -> %s", photo, figures[0])
    return results


def _explained_classes(probabilities: torch.Tensor) -> list[int]:
    """Every class of a small head, else the likeliest MAX_CLASS_MAPS."""
    if len(probabilities) <= MAX_CLASS_MAPS + 1:
        return list(range(len(probabilities)))
    return probabilities.topk(MAX_CLASS_MAPS).indices.tolist()


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or name-2, name-3, ... when two photos share a file stem."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate
