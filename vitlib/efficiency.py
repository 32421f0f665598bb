"""What pre-training buys: test accuracy against the number of labels, per starting point.

For each backbone (a random init, this project's MAE pre-training, and each timm weight kind
of PretrainConfig.weights) and each label count of PretrainConfig.label_counts (`vitlib.labels`:
the bench's nested sets, or nested stratified subsets; 0 = all), the frozen-backbone probe and
the fine-tune, each scored on the whole test split with a 95% Wilson interval
(`vitlib.stats.wilson_interval`). Every fine-tune sees the same number of training images
(`finetune_images`), so a curve compares starting points at equal compute.

    rows = run_efficiency(cfg)        # -> runs/<profile>/efficiency/{results.json, table.csv}
    table = efficiency_table(rows)    # one line per backbone and method, one column per count

Each probe and fine-tune is a run folder of its own under runs/<profile>/efficiency/ (its
training checkpoint, then result.json): a killed study resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitlib.checkpoints import build_model
from vitlib.config import Config, TrainConfig
from vitlib.data import load_splits
from vitlib.files import write_csv, write_json
from vitlib.labels import labelled_sets, nested_subsets, take
from vitlib.model import VisionTransformer
from vitlib.pretrain import encoder_model, ensure_pretrained
from vitlib.stats import wilson_interval
from vitlib.train import fine_tune, linear_probe, resolve_device

__all__ = [
    "METHODS",
    "RANDOM",
    "PRETRAINED",
    "backbone_names",
    "build_backbone",
    "efficiency_table",
    "finetune_config",
    "run_efficiency",
    "score",
]

log = logging.getLogger(__name__)

RANDOM = "random init"
PRETRAINED = "MAE (here)"
METHODS = ("probe", "finetune")
RESULT = "result.json"
TABLE_KEYS = ("backbone", "method", "labels", "accuracy", "low", "high", "correct", "total",
              "val_accuracy", "epochs", "minutes")  # fmt: skip


def backbone_names(cfg: Config) -> tuple[str, ...]:
    """The starting points the study compares: random init, MAE here, then each timm tag."""
    return (RANDOM, PRETRAINED, *cfg.pretrain.weights)


def build_backbone(cfg: Config, name: str) -> VisionTransformer:
    """A fresh model of backbone `name` with a new `num_classes` head, seeded by cfg.seed.

    RANDOM is cfg.model's architecture untrained; PRETRAINED the same with the encoder of
    runs/<profile>/pretrain (pre-trained first where the profile allows); any other name is a
    timm tag (or weights file) of cfg.model.arch, a headless one (DINO, MAE) given a fresh head;
    the pooling is the model's own (the class token, as all four timm kinds)."""
    if name == RANDOM:
        return encoder_model(cfg)
    if name == PRETRAINED:
        encoder = Path(ensure_pretrained(cfg)["encoder"])
        model = build_model(dataclasses.replace(cfg.model, pretrained=str(encoder)), seed=cfg.seed)
        meta = json.loads(encoder.with_name("encoder.json").read_text())
        model.pretrained_cfg = meta["pretrained_cfg"]  # the preprocessing it was trained with
        model.provenance = {**model.provenance, "preprocessing": model.pretrained_cfg}
        return model
    return build_model(dataclasses.replace(cfg.model, pretrained=name), seed=cfg.seed)


def finetune_config(cfg: Config, labels: int, method: str = "finetune") -> TrainConfig:
    """PretrainConfig.finetune (or .probe) with epochs = ceil(finetune_images (probe_images) /
    labels), its warm-up scaled with them: every run of a method sees about the same number of
    training images, whatever the label count."""
    pc = cfg.pretrain
    tc, images = (
        (pc.probe, pc.probe_images) if method == "probe" else (pc.finetune, pc.finetune_images)
    )
    epochs = max(1, math.ceil(images / max(1, labels)))
    warmup = tc.warmup_epochs * epochs / tc.epochs
    return dataclasses.replace(tc, epochs=epochs, warmup_epochs=min(warmup, epochs))


def score(result: Mapping[str, Any]) -> dict[str, Any]:
    """Test accuracy of a probe or fine-tune result, its 95% Wilson interval and counts."""
    test = result["test"]
    correct = int((np.asarray(test["probs"]).argmax(1) == np.asarray(test["labels"])).sum())
    total = len(test["labels"])
    low, high = wilson_interval(correct, total)
    return {"accuracy": correct / total, "low": low, "high": high, "correct": correct,
            "total": total, "val_accuracy": result["val"]["accuracy"]}  # fmt: skip


