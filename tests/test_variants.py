"""vitlib.variants: every variant's shapes and gradients, how variants and the teacher are built,
run_variants end to end on a tiny synthetic set, and the memory measurements."""

import csv
import dataclasses
import json

import pytest
import torch
from torch import nn

from vitlib.attention import Attention, PerformerAttention, ReAttention
from vitlib.config import VARIANT_NAMES, get_config
from vitlib.data import load_splits
from vitlib.errors import ConfigError, ExperimentError
from vitlib.model import build_vit
from vitlib.runs import load_trained
from vitlib.variants import (
    COMPARISON_KEYS,
    VARIANTS,
    attention_memory,
    build_teacher,
    build_variant,
    ensure_variants,
    peak_tensor_memory,
    reference_row,
    run_variants,
    teacher_summary,
)

TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, performer_features=16)
# What each variant should be, written out here rather than read from VARIANTS.
EXPECTED = {
    "vit": dict(prefix=1, sincos=False, attention=Attention),
    "simple_vit": dict(prefix=0, sincos=True, attention=Attention),
    "deit": dict(prefix=2, sincos=False, attention=Attention),
    "deepvit": dict(prefix=1, sincos=False, attention=ReAttention),
    "performer": dict(prefix=1, sincos=False, attention=PerformerAttention),
}


def test_every_variant_is_tested():
    assert set(VARIANTS) == set(EXPECTED)


def _tiny_variant(name: str, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return build_vit("vit_custom", num_classes=num_classes, **TINY, **VARIANTS[name].options)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_variant_gives_logits_and_one_attention_map_per_layer(name):
    """Logits (B, K); `depth` maps (B, H, N, N) with N = prefix tokens + G*G (G = 4 here);
    softmax and Performer maps are row-stochastic, re-attention's (BatchNorm'd) are not."""
    model = _tiny_variant(name).eval()
    x = torch.randn(2, 3, 16, 16)
    N = EXPECTED[name]["prefix"] + 16
    assert model.num_prefix_tokens == EXPECTED[name]["prefix"]
    with torch.no_grad():
        logits, maps = model(x, return_attention=True)
        assert torch.allclose(logits, model(x), atol=1e-5)  # the map costs nothing in output
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert len(maps) == 2
    for attn in maps:
        assert attn.shape == (2, 2, N, N) and torch.isfinite(attn).all()
        if EXPECTED[name]["attention"] is not ReAttention:
            torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, N), atol=1e-5, rtol=0)
    for block in model.blocks:
        assert type(block.attn) is EXPECTED[name]["attention"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_parameter_of_each_variant_gets_a_gradient_and_no_nans(name):
    model = _tiny_variant(name).train()
    for head in model.heads():
        head.weight.data.normal_()  # zero-init heads would block the backbone's gradient
    x = torch.randn(2, 3, 16, 16)
    losses = [lambda: model(x).logsumexp(-1).sum()]
    if name == "deit":  # what hard distillation trains: both heads' outputs
        losses.append(lambda: sum(z.logsumexp(-1).sum() for z in model.forward_distilled(x)))
    for loss in losses:
        model.zero_grad(set_to_none=True)
        loss().backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, pname


# --- Building variants and the teacher ------------------------------------------------------


def test_build_variant_gives_each_variants_options_at_the_profiles_size():
    cfg = get_config("smoke")
    sizes = cfg.variants.model
    for name, expected in EXPECTED.items():
        model = build_variant(cfg, name)
        assert model.patch_embed.img_size == sizes.img_size and model.num_classes == 2
        assert model.embed_dim == sizes.arch_kwargs["embed_dim"]
        assert len(model.blocks) == sizes.arch_kwargs["depth"]
        assert model.num_prefix_tokens == expected["prefix"]
        assert (model.cls_token is None) == (name == "simple_vit")
        assert model.global_pool == ("avg" if name == "simple_vit" else "token")
        assert isinstance(model.pos_embed, nn.Parameter) != expected["sincos"]
        assert model.distilled == (name == "deit") == hasattr(model, "head_dist")
        assert all(type(b.attn) is expected["attention"] for b in model.blocks)
    # Seeded by cfg.seed: the same init for the same seed, another for another.
    a, b = build_variant(cfg, "vit"), build_variant(cfg, "vit")
    c = build_variant(get_config("smoke", {"seed": 1}), "vit")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.pos_embed, c.pos_embed)


def test_unknown_variant_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown variant 'swin'") as info:
        build_variant(get_config("smoke"), "swin")
    assert all(name in str(info.value) for name in VARIANTS)


def test_build_teacher_is_the_profiles_timm_cnn_with_two_classes():
    cfg = get_config("smoke")
    teacher = build_teacher(cfg)
    assert type(teacher).__name__ == "ResNet" and cfg.variants.teacher_arch == "test_resnet"
    assert teacher.pretrained_cfg["architecture"] == "test_resnet"
    with torch.no_grad():
        assert teacher.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 2)
    with pytest.raises(ValueError, match="variants.teacher_arch"):
        build_teacher(get_config("smoke", {"variants.teacher_arch": "resnet_imaginary"}))


