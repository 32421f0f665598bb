"""Tests of vitlib.distributed: `torchrun -m vitlib train` with 2 CPU processes (gloo) trains as
one process does, rank 0 alone writes the run, a killed 2-process run resumes to the same
result, and a global batch that does not split evenly is refused. Each torchrun costs ~8 s
here (three Pythons importing torch), so the runs are made once, in `runs`, and shared.

Tolerance: 1 and 2 processes differ by float rounding only (a batch of 4 multiplied in other
blocks than one of 8, two partial gradients added), ~1e-7 relative. Adam divides by the
gradient's running RMS, so a parameter whose exact gradient is 0 (the attention's key bias:
softmax ignores it) steps by rounding noise; after 10 steps it differs by ~1e-5 (measured
6.5e-6). A real fault (gradients not all-reduced, the wrong share, other augmentation draws)
moves weights by ~lr = 3e-3 a step. Hence weights within atol 1e-4, losses within 1e-5
relative, accuracies and predicted classes exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training import comparable, no_temp_files

from vitlib import distributed
from vitlib.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
# 37 training images in global batches of 8: the last batch of 5 splits 3 + 2, so each rank's
# loss must be weighted by its share. Augmented: every rank must draw what one process draws.
SETTINGS = {
    "data.split_sizes": [37, 8, 8],
    "data.synthetic_per_class": 27,
    "data.augment": True,
    "model.arch_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "finetune.epochs": 2,
    "finetune.batch_size": 8,
    "finetune.eval_batch_size": 16,
    "finetune.lr": 3e-3,
}

# Run under torchrun: `cli OUT ARGV...` runs the CLI recording every write under run_root
# (OUT/writes-<rank>.json); `kill OUT SETTINGS` tries a global batch of 7 (the CLI's check, then
# the library's; OUT/refused-<rank>.json), then trains and SIGKILLs rank 0 in epoch 2.
LAUNCHER = """
import json, os, signal, sys
mode, rank = sys.argv[1], int(os.environ["RANK"])
if mode == "cli":
    out, argv = sys.argv[2], sys.argv[3:]
    root = os.path.abspath(json.loads(argv[argv.index("--set") + 1].split("=", 1)[1]))
    seen, write = [], os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        if event == "open":
            path, mode_, flags = args
            writes = any(c in mode_ for c in "wax+") if mode_ else bool(flags & write)
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.truncate"):
            path, writes = args[0], True  # os.replace audits as os.rename
        else:
            return
        if writes and isinstance(path, (str, bytes, os.PathLike)):
            if os.path.abspath(os.fsdecode(path)).startswith(root):
                seen.append(f"{event} {os.fsdecode(path)}")

    sys.addaudithook(hook)
    from vitlib.__main__ import main
    status = main(argv)
    with open(os.path.join(out, f"writes-{rank}.json"), "w") as f:
        json.dump(seen, f)
    sys.exit(status)
from vitlib import distributed
from vitlib.__main__ import _join_run
from vitlib.config import get_config
from vitlib.errors import ExperimentError
from vitlib.experiments import run_experiment

def die_in_epoch_2(epoch, step, net):
    if (epoch, step) == (1, 1) and rank == 0:  # epoch 1's checkpoint is written by now
        os.kill(os.getpid(), signal.SIGKILL)

settings = json.loads(sys.argv[3])
odd = get_config("smoke", {**settings, "finetune.batch_size": 7})
with distributed.session():
    refused = []
    for attempt in (_join_run, run_experiment):
        try:
            attempt(odd, "finetune", progress=False)
            refused.append(None)
        except ExperimentError as exc:
            refused.append(str(exc))
    with open(os.path.join(sys.argv[2], f"refused-{rank}.json"), "w") as f:
        json.dump(refused, f)
    run_experiment(get_config("smoke", settings), "finetune", progress=False,
                   on_step=die_in_epoch_2)
