"""Profiles and overrides."""

import dataclasses
import json

import pytest

from vitlib.config import PROFILES, get_config, to_dict


def test_full_profile_is_the_studys_setting():
    cfg = get_config("full")
    assert cfg.model.arch == "vit_base_patch16_224"
    assert cfg.model.pretrained == "vit_base_patch16_224.orig_in21k_ft_in1k"
    assert cfg.data.split_sizes == (20_000, 2_000, 2_000)
    for run in (cfg.probe, cfg.finetune):
        assert (run.epochs, run.batch_size, run.lr, run.schedule) == (5, 16, 1e-4, "cosine")


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
