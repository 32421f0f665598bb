"""The label-efficiency study: its sizing and scores, a run that resumes instead of retraining,
and the four timm weight kinds, as stand-ins in their real layouts, through the notebook's path
offline."""

from __future__ import annotations

import json
import math

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from vitlib import analysis, efficiency
from vitlib.config import WEIGHT_KINDS, get_config
from vitlib.efficiency import (
    PRETRAINED,
    RANDOM,
    build_backbone,
    efficiency_table,
    finetune_config,
    run_efficiency,
    score,
)
from vitlib.stats import wilson_interval

TINY = dict(patch_size=8, embed_dim=32, depth=2, num_heads=4)
QUICK = {
    "pretrain.label_counts": [20], "pretrain.finetune_images": 40, "pretrain.val_images": 16,
    "pretrain.probe_images": 40, "pretrain.finetune.epochs": 1, "pretrain.train.epochs": 2,
}  # fmt: skip


def smoke(tmp_path, **more):
    return get_config("smoke", {"run_root": str(tmp_path / "runs"),
                                "data.cache_dir": str(tmp_path / "cache"), **QUICK, **more})  # fmt: skip


def test_each_fine_tune_sees_the_same_number_of_images(tmp_path):
    cfg = smoke(tmp_path, **{"pretrain.finetune_images": 1000, "pretrain.finetune.epochs": 4,
                             "pretrain.finetune.warmup_epochs": 1.0})  # fmt: skip
    for labels, epochs in ((100, 10), (300, 4), (5000, 1)):
        tc = finetune_config(cfg, labels)
        assert tc.epochs == epochs == max(1, math.ceil(1000 / labels))
        assert tc.warmup_epochs == pytest.approx(epochs / 4)  # a quarter of the run, as set
    probe = finetune_config(cfg, 20, "probe")  # probe_images (40) of 20 labels: 2 epochs
    assert probe.epochs == 2 and probe.lr == cfg.pretrain.probe.lr


def test_scores_are_the_test_accuracy_and_its_wilson_interval():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]).numpy()
    result = {"test": {"probs": probs, "labels": [0, 1, 1, 1]}, "val": {"accuracy": 0.5}}
    row = score(result)
    assert (row["correct"], row["total"], row["accuracy"]) == (3, 4, 0.75)
    assert (row["low"], row["high"]) == wilson_interval(3, 4)
    table = efficiency_table([{"backbone": "a", "method": "probe", "labels": 20, **row}])
    assert "| a | probe | 75.0 [" in table and "20 labels" in table


def test_the_study_writes_every_row_and_reads_finished_runs_back(tmp_path, monkeypatch):
    cfg = smoke(tmp_path)
    rows = run_efficiency(cfg, progress=False)
    assert [(r["backbone"], r["method"]) for r in rows] == [
        (RANDOM, "probe"), (RANDOM, "finetune"), (PRETRAINED, "probe"), (PRETRAINED, "finetune")
    ]  # fmt: skip
    assert all(r["labels"] == 20 and r["total"] == 160 for r in rows)
    assert all(r["low"] <= r["accuracy"] <= r["high"] for r in rows)
    out = cfg.run_dir / "efficiency"
    assert json.loads((out / "results.json").read_text())["rows"] == rows
    assert (out / "table.csv").read_text().count("\n") == 5

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(efficiency, "linear_probe", no_training)
    monkeypatch.setattr(efficiency, "fine_tune", no_training)
    assert run_efficiency(cfg, progress=False) == rows


def stand_in(tag: str) -> torch.nn.Module:
    """A random timm ViT-B/16 layout at a tiny size; headless like timm's DINO and MAE files."""
    headless = tag.endswith((".dino", ".mae"))
    return timm.create_model(
        "vit_base_patch16_224", pretrained=False, img_size=32, num_classes=0 if headless else 1000,
        **TINY,
    )  # fmt: skip


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The four kinds in the Hugging Face cache's own layout (what `hf_hub_download` leaves),
    under a cache folder of this test's: {tag: the stand-in's state dict}."""
    cache, saved = tmp_path / "hub", {}
    for tag in WEIGHT_KINDS:
        repo = cache / f"models--timm--{tag}"
        commit = "0" * 40
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
        (repo / "snapshots" / commit).mkdir(parents=True)
        saved[tag] = stand_in(tag).state_dict()
        save_file(saved[tag], str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return saved


def study_cfg(tmp_path, weights):
    return smoke(tmp_path, **{"model.arch": "vit_base_patch16_224", "model.img_size": 32,
                              "model.arch_kwargs": TINY, "pretrain.weights": list(weights)})  # fmt: skip


def test_the_four_weight_kinds_load_offline_with_a_fresh_head_and_their_preprocessing(
    tmp_path, hub
):
    cfg = study_cfg(tmp_path, WEIGHT_KINDS)
    for tag in WEIGHT_KINDS:
        model = build_backbone(cfg, tag).eval()
        ours = model.state_dict()
        for key, value in hub[tag].items():
            if not key.startswith("head"):
                assert torch.equal(ours[key], value), (tag, key)
        assert model.head.weight.shape == (2, 32) and not model.head.weight.any()
        imagenet = tag.endswith((".dino", ".mae"))
        assert model.pretrained_cfg["mean"][0] == (0.485 if imagenet else 0.5), tag
        # the notebook's path: attention over an image and the position embedding's similarity
        attn = analysis.get_attention(model, torch.randn(3, 32, 32))[1]
        assert analysis.attention_maps(attn, layer=-1).mean(0).shape == (4, 4)
        sim = analysis.position_similarity(model.pos_embed.detach(), num_prefix_tokens=1)
        assert torch.allclose(sim.diagonal(), torch.ones(16), atol=1e-4)


def test_the_study_runs_on_each_weight_kind(tmp_path, hub):
    cfg = study_cfg(tmp_path, WEIGHT_KINDS)
    rows = run_efficiency(cfg, backbones=WEIGHT_KINDS, progress=False)
    assert [r["backbone"] for r in rows] == [t for t in WEIGHT_KINDS for _ in range(2)]
    assert all(r["total"] == 160 and r["low"] <= r["accuracy"] <= r["high"] for r in rows)


def test_the_original_dino_and_mae_files_load_too(tmp_path):
    """DINO's release is a plain headless state dict; MAE's wraps it in {"model": ...}."""
    cfg = study_cfg(tmp_path, ())
    for tag, wrap in (("vit_base_patch16_224.dino", False), ("vit_base_patch16_224.mae", True)):
        sd = stand_in(tag).state_dict()
        path = tmp_path / f"{tag}.pth"
        torch.save({"model": sd} if wrap else sd, path)
        model = build_backbone(cfg, str(path))
        assert torch.equal(
            model.state_dict()["blocks.1.mlp.fc2.weight"], sd["blocks.1.mlp.fc2.weight"]
        )
        assert model.num_classes == 2
