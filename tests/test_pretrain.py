"""MAE pre-training: weights timm loads unchanged, BatchNorm re-estimated, the loss falling on
the synthetic set, and a killed run resuming to the uninterrupted one."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from test_mae import TINY, tiny_mae
from training import FakeImages

from vitlib.checkpoints import create_model
from vitlib.config import PretrainConfig, TrainConfig, get_config
from vitlib.data import load_splits
from vitlib.mae import build_mae
from vitlib.pretrain import (
    ENCODER,
    encoder_model,
    encoder_state_dict,
    held_out_loss,
    load_mae,
    pretrain,
    recalibrate_batchnorm,
    run_pretraining,
)

PC = PretrainConfig(
    train=TrainConfig(epochs=3, batch_size=8, lr=2e-3, optimizer="adamw", eval_batch_size=16),
    decoder_dim=16, decoder_depth=1, decoder_heads=2,
)  # fmt: skip


def test_pretrained_encoder_weights_load_into_timm_and_vitlib_unchanged(tmp_path):
    mae = tiny_mae()
    pretrain(mae, FakeImages(16, seed=0, size=32), PC, run_dir=tmp_path, progress=False)
    weights = tmp_path / "encoder.safetensors"
    save_file(encoder_state_dict(mae.encoder), str(weights))
    assert not any(k.startswith("head") for k in load_file(weights))  # headless, as timm's .mae
    arch = {k: v for k, v in TINY.items() if k != "img_size"}
    twin = timm.create_model("vit_base_patch16_224", num_classes=0, img_size=32, **arch)
    twin.load_state_dict(load_file(weights), strict=True)
    again = create_model("vit_custom", pretrained=weights, num_classes=2, **TINY)
    x = torch.randn(2, 3, 32, 32)
    mae.encoder.eval()
    with torch.no_grad():
        ours = mae.encoder.forward_features(x)[0]
        assert torch.allclose(twin.eval().forward_features(x), ours, atol=1e-5)
        assert torch.allclose(again.eval().forward_features(x)[0], ours, atol=1e-6)
    assert not again.head.weight.detach().any()  # a fresh, zero-initialised head


def test_batchnorm_statistics_are_re_estimated_on_whole_images():
    mae = tiny_mae(conv_stem=2)
    images = FakeImages(16, seed=3, size=32)
    assert recalibrate_batchnorm(mae.encoder, images, batch_size=16, device="cpu") == 2
    conv = mae.encoder.patch_embed.stem[0]
    with torch.no_grad():
        first = conv(images.batch(range(16), "cpu"))  # (16, C, 16, 16)
    bn = mae.encoder.patch_embed.stem[1]
    assert torch.allclose(bn.running_mean, first.mean((0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1 and mae.encoder.training


def test_pretraining_on_the_synthetic_set_lowers_the_held_out_loss(tmp_path):
    cfg = get_config("smoke", {"run_root": str(tmp_path / "runs"),
                               "data.cache_dir": str(tmp_path / "cache")})  # fmt: skip
    metrics = run_pretraining(cfg, progress=False)
    epochs = sum(row["seconds"] for row in metrics["history"]) / 60
    assert epochs <= metrics["minutes"] <= metrics["session_minutes"]
    again = run_pretraining(cfg, progress=False, resume=True)  # finished: only the last steps
    assert again["history"] == metrics["history"] and again["minutes"] >= epochs
    assert again["session_minutes"] < metrics["session_minutes"]
    losses = [row["train_loss"] for row in metrics["history"]]
    assert len(losses) == cfg.pretrain.train.epochs and losses[-1] < 0.8 * losses[0]
    weights = tmp_path / "runs" / "smoke" / "pretrain" / ENCODER
    assert weights.is_file() and metrics["encoder"] == str(weights)
    mae, fresh = load_mae(cfg), build_mae(encoder_model(cfg), cfg.pretrain)
    assert torch.equal(mae.encoder.state_dict()["blocks.0.attn.qkv.weight"],
                       load_file(weights)["blocks.0.attn.qkv.weight"])  # fmt: skip
    val = load_splits(cfg.data, fresh.encoder.pretrained_cfg, progress=False)["val"]
    cpu = torch.device("cpu")
    again = held_out_loss(mae, val, images=64, batch_size=64, device=cpu)
    assert abs(again - metrics["val_loss"]) < 1e-5  # the same fixed masks, the same loss
    assert metrics["val_loss"] < 0.9 * held_out_loss(
        fresh, val, images=64, batch_size=64, device=cpu
    )


def test_a_killed_pretraining_resumes_to_the_uninterrupted_run(tmp_path):
    images = FakeImages(24, seed=0, size=32, augment=True)
    whole = pretrain(tiny_mae(), images, PC, run_dir=tmp_path / "whole", progress=False)

    def die(epoch, step, net):
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_mae(), images, PC, run_dir=tmp_path / "cut", progress=False, on_step=die)
    torch.manual_seed(123)  # the resumed run restores the RNG from its checkpoint
    got = pretrain(tiny_mae(), images, PC, run_dir=tmp_path / "cut", progress=False, resume=True)
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in got] == [
        {k: v for k, v in r.items() if k not in drop} for r in whole
    ]


def test_the_pretrain_command_trains_then_runs_the_label_study(tmp_path, capsys):
    from vitlib.__main__ import main

    sets = [f"run_root={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
            "pretrain.train.epochs=2", "pretrain.label_counts=[20]", "pretrain.finetune_images=20",
            "pretrain.probe_images=20"]  # fmt: skip
    argv = ["pretrain", "--profile", "smoke", "--quiet", "--efficiency"]
    assert main([*argv, *(x for s in sets for x in ("--set", s))]) == 0
    out = capsys.readouterr().out
    assert "smoke/pretrain: 2 epochs of 480 images" in out and "| MAE (here) | finetune |" in out
    assert (tmp_path / "runs" / "smoke" / "efficiency" / "table.csv").is_file()
    assert main(["pretrain", "--profile", "smoke", "--set", "pretrain.mask_ratio=1.5"]) == 2
