"""Tests of vitlib.resume: fingerprints of the fixed parts a checkpoint does not hold, the record
of what a run trains on, and an augmented run resumed after SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from training import TC, TINY, FakeImages, comparable, fake_splits, tiny_model

from vitlib import resume
from vitlib.checkpoints import create_model
from vitlib.config import TrainConfig, get_config
from vitlib.errors import ExperimentError
from vitlib.experiments import run_experiment
from vitlib.runs import load_trained
from vitlib.train import fine_tune, linear_probe


def test_a_distilled_models_fingerprint_leaves_out_both_heads():
    model = tiny_model()
    deit = create_model("vit_custom", num_classes=2, distilled=True, **TINY)
    before = resume.backbone_fingerprint(deit)
    with torch.no_grad():
        deit.head_dist.weight.add_(1.0)
        deit.head.bias.add_(1.0)
    assert resume.backbone_fingerprint(deit) == before
    with torch.no_grad():
        deit.pos_embed.add_(1.0)
    assert resume.backbone_fingerprint(deit) != before
    assert resume.backbone_fingerprint(model) != before


# --- a resume refuses a run of other inputs ---------------------------------------------------

ONE_EPOCH = TrainConfig(epochs=1, batch_size=8)
KW = dict(progress=False, device="cpu")


def weights_file(path: Path, seed: int) -> Path:
    save_file(tiny_model(seed).state_dict(), path)
    return path


def from_file(path: Path) -> torch.nn.Module:
    return create_model("vit_custom", pretrained=path, num_classes=2, **TINY)


def test_resume_refuses_a_run_of_other_data_model_settings_or_weights(data, tmp_path):
    fine_tune(tiny_model(), data, ONE_EPOCH, run_dir=tmp_path, **KW)
    same = fine_tune(tiny_model(), data, ONE_EPOCH, run_dir=tmp_path, resume=True, **KW)
    assert same["resumed_from"] == 1  # nothing changed: the finished run is read back
    other_data = {**data, "train": FakeImages(48, seed=7)}  # same names, other images
    with pytest.raises(ExperimentError, match=r"other inputs: the data differs") as err:
        fine_tune(tiny_model(), other_data, ONE_EPOCH, run_dir=tmp_path, resume=True, **KW)
    assert "--resume" in str(err.value) and "model settings" not in str(err.value)
    # Average pooling has the very same tensors: only the record tells the two runs apart.
    pooled = create_model("vit_custom", num_classes=2, global_pool="avg", **TINY)
    with pytest.raises(
        ExperimentError, match=r"model settings differ \(global_pool 'token' -> 'avg'"
    ):
        fine_tune(pooled, data, ONE_EPOCH, run_dir=tmp_path, resume=True, **KW)
    a, b = weights_file(tmp_path / "a.safetensors", 1), weights_file(tmp_path / "b.safetensors", 2)
    with pytest.raises(ExperimentError, match=r"the weights differ \(random init, sha256 none"):
        fine_tune(from_file(a), data, ONE_EPOCH, run_dir=tmp_path, resume=True, **KW)
    fine_tune(from_file(a), data, ONE_EPOCH, run_dir=tmp_path / "from_a", **KW)
    with pytest.raises(ExperimentError, match=r"the weights differ .*a\.safetensors.*b\.safetens"):
        fine_tune(from_file(b), data, ONE_EPOCH, run_dir=tmp_path / "from_a", resume=True, **KW)
    again = fine_tune(from_file(a), data, ONE_EPOCH, run_dir=tmp_path / "from_a", resume=True, **KW)
    assert again["resumed_from"] == 1


def test_the_probe_names_other_weights_before_its_backbone_fingerprint(data, tmp_path):
    a, b = weights_file(tmp_path / "a.safetensors", 1), weights_file(tmp_path / "b.safetensors", 2)
    linear_probe(from_file(a), data, ONE_EPOCH, run_dir=tmp_path, **KW)
    with pytest.raises(ExperimentError, match="the weights differ"):
        linear_probe(from_file(b), data, ONE_EPOCH, run_dir=tmp_path, resume=True, **KW)


def test_a_checkpoint_without_a_record_of_its_inputs_is_not_resumed(data, tmp_path):
    fine_tune(tiny_model(), data, ONE_EPOCH, run_dir=tmp_path, **KW)
    ckpt = tmp_path / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["inputs"]  # as an older vitlib wrote it
    torch.save(state, ckpt)
    with pytest.raises(ExperimentError, match="not recorded in it"):
        fine_tune(tiny_model(), data, ONE_EPOCH, run_dir=tmp_path, resume=True, **KW)


def test_a_damaged_training_checkpoint_is_a_clear_error(data, tmp_path):
    fine_tune(tiny_model(), data, ONE_EPOCH, run_dir=tmp_path, **KW)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ExperimentError, match=r"cannot read the training checkpoint .*--resume"):
        fine_tune(tiny_model(), data, ONE_EPOCH, run_dir=tmp_path, resume=True, **KW)


def test_the_data_fingerprint_is_the_manifests_or_a_hash_of_the_items(data):
    inputs = resume.run_inputs(tiny_model(), data)
    assert inputs["model"] == json.loads(json.dumps(tiny_model().arch_config))
    assert inputs["weights"] is None and inputs["weights_source"] == "random init"
    assert inputs == resume.run_inputs(tiny_model(), fake_splits())  # rebuilt: the same
    renamed = fake_splits()
    renamed["test"].paths[0] = "elsewhere.jpg"
    relabelled = fake_splits()
    relabelled["val"].labels[0] = 1 - relabelled["val"].labels[0]
    for changed in (renamed, relabelled, {**data, "train": FakeImages(48, seed=9)}):
        assert resume.run_inputs(tiny_model(), changed)["data"] != inputs["data"]
    with_manifest = fake_splits()
    with_manifest["train"].info = {**with_manifest["train"].info, "manifest_sha256": "ab" * 32}
    assert resume.run_inputs(tiny_model(), with_manifest)["data"] == "ab" * 32


# --- a run killed by SIGKILL resumes to the run never killed -----------------------------------

KILLED_RUN = """
import json, os, signal, sys
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[3]))
from training import fake_splits, tiny_model
from vitlib.config import get_config
from vitlib.experiments import run_experiment

