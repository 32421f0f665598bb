"""The study's own path, `full` and `laptop` (full's model on a subset), end to end and
offline: every notebook through the report with a stand-in for the study's weights (a random
timm ViT-B/16 layout at a tiny size, 1000-class ImageNet head, saved under the study's file name
so it brings JAX preprocessing: mean/std 0.5, crop 0.9) on photos the test makes."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from helpers import kaggle_folder
from test_report import EXPECTED_FIGURES, _project_copy, assert_summary_rows_are_the_runs_own

from vitlib.report import run_report

TINY = dict(patch_size=8, embed_dim=32, depth=2, num_heads=4)
STUDY_FILE = "jx_vit_base_p16_224-80ecf9dd.pth"
PRETRAIN_RUNS = ("train", "probe", "finetune")


@pytest.mark.parametrize("profile", ["full", "laptop"])
def test_study_profiles_report_runs_end_to_end_on_stand_in_weights(tmp_path, profile):
    project = _project_copy(tmp_path)
    weights = project / "data" / "weights" / STUDY_FILE
    weights.parent.mkdir(parents=True)
    stand_in = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, **TINY)
    torch.save(stand_in.state_dict(), weights)
    photos = kaggle_folder(project / "data" / "photos", 30, 30)
    tiny_run = {"epochs": 1, "batch_size": 8, "eval_batch_size": 32, "warmup_epochs": 0}
    overrides = {
        "model.pretrained": str(weights), "model.img_size": 32, "model.arch_kwargs": TINY,
        "data.root": str(photos), "data.split_sizes": (40, 10, 10), "data.num_workers": 0,
        "expect_finetune_accuracy": 0.0,  # the stand-in weights are random: 1 epoch on 40 photos
        **{f"{s}.{k}": v for s in ("probe", "finetune") for k, v in tiny_run.items()},
        "variants.names": ["vit", "deit"], "variants.model.img_size": 32,
        "variants.model.arch_kwargs": {**TINY, "depth": 1}, "variants.teacher_arch": "test_resnet",
        **{f"variants.{s}.{k}": v for s in ("train", "teacher") for k, v in tiny_run.items()},
        # Notebook 07: MAE for an epoch, the label study on 10 labels and all, the stand-in as
        # the one timm weight kind; notebook 08: a sweep of one point.
        "pretrain.label_counts": [10, 0], "pretrain.finetune_images": 20,
        "pretrain.probe_images": 20, "pretrain.val_images": 10, "pretrain.weights": [str(weights)],
        "pretrain.decoder_dim": 16, "pretrain.decoder_depth": 1, "pretrain.decoder_heads": 2,
        **{f"pretrain.{s}.{k}": v for s in PRETRAIN_RUNS for k, v in tiny_run.items()},
        "sweep_grid": {"finetune.lr": [1e-4], "finetune.epochs": [1]},
        # Notebook 07 asserts the loss fell and beats each patch's mean: ~100 steps.
        "pretrain.train.epochs": 20, "pretrain.train.lr": 3e-3,
    }  # fmt: skip
    # Two notebooks at once (`--jobs 2`): the stand-in is tiny, and both paths are exercised.
    html = run_report(profile, overrides=overrides, project_dir=project, progress=False, jobs=2)
    runs = project / "runs" / profile
    assert html == runs / "report.html" and html.stat().st_size > 10_000
    for name in EXPECTED_FIGURES:
        assert (project / "figures" / profile / f"{name}.png").is_file(), name
    zero_shot = json.loads((runs / "zero-shot" / "metrics.json").read_text())
    assert zero_shot["applicable"]  # the ImageNet head, read as cat/dog classes
    for experiment in ("probe", "finetune"):
        run = json.loads((runs / experiment / "run.json").read_text())
        text = json.dumps(run)
        assert STUDY_FILE in text and "0.5" in text  # its weights and their preprocessing
    model = json.loads((runs / "finetune" / "model.json").read_text())
    assert model["classes"] == ["cat", "dog"]
    assert model["arch_config"]["num_classes"] == 2  # the head swapped from ImageNet's 1000
    assert_summary_rows_are_the_runs_own((runs / "summary.md").read_text(), runs)
