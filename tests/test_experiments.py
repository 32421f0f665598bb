"""Tests of vitlib.experiments and vitlib.runs: run_experiment, its checks and the run folder,
what a run records of its inputs, and the run folder's lock."""

from __future__ import annotations

import contextlib
import csv
import json
import multiprocessing
import socket

import numpy as np
import pytest
import torch
from helpers import kaggle_folder
from training import TINY, FakeImages, hold_lock, no_temp_files, tiny_model

from vitlib import experiments, runs
from vitlib.checkpoints import create_model
from vitlib.config import get_config
from vitlib.errors import ExperimentError
from vitlib.experiments import run_experiment
from vitlib.runs import load_trained
from vitlib.train import (
    zero_shot,
)
from vitlib.variants import run_variants


def test_zero_shot_run_writes_predictions_and_no_training_files(data, tmp_path):
    model = tiny_model(num_classes=1000)
    model.provenance = {"weights": "a fake 1k head"}
    with torch.no_grad():
        model.head.bias[281] = 20.0
    cfg = get_config("smoke", {"run_root": str(tmp_path)})
    metrics = run_experiment(cfg, "zero-shot", datasets=data, model=model, progress=False)
    run_dir = tmp_path / "smoke" / "zero-shot"
    files = {"metrics.json", "run.json", "predictions.csv", "misclassified.csv"}
    assert {p.name for p in run_dir.iterdir()} == files
    assert metrics["applicable"] and metrics["epochs"] == 0
    assert metrics["test_accuracy"] == 0.5 and metrics["confusion_matrix"] == [[8, 0], [8, 0]]
    assert metrics["test_imagenet_mass"] > 0.99


RUN_FILES = {
    "probe": {
        "metrics.json",
        "run.json",
        "history.csv",
        "predictions.csv",
        "misclassified.csv",
        "checkpoint.pt",
        "features.pt",
        "model.safetensors",
        "model.json",
    },
    "finetune": {
        "metrics.json",
        "run.json",
        "history.csv",
        "predictions.csv",
        "misclassified.csv",
        "checkpoint.pt",
        "model.safetensors",
        "model.json",
    },
}


