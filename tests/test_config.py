"""Profiles and overrides."""

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from vitlib.config import OVERLAYS, PROFILES, get_config, overlay, to_dict, validate
from vitlib.errors import ConfigError


def test_full_profile_is_the_studys_setting():
    cfg = get_config("full")
    assert cfg.model.arch == "vit_base_patch16_224"
    assert cfg.model.pretrained == "vit_base_patch16_224.orig_in21k_ft_in1k"
    assert cfg.data.split_sizes == (20_000, 2_000, 2_000)
    for run in (cfg.probe, cfg.finetune):
        assert (run.epochs, run.batch_size, run.lr, run.schedule) == (5, 16, 1e-4, "cosine")


def test_laptop_profile_is_the_studys_model_and_recipe_on_a_subset():
    full, laptop = get_config("full"), get_config("laptop")
    assert laptop.model == full.model  # ViT-B/16 with the JAX weights and their preprocessing
    assert (laptop.data.root, laptop.data.download) == (full.data.root, full.data.download)
    assert sum(laptop.data.split_sizes) < sum(full.data.split_sizes) / 5
    assert laptop.probe == full.probe  # the study's probe, on cached features
    assert dataclasses.replace(laptop.finetune, epochs=5) == full.finetune  # fewer epochs only
    assert laptop.variants.model == get_config("cpu").variants.model  # cpu's small hybrid


def test_overrides_replace_nested_fields_and_leave_the_profile_alone():
    cfg = get_config("smoke", {"probe.epochs": 1, "data.split_sizes": [10, 5, 5], "seed": 3})
    assert cfg.probe.epochs == 1 and cfg.seed == 3
    assert cfg.data.split_sizes == (10, 5, 5)  # lists from JSON/papermill become tuples
    assert get_config("smoke") == PROFILES["smoke"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"probe.epoch": 1}, "unknown setting 'probe.epoch'"),
        ({"optimizer": "sgd"}, "unknown setting 'optimizer'"),
        ({"probe": 1}, "is a section"),
        ({"seed.value": 1}, "has no sub-settings"),
    ],
)
def test_unknown_settings_are_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_config("smoke", overrides)


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ValueError, match=r"expected one of \[.*'full'.*'smoke'"):
        get_config("fast")


def test_config_is_frozen_and_serialisable():
    cfg = get_config("full")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1
    assert json.loads(json.dumps(to_dict(cfg)))["model"]["arch"] == "vit_base_patch16_224"


def test_root_makes_relative_paths_absolute_and_keeps_absolute_ones(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"")
    cfg = get_config(
        "full",
        {"data.root": "/abs/photos", "model.pretrained": "w.pth"},
        root=tmp_path,
    )
    assert cfg.run_dir == tmp_path / "runs" / "full"
    assert cfg.figure_dir == tmp_path / "figures" / "full"
    assert cfg.data.cache_dir == str(tmp_path / "data" / "cache")
    assert cfg.data.root == "/abs/photos"
    assert cfg.model.pretrained == str(tmp_path / "w.pth")
    tagged = get_config("full", root=tmp_path)  # a timm tag is not a path
    assert tagged.model.pretrained == "vit_base_patch16_224.orig_in21k_ft_in1k"


# --- Overlays ----------------------------------------------------------------------------------


def leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every setting of a config by dotted key ({"probe.epochs": 5, ...})."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out |= leaves(value, f"{prefix}{f.name}.")
        else:
            out[f"{prefix}{f.name}"] = value
    return out


@pytest.mark.parametrize("profile", ["smoke", "cpu", "laptop"])
def test_overlays_are_full_with_their_changes_and_nothing_else(profile):
    full, cfg, changes = leaves(PROFILES["full"]), leaves(PROFILES[profile]), OVERLAYS[profile]
    assert set(changes) <= set(full)  # every change names a setting
    for key, value in cfg.items():
        assert value == (changes[key] if key in changes else full[key]), key
    assert cfg["profile"] == profile


def test_overlays_reset_what_full_sets_and_they_do_not_want():
    smoke, cpu = PROFILES["smoke"], PROFILES["cpu"]
    for cfg in (smoke, cpu):
        assert cfg.model.pretrained is None and cfg.data.num_workers == 0  # full: a tag, 4
        assert cfg.model.arch == cfg.variants.model.arch == "vit_custom"
    assert smoke.data.root is None and smoke.data.source == "synthetic"
    assert (smoke.variants.train.optimizer, smoke.variants.train.warmup_epochs) == ("adam", 0.0)
    assert smoke.variants.train.grad_clip_norm == 0.0 and smoke.variants.teacher.epochs == 3
    full = PROFILES["full"]  # the study: Adam, no warm-up, 5 epochs
    assert (full.finetune.optimizer, full.finetune.warmup_epochs) == ("adam", 0.0)
    assert (cpu.finetune.optimizer, cpu.finetune.epochs) == ("adamw", 7)
    assert 0 < cpu.finetune.warmup_epochs < 1 and cpu.finetune.label_smoothing > 0
    assert cpu.variants.train.grad_clip_norm > 0 == cpu.variants.teacher.grad_clip_norm


