"""Tests of vitlib.train: probe, fine-tune, zero-shot, resume, distillation, what each
optimiser step receives (clipped gradient, scheduled lr); CPU, seconds."""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from training import TC, TINY, comparable, no_temp_files, tiny_model

from vitlib.checkpoints import create_model
from vitlib.config import TrainConfig, get_config
from vitlib.errors import ExperimentError, NonFiniteLossError
from vitlib.experiments import run_experiment
from vitlib.train import (
    IMAGENET_CAT_CLASSES,
    IMAGENET_DOG_CLASSES,
    fine_tune,
    linear_probe,
    zero_shot,
)


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


@pytest.mark.parametrize("experiment", ["probe", "finetune"])
def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(data, tmp_path, experiment):
    """An exception, so `finally` blocks run; test_resume kills an augmented run outright."""
    run = linear_probe if experiment == "probe" else fine_tune
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


def test_zero_shot_is_not_applicable_without_an_imagenet_head(data, tmp_path):
    out = zero_shot(tiny_model(), data, progress=False, device="cpu")
    assert out["applicable"] is False and "1000" in out["reason"]
    random_1k = zero_shot(tiny_model(num_classes=1000), data, progress=False, device="cpu")
    assert random_1k["applicable"] is False and "random" in random_1k["reason"]
    cfg = get_config("smoke", {"run_root": str(tmp_path)})
    metrics = run_experiment(cfg, "zero-shot", datasets=data, model=tiny_model(), progress=False)
    assert metrics["applicable"] is False
    assert json.loads((tmp_path / "smoke/zero-shot/metrics.json").read_text())["reason"]


def test_a_diverging_run_names_its_own_settings_key(data, tmp_path):
    def poison(epoch, step, net):
        with torch.no_grad():
            net.head.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"--set variants\.teacher\.lr="):
        fine_tune(tiny_model(), data, TC, run_dir=tmp_path, progress=False, device="cpu",
                  on_step=poison, settings="variants.teacher")  # fmt: skip


# --- what each optimiser step receives: the clipped gradient, the scheduled learning rate ------


@contextlib.contextmanager
def every_optimizer_step(hook):
    """Call hook(optimizer) before each step of any torch optimiser (torch's global hook)."""
    handle = register_optimizer_step_pre_hook(lambda opt, *_: hook(opt))
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_each_step_receives_the_gradient_clipped_to_its_global_l2_norm(data, tmp_path, clip):
    """The raw gradient (tensor hooks, during backward) scaled as clip_grad_norm_ documents:
    by min(1, c / (||g|| + 1e-6)), ||g|| the L2 norm of all parameters' gradients together;
    untouched with clipping off (0)."""
    model = tiny_model()
    raw: dict[int, torch.Tensor] = {}

    def keep(key):
        return lambda g: raw.__setitem__(key, g.detach().clone())

    for p in model.parameters():
        p.register_hook(keep(id(p)))
    norms = []  # (raw global norm, global norm the optimiser received) per step

    def check(optimizer):
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        assert {id(p) for p in params} == set(raw)  # every trained parameter, nothing else
        total = math.sqrt(sum(float(raw[id(p)].double().pow(2).sum()) for p in params))
        scale = min(1.0, clip / (total + 1e-6)) if clip else 1.0
        for p in params:
            torch.testing.assert_close(p.grad, raw[id(p)] * scale, rtol=1e-5, atol=1e-12)
        received = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
        norms.append((total, received))
        raw.clear()

    tc = TrainConfig(epochs=1, batch_size=8, lr=1e-3, grad_clip_norm=clip)
    with every_optimizer_step(check):
        fine_tune(model, data, tc, run_dir=tmp_path, progress=False, device="cpu")
    assert len(norms) == 6  # 48 images, batches of 8
    if clip:
        assert all(total > 10 * clip for total, _ in norms)  # clipping acted on every step
        assert [r for _, r in norms] == pytest.approx([clip] * 6, rel=1e-4)
    else:
        assert all(r == t for t, r in norms)


@pytest.mark.parametrize("warmup_epochs", [0.0, 0.5])
def test_every_steps_lr_and_the_historys_lr_column_follow_the_schedule(
    data, tmp_path, warmup_epochs
):
    """3 epochs of 6 steps: without warm-up torch's CosineAnnealingLR(T_max=18) step by step;
    with half an epoch of warm-up, lr (k + 1) / 3 for steps k < 3, then a cosine from lr to 0
    over the other 15. The history's lr is the one after each epoch's last step."""
    tc = TrainConfig(epochs=3, batch_size=8, lr=3e-3, warmup_epochs=warmup_epochs)
    used = []  # the lr of every group at every step
    with every_optimizer_step(lambda opt: used.append([g["lr"] for g in opt.param_groups])):
        result = linear_probe(
            tiny_model(), data, tc, run_dir=tmp_path, progress=False, device="cpu"
        )
    assert len(used) == 18 and all(len(set(lrs)) == 1 and len(lrs) == 2 for lrs in used)
    if warmup_epochs:
        w, total = 3, 18
        expected = [
            tc.lr * (k + 1) / w if k < w
            else tc.lr * 0.5 * (1 + math.cos(math.pi * (k - w) / (total - w)))
            for k in range(total + 1)
        ]  # fmt: skip
    else:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=tc.lr)
        reference = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=18)
        expected = []
        for _ in range(19):
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            reference.step()
    assert [lrs[0] for lrs in used] == pytest.approx(expected[:18], rel=1e-9, abs=1e-15)
    history = [row["lr"] for row in result["history"]]
    assert history == pytest.approx([expected[6], expected[12], expected[18]], rel=1e-9, abs=1e-15)
    assert history[-1] == pytest.approx(0.0, abs=1e-15) and min(history[:2]) > 0