@pytest.mark.parametrize("experiment", ["probe", "finetune"])
def test_run_experiment_writes_complete_outputs(data, tmp_path, experiment, caplog):
    caplog.set_level("INFO", logger="vitlib.train")
    cfg = get_config(
        "smoke",
        {
            "run_root": str(tmp_path),
            "probe.epochs": 2,
            "finetune.epochs": 2,
            "probe.batch_size": 8,
            "finetune.batch_size": 8,
        },
    )
    model = tiny_model()
    metrics = run_experiment(
        cfg, experiment, datasets=data, model=model, progress=False, device="cpu"
    )
    run_dir = tmp_path / "smoke" / experiment
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES[experiment]
    assert f"{experiment} epoch 2/2: train loss" in caplog.text
    assert no_temp_files(tmp_path)

    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in (
        "val_accuracy",
        "val_loss",
        "test_accuracy",
        "test_loss",
        "confusion_matrix",
        "n_misclassified",
        "history",
        "minutes",
        "classes",
        "n",
    ):
        assert key in saved, key
    assert len(saved["history"]) == 2
    assert set(saved["history"][0]) == set(runs.HISTORY_KEYS)
    cm = np.array(saved["confusion_matrix"])
    assert cm.sum() == len(data["test"]) and cm.trace() / cm.sum() == pytest.approx(
        saved["test_accuracy"]
    )

    with open(run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == data["test"].paths
    wrong = [r for r in rows if r["label"] != r["pred"]]
    with open(run_dir / "misclassified.csv") as f:
        assert list(csv.DictReader(f)) == wrong
    assert len(wrong) == saved["n_misclassified"]
    assert all(float(r["p_cat"]) + float(r["p_dog"]) == pytest.approx(1, abs=1e-5) for r in rows)
    with open(run_dir / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 2

    info = json.loads((run_dir / "run.json").read_text())
    assert (
        info["config"]["profile"] == "smoke"
        and info["config"]["probe" if experiment == "probe" else "finetune"]["epochs"] == 2
    )
    assert set(info["versions"]) >= {"python", "torch", "timm", "vitlib"}
    assert info["weights"]["weights"] == "random init"
    assert info["data"] and info["minutes"] >= 0

    loaded = load_trained(run_dir)
    x = data["test"].normalise(torch.from_numpy(data["test"].images[:4]))
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert json.loads((run_dir / "model.json").read_text())["arch"] == "vit_custom"


def test_finetune_can_start_from_the_probes_head(data, tmp_path):
    cfg = get_config(
        "smoke",
        {
            "run_root": str(tmp_path),
            "probe.epochs": 1,
            "finetune.epochs": 1,
            "finetune.init_from_probe": True,
        },
    )
    with pytest.raises(ExperimentError, match="run the probe first"):
        run_experiment(cfg, "finetune", datasets=data, model=tiny_model(), progress=False)
    run_experiment(cfg, "probe", datasets=data, model=tiny_model(), progress=False, device="cpu")
    probe_head = load_trained(tmp_path / "smoke" / "probe").head.weight
    seen = {}

    def look_at_the_head(epoch, step, net):
        if (epoch, step) == (0, 0):
            seen["head"] = net.head.weight.detach().clone()

    run_experiment(
        cfg,
        "finetune",
        datasets=data,
        model=tiny_model(),
        progress=False,
        device="cpu",
        on_step=look_at_the_head,
    )
    assert probe_head.abs().sum() > 0 and torch.equal(seen["head"], probe_head)


def _must_not_run(*args, **kwargs):
    raise AssertionError("work started before the inputs were checked")


def test_missing_inputs_fail_at_once_with_what_to_do(tmp_path, monkeypatch):
    for name in ("build_model", "load_splits", "linear_probe", "fine_tune"):
        monkeypatch.setattr(experiments, name, _must_not_run)  # fails before any of these
    full = get_config("full", {"data.root": str(tmp_path / "nowhere")})
    with pytest.raises(ExperimentError, match="kaggle.com/c/dogs-vs-cats"):
        run_experiment(full, "probe")
    cfg = get_config(
        "full", {"data.root": str(tmp_path), "model.pretrained": str(tmp_path / "w.pth")}
    )
    with pytest.raises(ExperimentError, match="jx_vit_base_p16_224-80ecf9dd.pth.*--weights"):
        run_experiment(cfg, "probe")
    with pytest.raises(ExperimentError, match="unknown experiment"):
        experiments.check_inputs(full, "pretrain")


def test_classes_come_from_the_dataset_and_are_stored_in_the_run(tmp_path):
    def renamed(ds):
        ds.classes = ("ant", "bee")
        return ds

    data = {s: renamed(FakeImages(n, seed=k)) for k, (s, n) in
            enumerate((("train", 32), ("val", 16), ("test", 16)))}  # fmt: skip
    cfg = get_config("smoke", {"run_root": str(tmp_path), "finetune.epochs": 1})
    metrics = run_experiment(cfg, "finetune", datasets=data, model=tiny_model(), progress=False,
                             device="cpu")  # fmt: skip
    run_dir = tmp_path / "smoke" / "finetune"
    assert metrics["classes"] == ["ant", "bee"]
    assert json.loads((run_dir / "model.json").read_text())["classes"] == ["ant", "bee"]
    assert load_trained(run_dir).classes == ("ant", "bee")
    with open(run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["label"] for r in rows} == {"ant", "bee"} and "p_bee" in rows[0]
    wrong = runs.read_misclassified(run_dir)
    assert wrong["classes"] == ("ant", "bee") and wrong["probabilities"].shape[1] == 2
    # Zero-shot knows ImageNet's cats and dogs only: for other classes it says so.
    imagenet = create_model("vit_custom", num_classes=1000, **TINY)
    imagenet.provenance = {"weights": "a stand-in for pretrained weights"}
    result = zero_shot(imagenet, data, progress=False, device="cpu")
    assert not result["applicable"] and "['ant', 'bee']" in result["reason"]


# --- a run knows what it was trained on ------------------------------------------------------


def folder_config(tmp_path, root, **more):
    return get_config("smoke", {
        "run_root": str(tmp_path / "runs"), "data.cache_dir": str(tmp_path / "cache"),
        "data.source": "folder", "data.root": str(root), "data.split_sizes": [8, 4, 4],
        "finetune.epochs": 2, "finetune.batch_size": 8, **more,
    })  # fmt: skip


def test_resume_on_another_data_folder_is_refused_and_the_run_is_kept(tmp_path):
    """The bug: a finished fine-tune, then the same command with --resume --data OTHER ran
    on, and run.json claimed all the epochs on the other folder."""
    first, other = kaggle_folder(tmp_path / "a", 8, 8), kaggle_folder(tmp_path / "b", 9, 9)
    cfg = folder_config(tmp_path, first)
    run_experiment(cfg, "finetune", model=tiny_model(), progress=False, device="cpu")
    run_dir = cfg.run_dir / "finetune"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    info = json.loads(before["run.json"])
    assert info["fingerprint"]["data"] == info["data"]["manifest_sha256"]  # a real manifest
    again = folder_config(tmp_path, other)
    with pytest.raises(ExperimentError, match="the data differs") as err:
        run_experiment(again, "finetune", resume=True, model=tiny_model(), progress=False,
                       device="cpu")  # fmt: skip
    assert str(first) in str(err.value) and str(other) in str(err.value)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # nothing rewritten


def test_run_json_and_the_checkpoint_record_data_model_settings_and_weights(data, tmp_path):
    cfg = get_config("smoke", {"run_root": str(tmp_path), "finetune.epochs": 1})
    model = tiny_model()
    run_experiment(cfg, "finetune", datasets=data, model=model, progress=False, device="cpu")
    run_dir = tmp_path / "smoke" / "finetune"
    recorded = json.loads((run_dir / "run.json").read_text())["fingerprint"]
    assert recorded == torch.load(run_dir / "checkpoint.pt", weights_only=True)["inputs"]
    assert recorded["model"] == json.loads(json.dumps(model.arch_config))
    assert recorded["weights"] is None and recorded["weights_source"] == "random init"
    assert recorded["data_source"] == "FakeImages" and len(recorded["data"]) == 64


# --- one run at a time in a run folder ---------------------------------------------------------


@contextlib.contextmanager
def held_elsewhere(run_dir):
    """run_dir's lock, held by another process; yields that process's pid."""
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=hold_lock, args=(run_dir, ready, release), daemon=True)
    holder.start()
    try:
        assert ready.wait(30), "the other process did not take the lock"
        yield holder.pid
    finally:
        release.set()
        holder.join(30)


needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods() or runs.fcntl is None,
    reason="needs fork and fcntl",
)