def die_in_epoch_2(epoch, step, net):
    if (epoch, step) == (1, 2):
        os.kill(os.getpid(), signal.SIGKILL)

cfg = get_config("smoke", json.loads(sys.argv[2]))
run_experiment(cfg, "finetune", datasets=fake_splits(augment=True), model=tiny_model(),
               progress=False, device="cpu", on_step=die_in_epoch_2)
"""


def smoke_finetune(run_root: Path) -> dict:
    return {
        "run_root": str(run_root),
        "finetune.epochs": TC.epochs,
        "finetune.batch_size": TC.batch_size,
        "finetune.lr": TC.lr,
        "finetune.eval_batch_size": TC.eval_batch_size,
    }


def counting_augmentations(splits: dict) -> tuple[dict, list]:
    """`splits` with its train split's augment_batch recording (input, output) of each call."""
    train, calls = splits["train"], []
    real = train.augment_batch
    train.augment_batch = lambda images: calls.append((images, real(images))) or calls[-1][1]
    return splits, calls


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_run_killed_by_sigkill_mid_epoch_resumes_to_the_uninterrupted_run(tmp_path, caplog):
    """Augmented by ImageDataset (crops and flips from torch's global RNG), so the resumed
    epochs match only if the checkpoint's RNG state replaces this process's own."""
    cut = tmp_path / "cut"
    args = [
        str(Path(__file__).parent),
        json.dumps(smoke_finetune(cut)),
        str(torch.get_num_threads()),
    ]
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, *args], stderr=subprocess.PIPE, text=True
    )
    _, stderr = child.communicate(timeout=600)  # a hang guard, not a speed bound
    assert child.returncode == -signal.SIGKILL, stderr
    run_dir = cut / "smoke" / "finetune"
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    assert json.loads((run_dir / "run.lock").read_text())["pid"] == child.pid  # left behind
    assert not (run_dir / "metrics.json").exists()

    whole_cfg = get_config("smoke", smoke_finetune(tmp_path / "whole"))
    whole = run_experiment(
        whole_cfg, "finetune", datasets=fake_splits(augment=True), model=tiny_model(), **KW
    )
    caplog.set_level("WARNING", logger="vitlib.runs")
    splits, augmented = counting_augmentations(fake_splits(augment=True))
    got = run_experiment(get_config("smoke", smoke_finetune(cut)), "finetune", resume=True,
                         datasets=splits, model=tiny_model(seed=99), **KW)  # fmt: skip
    assert len(augmented) == 2 * 6  # epochs 2 and 3, 6 batches each, each one transformed
    assert all(not torch.equal(before, after) for before, after in augmented)
    assert f"taking over the lock of pid {child.pid}" in caplog.text
    assert not (run_dir / "run.lock").exists()
    assert comparable(got["history"]) == comparable(whole["history"])
    assert got["test_accuracy"] == whole["test_accuracy"]
    whole_dir = tmp_path / "whole" / "smoke" / "finetune"
    assert (run_dir / "predictions.csv").read_text() == (whole_dir / "predictions.csv").read_text()
    for (k, v), w in zip(
        load_trained(whole_dir).state_dict().items(),
        load_trained(run_dir).state_dict().values(),
        strict=True,
    ):
        assert torch.equal(v, w), k
    assert json.loads((run_dir / "run.json").read_text())["resumed_from_epoch"] == 1
