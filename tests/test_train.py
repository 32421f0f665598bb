"""Tests of vitlib.train, vitlib.experiments and vitlib.runs: probe, fine-tune, zero-shot, resume, outputs; CPU, seconds."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vitlib import experiments, resume, runs
from vitlib.__main__ import main, parse_overrides
from vitlib.checkpoints import create_model
from vitlib.config import TrainConfig, get_config
from vitlib.data import ImageDataset
from vitlib.errors import ExperimentError, NonFiniteLossError
from vitlib.experiments import run_experiment
from vitlib.recipe import hard_distillation_loss
from vitlib.runs import load_trained
from vitlib.train import (
    IMAGENET_CAT_CLASSES,
    IMAGENET_DOG_CLASSES,
    fine_tune,
    linear_probe,
    zero_shot,
)

TINY = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2)
TC = TrainConfig(epochs=3, batch_size=8, lr=3e-3, eval_batch_size=16)


def FakeImages(n: int, *, seed: int, size: int = 16, augment: bool = False) -> ImageDataset:
    """A real ImageDataset over images made here: dogs are redder; mean = std = 0.5."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int64)
    images = rng.integers(0, 150, (n, size, size, 3))
    images[labels == 1, :, :, 0] += 100
    classes = ("cat", "dog")
    return ImageDataset(
        images.astype(np.uint8),
        labels,
        [f"{classes[c]}.{i}.jpg" for i, c in enumerate(labels)],
        classes=classes,
        augment=augment,
        info={"source": "FakeImages", "seed": seed},
    )


@pytest.fixture(scope="module")
def data() -> dict[str, FakeImages]:
    return {
        "train": FakeImages(48, seed=0),
        "val": FakeImages(16, seed=1),
        "test": FakeImages(16, seed=2),
    }


def tiny_model(seed: int = 0, num_classes: int = 2):
    torch.manual_seed(seed)
    return create_model("vit_custom", num_classes=num_classes, **TINY)


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if ".tmp" in p.name]


def comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


class Interrupted(Exception):
    pass


def test_cached_probe_trains_the_same_head_as_the_naive_probe(data, tmp_path):
    cached, naive = tiny_model(), tiny_model()
    backbone = {k: v.clone() for k, v in cached.state_dict().items() if not k.startswith("head.")}
    a = linear_probe(
        cached, data, TC, run_dir=tmp_path / "a", cached=True, progress=False, device="cpu"
    )
    b = linear_probe(
        naive, data, TC, run_dir=tmp_path / "b", cached=False, progress=False, device="cpu"
    )
    assert cached.head.weight.abs().sum() > 0  # the zero-init head was trained
    torch.testing.assert_close(cached.head.weight, naive.head.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cached.head.bias, naive.head.bias, rtol=1e-4, atol=1e-5)
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-4)
        assert ha["val_accuracy"] == hb["val_accuracy"]
    assert a["test"]["accuracy"] == b["test"]["accuracy"]
    for k, v in backbone.items():  # frozen means frozen
        assert torch.equal(cached.state_dict()[k], v), k
    assert (tmp_path / "a" / "features.pt").is_file() and not (
        tmp_path / "b" / "features.pt"
    ).exists()


def test_batches_go_to_the_device_as_uint8_and_are_normalised_there(data, monkeypatch):
    received = []
    dataset = data["val"]
    real_normalise = dataset.normalise
    monkeypatch.setattr(dataset, "normalise", lambda x: received.append(x) or real_normalise(x))
    x = dataset.batch(np.arange(5), torch.device("meta"))
    (sent,) = received
    assert sent.dtype == torch.uint8 and sent.device.type == "meta"  # 1 byte a value copied
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32 and x.device.type == "meta"
    cpu = dataset.batch(np.arange(5), torch.device("cpu"))
    assert torch.equal(cpu, torch.stack([dataset[i][0] for i in range(5)]))