def run_efficiency(
    cfg: Config,
    *,
    backbones: Sequence[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> list[dict[str, Any]]:
    """The probe and the fine-tune of every backbone (default `backbone_names(cfg)`) at every
    label count; writes runs/<profile>/efficiency/results.json and table.csv and returns the
    rows (TABLE_KEYS). Finished runs (their result.json) are read back, not run again, unless
    `resume` is False."""
    device, out = resolve_device(device), cfg.run_dir / "efficiency"
    rows: list[dict[str, Any]] = []
    loaded: dict[str, dict[str, Any]] = {}  # splits and labelled sets per preprocessing
    for name in backbones or backbone_names(cfg):
        factory = _factory(cfg, name)
        data = _data_for(cfg, factory().pretrained_cfg, loaded, progress)
        for n, train in data["sets"].items():
            splits = {"train": train, "val": data["val"], "test": data["test"]}
            for method in METHODS:
                run_dir = out / _slug(name) / f"{method}-{n or 'all'}"
                rows.append(_one_run(cfg, name, method, factory, splits, run_dir, n,
                                     resume=resume, progress=progress, device=device))  # fmt: skip
    write_json(out / "results.json", {"profile": cfg.profile, "rows": rows,
                                      "settings": dataclasses.asdict(cfg.pretrain)})  # fmt: skip
    write_csv(out / "table.csv", rows, TABLE_KEYS)
    return rows


def _factory(cfg: Config, name: str) -> Callable[[], VisionTransformer]:
    built = build_backbone(cfg, name)  # once: checks, downloads or pre-trains first
    state = {k: v.clone() for k, v in built.state_dict().items()}

    def fresh() -> VisionTransformer:
        model = build_backbone(cfg, name) if name == RANDOM else _copy(built, state)
        return model

    return fresh


def _copy(model: VisionTransformer, state: Mapping[str, torch.Tensor]) -> VisionTransformer:
    twin = VisionTransformer(**model.arch_config)
    twin.load_state_dict(state)
    twin.pretrained_cfg, twin.provenance = dict(model.pretrained_cfg), dict(model.provenance)
    return twin


def _data_for(
    cfg: Config, pretrained_cfg: Mapping[str, Any], loaded: dict, progress: bool
) -> dict[str, Any]:
    """Splits and labelled sets at one preprocessing (loaded once for all backbones using it)."""
    key = json.dumps({k: pretrained_cfg.get(k) for k in ("input_size", "crop_pct",
                      "interpolation", "mean", "std")}, default=list)  # fmt: skip
    if key not in loaded:
        splits = load_splits(cfg.data, pretrained_cfg, seed=cfg.seed, progress=progress)
        pc = cfg.pretrain
        val_n = min(pc.val_images, len(splits["val"]))
        val = take(
            splits["val"], nested_subsets(splits["val"].labels, (val_n,), seed=cfg.seed)[val_n]
        )
        sets = labelled_sets(cfg.data, splits, pc.label_counts, seed=cfg.seed, progress=progress)
        loaded[key] = {"sets": sets, "val": val, "test": splits["test"]}
    return loaded[key]


def _one_run(
    cfg: Config,
    name: str,
    method: str,
    factory: Callable[[], VisionTransformer],
    splits: Mapping[str, Any],
    run_dir: Path,
    labels: int,
    *,
    resume: bool,
    progress: bool,
    device: torch.device,
) -> dict[str, Any]:
    """One probe or fine-tune, or its saved row when it finished before."""
    done = run_dir / RESULT
    if resume and done.is_file():
        return json.loads(done.read_text())
    started = time.perf_counter()
    model, n = factory(), len(splits["train"])
    common = dict(run_dir=run_dir, seed=cfg.seed, resume=resume, progress=progress, device=device)
    tc = finetune_config(cfg, n, method)
    if method == "probe":
        result = linear_probe(model, splits, tc, settings="pretrain.probe", **common)
    else:
        result = fine_tune(model, splits, tc, settings="pretrain.finetune", **common)
    row = {"backbone": name, "method": method, "labels": n, **score(result),
           "epochs": tc.epochs, "minutes": (time.perf_counter() - started) / 60}  # fmt: skip
    log.info("%s %s on %d labels: test %.3f [%.3f, %.3f]", name, method, n,
             row["accuracy"], row["low"], row["high"])  # fmt: skip
    write_json(done, row)
    return row


def efficiency_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table: one line per backbone and method, one column per label count, each
    cell the test accuracy in % with its 95% interval."""
    counts = sorted({r["labels"] for r in rows})
    lines = ["| backbone | method | " + " | ".join(f"{n} labels" for n in counts) + " |",
             "|---|---|" + "---|" * len(counts)]  # fmt: skip
    keys = dict.fromkeys((r["backbone"], r["method"]) for r in rows)
    for backbone, method in keys:
        cells = {r["labels"]: r for r in rows if (r["backbone"], r["method"]) == (backbone, method)}
        text = [
            f"{100 * c['accuracy']:.1f} [{100 * c['low']:.1f}, {100 * c['high']:.1f}]"
            if (c := cells.get(n)) else "-"
            for n in counts
        ]  # fmt: skip
        lines.append(f"| {backbone} | {method} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def _slug(name: str) -> str:
    """A folder name for a backbone: "MAE (here)" -> "mae-here"."""
    return re.sub(r"[^a-z0-9._]+", "-", name.lower()).strip("-")