@needs_fork
def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(data, tmp_path):
    cfg = get_config("smoke", {"run_root": str(tmp_path), "finetune.epochs": 1})
    run_dir = tmp_path / "smoke" / "finetune"
    kw = dict(datasets=data, progress=False, device="cpu")
    with held_elsewhere(run_dir) as pid, pytest.MonkeyPatch.context() as mp:
        mp.setattr(experiments, "fine_tune", _must_not_run)  # refused at once, not after training
        with pytest.raises(ExperimentError, match=f"in use by another run: pid {pid} on ") as err:
            run_experiment(cfg, "finetune", model=tiny_model(), **kw)
        assert socket.gethostname() in str(err.value) and "started 20" in str(err.value)
        assert {p.name for p in run_dir.iterdir()} == {"run.lock"}  # nothing else written
    assert run_experiment(cfg, "finetune", model=tiny_model(), **kw)["epochs"] == 1
    assert not (run_dir / "run.lock").exists()


def test_a_lock_left_by_a_process_that_is_gone_is_taken_over_with_a_warning(data, tmp_path, caplog):
    run_dir = tmp_path / "smoke" / "finetune"
    run_dir.mkdir(parents=True)
    gone = 2**22 + 1  # above Linux's largest pid: no such process
    stale = {"pid": gone, "host": socket.gethostname(), "started": "2020-01-01T00:00:00"}
    (run_dir / "run.lock").write_text(json.dumps(stale))
    caplog.set_level("WARNING", logger="vitlib.runs")
    cfg = get_config("smoke", {"run_root": str(tmp_path), "finetune.epochs": 1})
    metrics = run_experiment(cfg, "finetune", datasets=data, model=tiny_model(), progress=False,
                             device="cpu")  # fmt: skip
    assert metrics["epochs"] == 1
    assert f"taking over the lock of pid {gone}" in caplog.text and "2020-01-01" in caplog.text
    assert not (run_dir / "run.lock").exists()


@needs_fork
def test_variants_lock_their_folder_and_each_run(data, tmp_path):
    cfg = get_config("smoke", {"run_root": str(tmp_path), "variants.names": ["vit"]})
    for held in (cfg.run_dir / "variants", cfg.run_dir / "variants" / "vit"):
        with held_elsewhere(held) as pid:
            with pytest.raises(
                ExperimentError, match=f"{held} is in use by another run: pid {pid}"
            ):
                run_variants(cfg, progress=False, device="cpu", datasets=data)
        assert not (cfg.run_dir / "variants" / "vit" / "checkpoint.pt").exists()