@pytest.mark.parametrize("experiment", ["probe", "finetune", "finetune-augmented"])
def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(data, tmp_path, experiment):
    run = linear_probe if experiment == "probe" else fine_tune
    if experiment == "finetune-augmented":  # random flips from the global RNG
        data = {**data, "train": FakeImages(48, seed=0, augment=True)}
    whole = tiny_model()
    expected = run(
        whole, data, TC, run_dir=tmp_path / "whole", seed=3, progress=False, device="cpu"
    )

    def crash_in_epoch_2(epoch, step, net):
        if (epoch, step) == (1, 2):
            raise Interrupted

    with pytest.raises(Interrupted):
        run(
            tiny_model(),
            data,
            TC,
            run_dir=tmp_path / "cut",
            seed=3,
            progress=False,
            device="cpu",
            on_step=crash_in_epoch_2,
        )
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    # A fresh process builds a fresh model: the fine-tune's init is overwritten by the
    # checkpoint (another seed proves it), the probe's frozen backbone is the same weights.
    resumed_model = tiny_model(seed=0 if experiment == "probe" else 99)
    got = run(
        resumed_model,
        data,
        TC,
        run_dir=tmp_path / "cut",
        seed=3,
        resume=True,
        progress=False,
        device="cpu",
    )
    assert got["resumed_from"] == 1
    assert comparable(got["history"]) == comparable(expected["history"])
    assert np.array_equal(got["test"]["probs"], expected["test"]["probs"])
    for (k, v), w in zip(
        whole.state_dict().items(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.equal(v, w), k


def test_resume_refuses_a_checkpoint_of_other_settings(data, tmp_path):
    one, two = TrainConfig(epochs=1, batch_size=8), TrainConfig(epochs=2, batch_size=8)
    kw = dict(run_dir=tmp_path, progress=False, device="cpu")
    linear_probe(tiny_model(), data, one, **kw)
    with pytest.raises(ExperimentError, match="other settings"):
        linear_probe(tiny_model(), data, two, resume=True, **kw)
    with pytest.raises(ExperimentError, match="another frozen backbone"):
        linear_probe(tiny_model(seed=1), data, one, resume=True, **kw)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data, tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    before: dict[str, bytes] = {}

    def poison_in_epoch_2(epoch, step, net):
        if (epoch, step) == (1, 1):
            before["bytes"] = ckpt.read_bytes()
            with torch.no_grad():
                net.head.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2.*checkpoint.*after epoch 1"):
        fine_tune(
            tiny_model(),
            data,
            TC,
            run_dir=tmp_path,
            progress=False,
            device="cpu",
            on_step=poison_in_epoch_2,
        )
    assert ckpt.read_bytes() == before["bytes"]
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["net"].values())
    assert no_temp_files(tmp_path)


def test_hard_distillation_loss_on_a_hand_computed_case():
    """DeiT eq. 3: (CE(class logits, labels) + CE(distillation logits, teacher's labels)) / 2,
    with CE(z, y) = log(sum_j exp z_j) - z_y averaged over the batch."""
    cls = torch.tensor([[2.0, 0.0], [0.5, 1.5]])
    dist = torch.tensor([[0.0, 1.0], [1.0, -1.0]])
    labels, teacher = torch.tensor([0, 1]), torch.tensor([1, 1])  # the teacher errs on sample 0

    def ce(z, y):
        return math.log(sum(math.exp(v) for v in z)) - z[y]

    by_hand = (
        (ce([2.0, 0.0], 0) + ce([0.5, 1.5], 1)) / 2 + (ce([0.0, 1.0], 1) + ce([1.0, -1.0], 1)) / 2
    ) / 2
    loss = hard_distillation_loss(cls, dist, labels, teacher)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    # A teacher that agrees with the labels and one head reading both: plain cross-entropy.
    plain = torch.nn.functional.cross_entropy(cls, labels)
    assert hard_distillation_loss(cls, cls, labels, labels).item() == pytest.approx(plain.item())
    assert abs(hard_distillation_loss(cls, cls, labels, teacher).item() - plain.item()) > 0.1


def constant_teacher(label: int) -> torch.nn.Module:
    """A classifier of (B, 3, 16, 16) images that always answers `label`."""
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    torch.nn.init.zeros_(teacher[1].weight)
    with torch.no_grad():
        teacher[1].bias.copy_(torch.tensor([5.0, 0.0] if label == 0 else [0.0, 5.0]))
    return teacher


def test_fine_tune_with_a_teacher_trains_the_distillation_head_on_its_answers(data, tmp_path):
    """The class head learns the labels, the distillation head the teacher's answers (here
    always "cat"), and a run checkpoint is written; evaluation averages the two heads."""
    torch.manual_seed(0)
    model = create_model("vit_custom", num_classes=2, distilled=True, **TINY)
    teacher = constant_teacher(0)
    result = fine_tune(
        model, data, TC, run_dir=tmp_path, progress=False, device="cpu", teacher=teacher
    )
    assert all(math.isfinite(row["train_loss"]) for row in result["history"])
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == TC.epochs
    val = data["val"]
    x = val.normalise(torch.from_numpy(val.images))
    model.eval()
    with torch.no_grad():
        cls, dist = model.forward_distilled(x)
        averaged = model(x).softmax(-1).numpy()
    assert (dist.argmax(1) == 0).all()  # the teacher's answer, whatever the image
    assert (cls.argmax(1).numpy() == val.labels).mean() >= 0.75  # measured: 1.0
    np.testing.assert_allclose(result["val"]["probs"], averaged, atol=1e-6)
    assert all(not p.requires_grad for p in teacher.parameters())  # kept frozen


def test_fine_tune_teacher_errors(data, tmp_path):
    one = TrainConfig(epochs=1, batch_size=8)
    kw = dict(progress=False, device="cpu")
    with pytest.raises(ValueError, match="distilled=True"):
        fine_tune(
            tiny_model(), data, one, run_dir=tmp_path / "plain", teacher=constant_teacher(0), **kw
        )

    def student():
        torch.manual_seed(0)
        return create_model("vit_custom", num_classes=2, distilled=True, **TINY)

    fine_tune(student(), data, one, run_dir=tmp_path, teacher=constant_teacher(0), **kw)
    same = fine_tune(
        student(), data, one, run_dir=tmp_path, teacher=constant_teacher(0), resume=True, **kw
    )
    assert same["resumed_from"] == 1  # the same teacher: the finished run is read back
    with pytest.raises(ExperimentError, match="another frozen backbone or teacher"):
        fine_tune(
            student(), data, one, run_dir=tmp_path, teacher=constant_teacher(1), resume=True, **kw
        )


def test_zero_shot_class_groups_are_imagenets_cats_and_dogs():
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(1000)]
    assert len(IMAGENET_CAT_CLASSES) == 5 and len(IMAGENET_DOG_CLASSES) == 118
    assert all(
        "cat" in names[i].lower() or names[i] in ("Persian", "Siamese")
        for i in IMAGENET_CAT_CLASSES
    )
    assert names[151].startswith("Chihuahua") and names[268].startswith("Mexican hairless")
    assert names[150].startswith("sea lion") and names[269].startswith("timber wolf")  # neighbours
    assert names[280].startswith("grey fox") and names[286].startswith("cougar")
    assert not set(IMAGENET_CAT_CLASSES) & set(IMAGENET_DOG_CLASSES)