# --- run_variants end to end -----------------------------------------------------------------

# One epoch of 24 synthetic images for each model; a small timm CNN as the teacher.
TINY_RUN = {
    "data.split_sizes": (24, 8, 8),
    "data.synthetic_per_class": 20,
    "variants.train.epochs": 1,
    "variants.train.batch_size": 8,
    "variants.teacher.epochs": 1,
    "variants.teacher.batch_size": 8,
    "variants.teacher_arch": "test_resnet",
    "variants.model.arch_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run_variants in a project folder: (folder, cfg, rows)."""
    root = tmp_path_factory.mktemp("project")
    cfg = get_config("smoke", TINY_RUN, root=root)
    return root, cfg, run_variants(cfg, progress=False, device="cpu")


def test_run_variants_writes_one_comparison_row_per_variant(finished):
    _, cfg, rows = finished
    out = cfg.run_dir / "variants"
    assert [r["variant"] for r in rows] == list(cfg.variants.names) == list(VARIANTS)
    assert json.loads((out / "comparison.json").read_text()) == rows
    with open(out / "comparison.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COMPARISON_KEYS
    assert [r["variant"] for r in table] == [r["variant"] for r in rows]
    assert [int(r["params"]) for r in table] == [r["params"] for r in rows]
    for row in rows:
        model = build_variant(cfg, row["variant"])
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["epochs"] == 1 and 0 <= row["val_accuracy"] <= 1
        assert row["attention_bytes"] > 0 and row["train_minutes"] > 0
        files = {p.name for p in (out / row["variant"]).iterdir()}
        assert {"metrics.json", "checkpoint.pt", "model.safetensors", "history.csv"} <= files
    assert (out / "teacher" / "checkpoint.pt").is_file()
    # The parameter counts differ exactly by each variant's own weights (D 32, G 4, K 2,
    # H 2, one block): no class token and no learned position embedding; a distillation
    # token, its position and its head; Theta and the BatchNorm's scale and shift.
    params = {r["variant"]: r["params"] for r in rows}
    D, G, K, H = 32, 4, 2, 2
    assert params["simple_vit"] == params["vit"] - D - (1 + G * G) * D
    assert params["deit"] == params["vit"] + D + D + (D * K + K)
    assert params["deepvit"] == params["vit"] + H * H + 2 * H
    assert params["performer"] == params["vit"]  # the random features are a buffer


def test_the_cnn_reference_row_is_the_teachers_run_even_without_deit(finished, tmp_path):
    _, cfg, _ = finished
    teacher = json.loads((cfg.run_dir / "variants" / "teacher" / "metrics.json").read_text())
    row = reference_row(cfg)
    assert row["variant"] == "cnn" and "test_resnet" in row["title"]
    assert row["val_accuracy"] == teacher["val_accuracy"] and row["epochs"] == 1
    assert row["test_accuracy"] == teacher["test_accuracy"]
    assert row["params"] == sum(p.numel() for p in build_teacher(cfg).parameters())
    assert set(row) == set(COMPARISON_KEYS)
    alone = get_config("smoke", {**TINY_RUN, "variants.names": ["vit"]}, root=tmp_path)
    run_variants(alone, progress=False, device="cpu")
    assert reference_row(alone)["epochs"] == 1  # trained as the reference, no student needs it


def test_run_variants_reads_finished_runs_back_without_training(finished):
    _, cfg, rows = finished
    out = cfg.run_dir / "variants"
    saved = sorted(out.glob("*/checkpoint.pt")) + sorted(out.glob("*/model.safetensors"))
    assert len(saved) == 2 * len(VARIANTS) + 1  # and the teacher's checkpoint
    before = {p: p.stat().st_mtime_ns for p in saved}
    assert run_variants(cfg, progress=False, device="cpu") == rows
    assert {p: p.stat().st_mtime_ns for p in saved} == before


def test_trained_variants_reload_with_the_predictions_they_wrote(finished):
    """load_trained rebuilds each variant from its run folder: the sin-cos buffer from the
    config, the Performer's features and the BatchNorm's statistics from the weights."""
    _, cfg, _ = finished
    test = None
    for name in VARIANTS:
        run_dir = cfg.run_dir / "variants" / name
        model = load_trained(run_dir)
        if test is None:
            test = load_splits(cfg.data, model.pretrained_cfg, seed=cfg.seed, progress=False)
            test = test["test"]
        with open(run_dir / "predictions.csv", newline="") as f:
            written = torch.tensor(
                [[float(r["p_cat"]), float(r["p_dog"])] for r in csv.DictReader(f)]
            )
        with torch.no_grad():
            probs = model(test.normalise(torch.tensor(test.images))).softmax(-1)
        torch.testing.assert_close(probs, written, atol=2e-6, rtol=0)


def test_ensure_variants_reads_the_comparison_or_says_what_to_run(finished, tmp_path):
    root, _, rows = finished
    no_build = get_config("smoke", {**TINY_RUN, "build_missing": False}, root=root)
    assert ensure_variants(no_build, progress=False) == rows
    other = get_config(
        "smoke", {**TINY_RUN, "build_missing": False, "variants.names": ["vit"]}, root=tmp_path
    )
    with pytest.raises(ExperimentError, match="python -m vitlib variants --profile smoke"):
        ensure_variants(other, progress=False)
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_ensure_variants_refuses_a_comparison_of_other_variants(finished):
    root, _, _ = finished
    fewer = get_config(
        "smoke",
        {**TINY_RUN, "build_missing": False, "variants.names": ["vit", "deit"]},
        root=root,
    )
    with pytest.raises(ExperimentError, match="have not been trained"):
        ensure_variants(fewer, progress=False)


def test_run_variants_refuses_unknown_names_before_any_work(tmp_path):
    # get_config refuses the name at once; a config built by hand reaches run_variants.
    with pytest.raises(ConfigError, match="variants.names"):
        get_config("smoke", {"variants.names": ["vit", "swin"]}, root=tmp_path)
    cfg = get_config("smoke", root=tmp_path)
    cfg = dataclasses.replace(
        cfg, variants=dataclasses.replace(cfg.variants, names=("vit", "swin"))
    )
    with pytest.raises(ValueError, match=r"unknown variants \['swin'\]"):
        run_variants(cfg, progress=False, device="cpu")
    assert not any(tmp_path.iterdir())


def test_the_configs_variant_names_are_the_variants():
    assert VARIANT_NAMES == tuple(VARIANTS)


# --- Memory ------------------------------------------------------------------------------------


def test_peak_tensor_memory_counts_what_is_alive_at_once():
    floats = 1000 * 4  # bytes of torch.empty(1000)
    kept = peak_tensor_memory(lambda: torch.empty(1000))
    assert floats <= kept < 2 * floats

    def two_kept():
        a = torch.empty(1000)
        b = torch.empty(1000)
        return a, b

    def two_in_turn():
        a = torch.empty(1000)
        del a  # freed before the second is made
        return torch.empty(1000)

    assert peak_tensor_memory(two_kept) >= 2 * floats
    assert floats <= peak_tensor_memory(two_in_turn) < 2 * floats
    x = torch.empty(1000)
    assert floats <= peak_tensor_memory(lambda: x + 1) < 2 * floats  # inputs are not counted
    assert peak_tensor_memory(lambda: torch.empty(1000).view(10, 100)) < 2 * floats  # views


def _attention_bytes(attention: str, img_size: int) -> tuple[int, int]:
    model = build_vit(
        "vit_custom",
        img_size=img_size,
        patch_size=4,
        embed_dim=32,
        depth=1,
        num_heads=2,
        attention=attention,
        performer_features=16,
    ).eval()
    used = attention_memory(model)
    assert not model.blocks[0].attn.training  # measured in training mode, then put back
    return model.num_prefix_tokens + model.patch_embed.num_patches, used


def test_attention_memory_is_quadratic_for_reattention_and_linear_for_performer():
    """From 16 x 16 to 32 x 32 patches N goes 257 -> 1025 (x3.99). Measured: re-attention's
    memory x14.1 (its (B, H, N, N) maps; N^2 gives x15.9, the linear parts pull it down),
    Performer's x3.87 (M = 16 features). Margins: re-attention at least 0.8 N-ratio^2,
    Performer within 0.8-1.15 of the N-ratio."""
    n_small, re_small = _attention_bytes("reattention", 64)
    n_large, re_large = _attention_bytes("reattention", 128)
    _, perf_small = _attention_bytes("performer", 64)
    _, perf_large = _attention_bytes("performer", 128)
    growth = n_large / n_small
    assert re_large / re_small > 0.8 * growth**2
    assert 0.8 * growth < perf_large / perf_small < 1.15 * growth
    assert perf_large < re_large / 10


def test_each_run_is_trained_with_and_named_by_its_own_settings(tmp_path, monkeypatch):
    import vitlib.variants as V

    seen = []
    real = V.fine_tune

    def fake_fine_tune(model, datasets, train_cfg, **kwargs):
        seen.append((kwargs["settings"], train_cfg))
        if kwargs["settings"] == "variants.teacher":
            return real(model, datasets, train_cfg, **kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(V, "fine_tune", fake_fine_tune)
    cfg = get_config("smoke", {**TINY_RUN, "variants.names": ["vit", "deit"]}, root=tmp_path)
    data = load_splits(cfg.data, build_variant(cfg, "vit").pretrained_cfg, progress=False)
    with pytest.raises(RuntimeError, match="stop"):
        run_variants(cfg, progress=False, device="cpu", datasets=data)
    assert seen == [  # the teacher first, then each variant by the variants' settings
        ("variants.teacher", cfg.variants.teacher),
        ("variants.train", cfg.variants.train),
    ]


def test_teacher_summary_without_deit_says_there_is_none(tmp_path):
    cfg = get_config("smoke", {"variants.names": ["vit", "simple_vit"]}, root=tmp_path)
    assert teacher_summary(cfg).startswith("no teacher")