"""


def overrides(run_root: Path, cache: Path, **changes) -> dict:
    return {"run_root": str(run_root), "data.cache_dir": str(cache), **SETTINGS, **changes}


def cli_args(settings: dict, *extra: str) -> list[str]:
    args = ["train", "--profile", "smoke", "--experiment", "finetune", "--quiet"]
    for key, value in settings.items():  # run_root first: the launcher reads it there
        args += ["--set", f"{key}={json.dumps(value)}"]
    return [*args, *extra]


def torchrun(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp / "launch.py"
    script.write_text(LAUNCHER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*cmd, str(script), *args], cwd=tmp, env=env, capture_output=True, text=True,
        timeout=600,  # a hang guard, not a speed bound
    )  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One process (this one, one thread as each torchrun rank), 2 processes, and a 2-process
    run killed in epoch 2 (after trying a batch that does not split) resumed by 2 processes."""
    tmp = tmp_path_factory.mktemp("distributed")
    cache, threads = tmp / "cache", torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(cli_args(overrides(tmp / "one", cache))) == 0
    finally:
        torch.set_num_threads(threads)
    out = {"tmp": tmp, "one": tmp / "one/smoke/finetune", "two": tmp / "two/smoke/finetune"}
    for audit in ("two", "cut"):  # where each run's record of writes goes
        (tmp / f"audit-{audit}").mkdir()
    two = overrides(tmp / "two", cache)
    out["two_run"] = torchrun(tmp, "cli", str(tmp / "audit-two"), *cli_args(two))
    cut = overrides(tmp / "cut", cache)
    out["killed"] = torchrun(tmp, "kill", str(tmp), json.dumps(cut))
    out["cut"] = tmp / "cut/smoke/finetune"
    assert (out["cut"] / "checkpoint.pt").is_file(), out["killed"].stderr[-3000:]
    out["saved"] = torch.load(out["cut"] / "checkpoint.pt", weights_only=True)
    out["resumed"] = torchrun(tmp, "cli", str(tmp / "audit-cut"), *cli_args(cut, "--resume"))
    return out


def assert_same_run(got: Path, expected: Path) -> None:
    """Two run folders within the module docstring's tolerance."""
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (got, expected))
    for ra, rb in zip(comparable(a["history"]), comparable(b["history"]), strict=True):
        assert ra.keys() == rb.keys()
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-12), (ra["epoch"], key)
        assert ra["train_accuracy"] == rb["train_accuracy"]
    assert a["test_accuracy"] == b["test_accuracy"] and a["val_accuracy"] == b["val_accuracy"]
    assert a["confusion_matrix"] == b["confusion_matrix"]
    wa, wb = load_file(got / "model.safetensors"), load_file(expected / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-4, msg=key)


def test_two_processes_train_as_one(runs):
    assert runs["two_run"].returncode == 0, runs["two_run"].stderr[-3000:]
    assert_same_run(runs["two"], runs["one"])
    info = json.loads((runs["two"] / "run.json").read_text())
    assert info["world_size"] == 2
    assert json.loads((runs["one"] / "run.json").read_text())["world_size"] == 1
    assert runs["two_run"].stdout.count("smoke/finetune: val accuracy") == 1  # rank 0 prints


def test_rank_0_alone_writes_the_run_folder(runs):
    tmp = runs["tmp"]
    mine, theirs = (json.loads((tmp / f"audit-two/writes-{r}.json").read_text()) for r in (0, 1))
    assert any("metrics.json" in w for w in mine)  # the audit sees rank 0's writes ...
    assert any("checkpoint.pt" in w for w in mine)
    assert theirs == []  # ... and none of rank 1's
    names = sorted(p.name for p in runs["two"].iterdir())
    assert names == sorted(p.name for p in runs["one"].iterdir())
    assert no_temp_files(runs["two"]) and "run.lock" not in names


def test_a_killed_two_process_run_resumes_to_the_one_process_result(runs):
    assert runs["killed"].returncode != 0
    assert runs["saved"]["epoch"] == 1 and len(runs["saved"]["history"]) == 1
    resumed = runs["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "taking over the lock" in resumed.stderr  # left by the SIGKILLed rank 0
    assert_same_run(runs["cut"], runs["one"])
    info = json.loads((runs["cut"] / "run.json").read_text())
    assert info["resumed_from_epoch"] == 1 and info["world_size"] == 2
    assert json.loads((runs["tmp"] / "audit-cut/writes-1.json").read_text()) == []


def test_a_global_batch_that_does_not_split_evenly_is_refused(runs):
    for r in (0, 1):  # the CLI's check, before the data loads, and fit's
        refused = json.loads((runs["tmp"] / f"refused-{r}.json").read_text())
        assert len(refused) == 2 and None not in refused, refused
        for message in refused:
            assert message.startswith("finetune.batch_size = 7 cannot be split among 2 proc")
            assert "--set finetune.batch_size=8" in message and "or run 1 process (" in message


def test_a_plain_process_has_no_group_and_keeps_whole_batches(monkeypatch, capsys):
    assert not torch.distributed.is_initialized()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    loss = torch.tensor(0.5)
    assert distributed.weighted(loss, 3, 8) is loss
    distributed.check_batch_size(7, "finetune.batch_size")  # one process takes any batch
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it: only `train` takes part
    assert main(["variants", "--profile", "smoke"]) == 2
    assert "only `vitlib train` runs as several processes" in capsys.readouterr().err