@pytest.mark.parametrize(
    ("favoured", "expected"), [(281, "cat"), (285, "cat"), (151, "dog"), (268, "dog")]
)
def test_zero_shot_sums_the_class_groups(data, favoured, expected):
    model = tiny_model(num_classes=1000)
    model.provenance = {"weights": "a fake 1k head"}
    with torch.no_grad():
        model.head.bias[favoured] = 20.0
    out = zero_shot(model, data, batch_size=8, progress=False, device="cpu")
    assert out["applicable"]
    k = ("cat", "dog").index(expected)
    assert (out["test"]["probs"].argmax(1) == k).all()
    assert out["test"]["accuracy"] == pytest.approx(np.mean(data["test"].labels == k))
    assert out["test"]["mass"] > 0.99  # nearly all 1000-way probability on the favoured class


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


def test_zero_shot_is_not_applicable_without_an_imagenet_head(data, tmp_path):
    out = zero_shot(tiny_model(), data, progress=False, device="cpu")
    assert out["applicable"] is False and "1000" in out["reason"]
    random_1k = zero_shot(tiny_model(num_classes=1000), data, progress=False, device="cpu")
    assert random_1k["applicable"] is False and "random" in random_1k["reason"]
    cfg = get_config("smoke", {"run_root": str(tmp_path)})
    metrics = run_experiment(cfg, "zero-shot", datasets=data, model=tiny_model(), progress=False)
    assert metrics["applicable"] is False
    assert json.loads((tmp_path / "smoke/zero-shot/metrics.json").read_text())["reason"]


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