def test_overlay_applies_changes_like_overrides_and_leaves_the_base_alone():
    full = PROFILES["full"]
    cfg = overlay(full, {"probe.lr": 1, "variants.names": ["vit"], "model.img_size": 384})
    assert (cfg.probe.lr, cfg.variants.names, cfg.model.img_size) == (1.0, ("vit",), 384)
    assert isinstance(cfg.probe.lr, float) and full.probe.lr == 1e-4
    assert overlay(full, {}) == full
    with pytest.raises(ConfigError, match="unknown setting 'probe.nope'"):
        overlay(full, {"probe.nope": 1})


# --- Types -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("finetune.epochs", "abc", "finetune.epochs: expected an integer, got 'abc' (str)"),
        ("finetune.epochs", True, "finetune.epochs: expected an integer, got True (bool)"),
        ("finetune.epochs", 2.5, "finetune.epochs: expected an integer, got 2.5 (float)"),
        ("probe.batch_size", float("nan"), "expected an integer, got nan (float)"),
        ("probe.batch_size", None, "probe.batch_size: expected an integer, got None"),
        ("seed", "0", "seed: expected an integer, got '0' (str)"),
        ("probe.lr", "1e-3", "probe.lr: expected a number, got '1e-3' (str)"),
        ("probe.lr", False, "probe.lr: expected a number, got False (bool)"),
        ("probe.lr", None, "probe.lr: expected a number, got None (NoneType)"),
        ("data.augment", 1, "data.augment: expected a bool, got 1 (int)"),
        ("data.augment", "false", "data.augment: expected a bool, got 'false' (str)"),
        ("model.arch", None, "model.arch: expected a string, got None (NoneType)"),
        ("data.cache_dir", 3, "data.cache_dir: expected a string"),
        ("model.pretrained", 3, "model.pretrained: expected a string or None, got 3 (int)"),
        ("model.img_size", "32", "model.img_size: expected an integer or None, got '32'"),
        ("model.img_size", 32.5, "model.img_size: expected an integer or None"),
        ("data.split_sizes", [10, 5], "data.split_sizes: expected a list of 3 integers"),
        ("data.split_sizes", [10, 5, 5, 5], "expected a list of 3 integers, got [10, 5, 5, 5]"),
        ("data.split_sizes", [10, 5, "5"], "expected a list of 3 integers"),
        ("data.split_sizes", [10, 5, True], "expected a list of 3 integers"),
        ("data.split_sizes", "10,5,5", "expected a list of 3 integers, got '10,5,5' (str)"),
        ("data.split_sizes", None, "data.split_sizes: expected a list of 3 integers, got None"),
        ("data.split_sizes", {1: 2}, "expected a list of 3 integers"),
        ("variants.names", "vit", "variants.names: expected a list of strings, got 'vit'"),
        ("variants.names", ["vit", 1], "variants.names: expected a list of strings"),
        ("model.arch_kwargs", [("depth", 2)], "model.arch_kwargs: expected a dict"),
        ("model.arch_kwargs", {1: 2}, "model.arch_kwargs: expected a dict with string keys"),
        ("build_missing", None, "build_missing: expected a bool, got None (NoneType)"),
    ],
)
def test_override_values_must_have_the_fields_type(key, value, expected):
    with pytest.raises(ConfigError) as info:
        get_config("smoke", {key: value})
    message = str(info.value)
    assert isinstance(info.value, ValueError)  # what callers catching ValueError still get
    assert message.startswith(f"{key}: expected ") and "\n" not in message
    assert expected in message


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("data.split_sizes", [10, 5, 5], (10, 5, 5)),  # JSON and papermill give lists
        ("variants.names", ["deit", "vit"], ("deit", "vit")),
        ("probe.lr", 1, 1.0),
        ("finetune.warmup_epochs", 1, 1.0),
        ("finetune.epochs", 2.0, 2),  # an integral float, as JSON may write it
        ("model.img_size", None, None),
        ("model.pretrained", None, None),
        ("data.augment", True, True),
        ("model.arch_kwargs", {"patch_size": 4}, {"patch_size": 4}),
    ],
)
def test_override_values_are_converted_to_the_fields_type(key, value, expected):
    cfg = get_config("smoke", {key: value})
    got = functools.reduce(getattr, key.split("."), cfg)
    assert got == expected and type(got) is type(expected)


