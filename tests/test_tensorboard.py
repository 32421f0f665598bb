"""TensorBoard event files beside a run (vitlib.tensorboard), read back with TensorBoard's own
reader: per-step loss and learning rate, per-epoch losses and accuracies equal to the history,
a resumed run's curve without the killed session's extra steps, nothing without tensorboard."""

from __future__ import annotations

import pytest
from training import TC, tiny_model

from vitlib import tensorboard
from vitlib.train import fine_tune

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard (the optional extra) is not installed",
)
STEPS = 6  # 48 training images in batches of TC.batch_size 8


def read_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    assert not (run_dir / tensorboard.EVENTS).exists()  # the run folder holds its own files
    events = event_accumulator.EventAccumulator(str(tensorboard.events_dir(run_dir)))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_a_run_writes_step_and_epoch_scalars_equal_to_its_history(data, tmp_path):
    result = fine_tune(tiny_model(), data, TC, run_dir=tmp_path, progress=False, device="cpu")
    scalars = read_scalars(tmp_path)
    assert set(scalars) == {*tensorboard.EPOCH_TAGS.values(), *tensorboard.STEP_TAGS.values()}
    assert [s for s, _ in scalars["loss/train_step"]] == list(range(1, TC.epochs * STEPS + 1))
    assert [s for s, _ in scalars["lr/step"]] == list(range(1, TC.epochs * STEPS + 1))
    history = result["history"]
    for key, tag in tensorboard.EPOCH_TAGS.items():
        assert [s for s, _ in scalars[tag]] == [STEPS * (e + 1) for e in range(TC.epochs)], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([h[key] for h in history], rel=1e-6)
    # The cosine schedule reaches 0 at the last step; the epoch lr is the step lr at its end.
    assert scalars["lr/step"][-1][1] == pytest.approx(0.0, abs=1e-9)
    assert scalars["lr/epoch"][0][1] == pytest.approx(scalars["lr/step"][STEPS - 1][1])
    mean = sum(v for _, v in scalars["loss/train_step"][:STEPS]) / STEPS  # equal batches
    assert mean == pytest.approx(history[0]["train_loss"], rel=1e-5)


def test_a_resumed_run_continues_its_curve_without_the_stopped_sessions_steps(data, tmp_path):
    def stop(epoch, step, net):
        if (epoch, step) == (1, 3):
            raise KeyboardInterrupt  # after 3 steps of epoch 2, its checkpoint not yet written

    with pytest.raises(KeyboardInterrupt):
        fine_tune(tiny_model(), data, TC, run_dir=tmp_path, progress=False, device="cpu",
                  on_step=stop)  # fmt: skip
    resumed = fine_tune(tiny_model(), data, TC, run_dir=tmp_path, resume=True, progress=False,
                        device="cpu")  # fmt: skip
    assert resumed["resumed_from"] == 1
    scalars = read_scalars(tmp_path)
    assert [s for s, _ in scalars["loss/train_step"]] == list(range(1, TC.epochs * STEPS + 1))
    once = fine_tune(tiny_model(), data, TC, run_dir=tmp_path / "once", progress=False,
                     device="cpu")  # fmt: skip
    expected = read_scalars(tmp_path / "once")
    for tag in scalars:
        assert [s for s, _ in scalars[tag]] == [s for s, _ in expected[tag]], tag
        assert [v for _, v in scalars[tag]] == pytest.approx(
            [v for _, v in expected[tag]], rel=1e-5
        )
    assert once["history"][-1]["val_accuracy"] == resumed["history"][-1]["val_accuracy"]


def test_without_tensorboard_a_run_writes_no_event_files(data, tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard, "_writer_class", lambda: None)
    result = fine_tune(tiny_model(), data, TC, run_dir=tmp_path, progress=False, device="cpu")
    assert len(result["history"]) == TC.epochs
    assert not tensorboard.available()
    assert not tensorboard.events_dir(tmp_path).exists()