def test_missing_inputs_fail_at_once_with_what_to_do(tmp_path):
    full = get_config("full", {"data.root": str(tmp_path / "nowhere")})
    t0 = time.perf_counter()
    with pytest.raises(ExperimentError, match="kaggle.com/c/dogs-vs-cats"):
        run_experiment(full, "probe")
    cfg = get_config(
        "full", {"data.root": str(tmp_path), "model.pretrained": str(tmp_path / "w.pth")}
    )
    with pytest.raises(ExperimentError, match="jx_vit_base_p16_224-80ecf9dd.pth.*--weights"):
        run_experiment(cfg, "probe")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ExperimentError, match="unknown experiment"):
        experiments.check_inputs(full, "pretrain")


def test_cli_parses_overrides_and_reports_errors(tmp_path, capsys):
    assert parse_overrides(
        ["finetune.epochs=2", "model.pretrained=null", "data.root=a/b", "x.y=[1, 2]"]
    ) == {"finetune.epochs": 2, "model.pretrained": None, "data.root": "a/b", "x.y": [1, 2]}
    assert (
        main(
            ["train", "--profile", "full", "--experiment", "probe", "--data", str(tmp_path / "no")]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--experiment", "probe", "--set", "probe.nope=1"]) == 2
    assert "unknown setting 'probe.nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_the_smoke_probe_on_synthetic_data_and_resumes(tmp_path, capsys):
    args = ["train", "--profile", "smoke", "--experiment", "probe", "--quiet"]
    args += ["--set", f"run_root={tmp_path}", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    args += ["--set", "probe.epochs=2"]
    assert main(args) == 0
    assert "smoke/probe: val accuracy" in capsys.readouterr().out
    first = json.loads((tmp_path / "smoke/probe/metrics.json").read_text())
    assert first["n"] == {"train": 480, "val": 160, "test": 160}
    assert (
        json.loads((tmp_path / "smoke/probe/run.json").read_text())["data"]["source"] == "synthetic"
    )
    assert main([*args, "--resume"]) == 0  # after the last epoch: evaluates and rewrites
    again = json.loads((tmp_path / "smoke/probe/metrics.json").read_text())
    assert comparable(again["history"]) == comparable(first["history"])
    assert again["test_accuracy"] == first["test_accuracy"]


def test_a_diverging_run_names_its_own_settings_key(data, tmp_path):
    def poison(epoch, step, net):
        with torch.no_grad():
            net.head.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"--set variants\.teacher\.lr="):
        fine_tune(tiny_model(), data, TC, run_dir=tmp_path, progress=False, device="cpu",
                  on_step=poison, settings="variants.teacher")  # fmt: skip


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