# --- Ranges and choices ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, bad, good",
    [
        ("probe.epochs", 0, 1),
        ("finetune.epochs", -3, 1),
        ("variants.teacher.epochs", 0, 1),
        ("probe.batch_size", 0, 1),
        ("variants.train.batch_size", 0, 1),
        ("finetune.eval_batch_size", 0, 1),
        ("finetune.lr", 0.0, 1e-6),
        ("finetune.lr", -1e-3, 1e-6),
        ("finetune.lr", float("nan"), 1e-6),
        ("variants.train.lr", float("inf"), 1e-6),
        ("probe.weight_decay", -0.1, 0.0),
        ("probe.weight_decay", float("nan"), 0.0),
        ("finetune.warmup_epochs", -0.5, 0.0),
        ("finetune.warmup_epochs", 6.5, 6.0),  # smoke fine-tunes for 6 epochs
        ("finetune.grad_clip_norm", -1.0, 0.0),
        ("probe.schedule", "linear", "constant"),
        ("variants.teacher.schedule", "Cosine", "cosine"),
        ("probe.optimizer", "sgd", "adamw"),
        ("variants.train.optimizer", "AdamW", "adam"),
        ("data.source", "web", "folder"),
        ("data.split_sizes", (0, 1, 1), (1, 1, 1)),
        ("data.split_sizes", (1, 0, 1), (1, 1, 1)),
        ("data.split_sizes", (1, 1, 0), (1, 1, 1)),
        ("data.split_sizes", (-5, 1, 1), (1, 1, 1)),
        ("data.synthetic_per_class", 0, 1),
        ("data.synthetic_img_size", 7, 8),
        ("data.synthetic_seed", -1, 0),
        ("data.num_workers", -1, 0),
        ("seed", -1, 0),
        ("model.num_classes", 1, 2),
        ("variants.model.num_classes", 0, 2),
        ("model.img_size", 0, 8),
        ("model.img_size", 36, 40),  # smoke's patch is 8
        ("variants.model.img_size", 20, 16),
        ("model.arch_kwargs", {"img_size": 32}, {"patch_size": 4}),
        ("variants.names", (), ("vit",)),
        ("variants.names", ("vit", "swin"), ("vit", "performer")),
        ("variants.names", ("vit", "vit"), ("vit", "deit")),
    ],
)
def test_each_setting_is_range_checked(key, bad, good):
    with pytest.raises(ConfigError) as info:
        get_config("smoke", {key: bad})
    message = str(info.value)
    assert message.startswith(f"{key}: expected ") and "\n" not in message
    assert repr(bad) in message  # the value given
    assert functools.reduce(getattr, key.split("."), get_config("smoke", {key: good})) == good


@pytest.mark.parametrize(
    "overrides, message",
    [
        # The patch size from arch_kwargs, from the arch's name, or vit_custom's default of 16.
        ({"model.arch_kwargs": {"patch_size": 5}}, "model.img_size: expected a multiple of the "),
        ({"model.arch_kwargs": {"patch_size": 0}}, "model.arch_kwargs.patch_size: expected an "),
        ({"model.arch_kwargs": {"patch_size": "8"}}, "model.arch_kwargs.patch_size: expected an"),
        (
            {"model.arch_kwargs": {}, "model.img_size": 40},
            "model.img_size: expected a multiple of the patch size 16, got 40",
        ),
        (
            {"model.arch_kwargs": {"patch_size": 12}, "model.img_size": None},
            "model.img_size: expected a multiple of the patch size 12, got 224 (vit_custom's",
        ),
        (
            {"model.arch": "vit_huge_patch14_224", "model.arch_kwargs": {}, "model.img_size": 32},
            "model.img_size: expected a multiple of the patch size 14, got 32",
        ),
        ({"variants.model.arch_kwargs": {"patch_size": 6}}, "variants.model.img_size: expected"),
    ],
)
def test_img_size_must_be_a_multiple_of_the_patch_size(overrides, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        get_config("smoke", overrides)


def test_patch_sizes_checked_are_the_ones_the_model_builds():
    from vitlib.model import ARCHITECTURES, CUSTOM_DEFAULTS

    for arch, sizes in [*ARCHITECTURES.items(), ("vit_custom", CUSTOM_DEFAULTS)]:
        patch, img = sizes["patch_size"], sizes["img_size"]
        over = {"model.arch": arch, "model.arch_kwargs": {}, "model.img_size": None}
        assert get_config("full", over).model.arch == arch  # its own img_size fits
        assert get_config("full", {**over, "model.img_size": 3 * patch}).model.img_size == 3 * patch
        with pytest.raises(ConfigError, match=f"patch size {patch}, got {3 * patch + 1}$"):
            get_config("full", {**over, "model.img_size": 3 * patch + 1})
    assert img == 224  # vit_custom's default img_size, as config.py assumes


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_built_in_profiles_validate(profile):
    assert validate(PROFILES[profile]) is PROFILES[profile]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"seed": "3"}, "seed: expected an integer, got '3' (str)"),
        ({"probe": {"epochs": 1}}, "probe: expected a TrainConfig, got {'epochs': 1}"),
        ({"run_root": Path("runs")}, "run_root: expected a string, got PosixPath('runs')"),
    ],
)
def test_validate_checks_the_types_of_a_config_built_by_hand(changes, message):
    cfg = dataclasses.replace(PROFILES["smoke"], **changes)
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        validate(cfg)


def test_messages_stay_on_one_line_for_values_that_print_on_many():
    class Tall:
        def __repr__(self) -> str:
            return "Tall(\n  1\n)"

    with pytest.raises(ConfigError) as info:
        get_config("smoke", {"probe.epochs": Tall()})
    assert str(info.value) == "probe.epochs: expected an integer, got Tall( 1 ) (Tall)"
