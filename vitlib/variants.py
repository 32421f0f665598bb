"""The variants the study names as next steps, trained from scratch under one budget.

Report section 5 names Simple ViT (arXiv 2205.01580), distillation through a token (DeiT,
arXiv 2012.12877), DeepViT's re-attention (arXiv 2103.11886) and efficient attention
(Performer, arXiv 2009.14794). Each is a set of options of vitlib's one ViT (`VARIANTS`);
`run_variants` trains every one of `cfg.variants.names` on the same data with the same
`TrainConfig`, the DeiT student from a CNN teacher trained first, and writes

    runs/<profile>/variants/<name>/      metrics.json, history.csv, predictions.csv, model
    runs/<profile>/variants/teacher/     the teacher's metrics and checkpoint
    runs/<profile>/variants/comparison.csv / .json   one row per variant

Finished runs are read back, not retrained, and a killed run resumes after its last epoch; each
run folder (and variants/ itself) is locked while it is written (`vitlib.runs.lock_run`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from tqdm.auto import tqdm

from vitlib.attention import ATTENTION_KINDS, build_attention
from vitlib.checkpoints import build_model
from vitlib.config import Config, to_dict
from vitlib.data import load_splits
from vitlib.errors import ExperimentError
from vitlib.experiments import check_inputs
from vitlib.files import write_csv, write_json
from vitlib.model import VisionTransformer, using_mode
from vitlib.resume import input_differences, run_inputs
from vitlib.runs import METRICS, RunDir, lock_run, write_run
from vitlib.train import fine_tune

__all__ = [
    "COMPARISON_KEYS",
    "VARIANTS",
    "Variant",
    "attention_memory",
    "attention_memory_by_length",
    "build_teacher",
    "build_variant",
    "ensure_variants",
    "peak_tensor_memory",
    "read_variant",
    "reference_row",
    "run_variants",
    "teacher_summary",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One variant: a title for tables, its paper, and the ViT options that make it."""

    title: str
    paper: str
    options: Mapping[str, Any]


VARIANTS: dict[str, Variant] = {
    "vit": Variant("ViT (the study's)", "arXiv 2010.11929", {}),
    "simple_vit": Variant(
        "Simple ViT: 2D sin-cos, average pool",
        "arXiv 2205.01580",
        {"pos_embed": "sincos", "class_token": False, "global_pool": "avg"},
    ),
    "deit": Variant(
        "DeiT: distillation token, CNN teacher", "arXiv 2012.12877", {"distilled": True}
    ),
    "deepvit": Variant("DeepViT: re-attention", "arXiv 2103.11886", {"attention": "reattention"}),
    "performer": Variant(
        "Performer: FAVOR+ attention", "arXiv 2009.14794", {"attention": "performer"}
    ),
}
TEACHER = "teacher"
COMPARISON_KEYS = (
    "variant",
    "title",
    "val_accuracy",
    "test_accuracy",
    "train_minutes",
    "params",
    "attention_bytes",
    "epochs",
)


def build_variant(cfg: Config, name: str) -> VisionTransformer:
    """Variant `name` at cfg.variants.model's size, random init seeded by cfg.seed."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {sorted(VARIANTS)}")
    return build_model(cfg.variants.model, seed=cfg.seed, **VARIANTS[name].options)


def build_teacher(cfg: Config) -> nn.Module:
    """The DeiT teacher: timm's `cfg.variants.teacher_arch` CNN, random init, 2 classes."""
    import timm

    torch.manual_seed(cfg.seed)
    try:
        return timm.create_model(
            cfg.variants.teacher_arch, pretrained=False, num_classes=cfg.variants.model.num_classes
        )
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ValueError(
            f"unknown teacher {cfg.variants.teacher_arch!r}: {exc}; set variants.teacher_arch "
            "to a timm model name such as 'resnet18'"
        ) from None


def run_variants(
    cfg: Config,
    *,
    progress: bool = True,
    device: str | torch.device | None = None,
    datasets: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train each of cfg.variants.names unless its metrics.json exists (and first the teacher,
    if "deit" still has to learn from it); write and return the comparison, one row per
    variant."""
    unknown = sorted(set(cfg.variants.names) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected names from {sorted(VARIANTS)}")
    root = cfg.run_dir / "variants"
    if datasets is None:
        check_inputs(cfg, "finetune", need_data=True, need_weights=False)
    with lock_run(root):  # before the data: a second `vitlib variants` stops at once
        if datasets is None:
            pcfg = build_variant(cfg, cfg.variants.names[0]).pretrained_cfg
            datasets = load_splits(cfg.data, pcfg, seed=cfg.seed, progress=progress)
        return _run_all(cfg, root, datasets, progress=progress, device=device)


def _run_all(
    cfg: Config,
    root: Path,
    datasets: Mapping[str, Any],
    *,
    progress: bool,
    device: str | torch.device | None,
) -> list[dict[str, Any]]:
    """Train the teacher (if needed) and each variant; write and return the comparison."""
    # The teacher is trained even without "deit": it is the comparison's CNN reference row.
    need_teacher = not RunDir(root / TEACHER).finished
    to_train = [TEACHER] * need_teacher + [
        n for n in cfg.variants.names if not RunDir(root / n).finished
    ]
    # One bar over every step still to run, redrawn at most once a second: a bar per epoch
    # would flood a notebook's output channel (and nbval loses messages past ~1,000).
    bar = tqdm(
        total=sum(_steps(cfg, n, len(datasets["train"])) for n in to_train),
        desc="variants",
        unit="step",
        mininterval=1.0,
        disable=not progress,
    )
    teacher = None
    if need_teacher or ("deit" in cfg.variants.names and not RunDir(root / "deit").finished):
        teacher = build_teacher(cfg)
        _train(cfg, TEACHER, teacher, datasets, device, bar)  # a finished one is loaded
    rows = []
    for name in cfg.variants.names:
        model = build_variant(cfg, name)
        metrics = _train(
            cfg, name, model, datasets, device, bar, teacher if name == "deit" else None
        )
        rows.append(_comparison_row(name, model, metrics))
    bar.close()
    write_csv(root / "comparison.csv", rows, COMPARISON_KEYS)
    write_json(root / "comparison.json", rows)
    return rows


def ensure_variants(cfg: Config, *, progress: bool = True) -> list[dict[str, Any]]:
    """The comparison of a finished `run_variants`; when there is none, run it if the profile
    allows (cfg.build_missing), else raise ExperimentError saying what to run."""
    path = cfg.run_dir / "variants" / "comparison.json"
    if path.is_file():
        rows = json.loads(path.read_text())
        if [r["variant"] for r in rows] == list(cfg.variants.names):
            return rows
    if not cfg.build_missing:
        raise ExperimentError(
            f"{path} not found (or for other variants): the variants of profile "
            f"{cfg.profile!r} have not been trained. Run notebook 06, or: python -m vitlib "
            f"variants --profile {cfg.profile}"
        )
    return run_variants(cfg, progress=progress)


def read_variant(cfg: Config, name: str) -> dict[str, Any]:
    """The metrics.json of a finished variant run (or of "teacher"), with its history."""
    run = RunDir(cfg.run_dir / "variants" / name)
    if not run.finished:
        raise ExperimentError(
            f"{run / METRICS} not found: run the variants first (notebook 06, or "
            f"python -m vitlib variants --profile {cfg.profile})"
        )
    return run.read_metrics()


def reference_row(cfg: Config) -> dict[str, Any]:
    """The CNN reference of the comparison: the teacher (cfg.variants.teacher_arch, trained
    by `variants.teacher`, the variants' recipe), as a row like the variants' ones."""
    metrics = read_variant(cfg, TEACHER)
    return {
        "variant": "cnn",
        "title": f"{cfg.variants.teacher_arch} (CNN reference, DeiT's teacher)",
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "train_minutes": metrics["train_minutes"],
        "params": sum(p.numel() for p in build_teacher(cfg).parameters()),
        "attention_bytes": 0,
        "epochs": metrics["epochs"],
    }


def teacher_summary(cfg: Config) -> str:
    """One line on the DeiT teacher of cfg.variants: its validation accuracy and minutes, or
    why there is none (no "deit" among the variants)."""
    if "deit" not in cfg.variants.names:
        return "no teacher: DeiT is not among the variants (variants.names)"
    teacher = read_variant(cfg, TEACHER)
    return (
        f"teacher {cfg.variants.teacher_arch}: validation accuracy "
        f"{teacher['val_accuracy']:.2%}, {teacher['train_minutes']:.1f} min"
    )


def _train(
    cfg: Config,
    name: str,
    model: nn.Module,
    datasets: Mapping[str, Any],
    device: str | torch.device | None,
    bar: tqdm,
    teacher: nn.Module | None = None,
) -> dict[str, Any]:
    """Train one model under runs/<profile>/variants/<name>, resuming, with its folder locked;
    its metrics. A finished model is loaded from its checkpoint, so the teacher can teach
    again."""
    with lock_run(cfg.run_dir / "variants" / name):
        return _train_locked(cfg, name, model, datasets, device, bar, teacher)


def _train_locked(
    cfg: Config,
    name: str,
    model: nn.Module,
    datasets: Mapping[str, Any],
    device: str | torch.device | None,
    bar: tqdm,
    teacher: nn.Module | None,
) -> dict[str, Any]:
    run = RunDir(cfg.run_dir / "variants" / name)
    run_dir = run.path
    settings = "variants.teacher" if name == TEACHER else "variants.train"
    train_cfg = cfg.variants.teacher if name == TEACHER else cfg.variants.train
    _check_settings(run_dir, cfg, run_inputs(model, datasets))
    if run.finished and name != TEACHER:
        return run.read_metrics()
    started = time.perf_counter()
    log.info("variants: training %s -> %s", name, run_dir)
    bar.set_description(f"variants: {name}")
    result = fine_tune(
        model,
        datasets,
        train_cfg,
        run_dir=run_dir,
        seed=cfg.seed,
        resume=True,
        progress=False,
        device=device,
        on_step=lambda epoch, step, net: bar.update(),
        teacher=teacher,
        settings=settings,
    )
    arch = cfg.variants.teacher_arch if name == TEACHER else cfg.variants.model.arch
    return write_run(
        cfg,
        run_dir,
        model,
        result,
        datasets,
        experiment=f"variants/{name}",
        arch=arch,
        device=device,
        started=started,
        resumed=True,
    )


def _steps(cfg: Config, name: str, n_train: int) -> int:
    tc = cfg.variants.teacher if name == TEACHER else cfg.variants.train
    return tc.epochs * math.ceil(n_train / tc.batch_size)


def _check_settings(run_dir: Path, cfg: Config, inputs: Mapping[str, Any]) -> None:
    """A finished run in `run_dir` must come from the same variants settings and data, and (when
    its run.json records them) the same data, model settings and weights (`run_inputs`)."""
    info = RunDir(run_dir).read_info()
    if info is None:
        return
    before = info["config"]
    now = to_dict(cfg)
    changed = [
        f"the {k} settings differ"
        for k in ("variants", "data", "seed")
        if json.dumps(before.get(k), default=str) != json.dumps(now[k], default=str)
    ]
    if "fingerprint" in info:  # run.json of an older vitlib has none: the settings decide
        changed += input_differences(info["fingerprint"], inputs)
    if changed:
        raise ExperimentError(
            f"{run_dir} holds a run made with other settings or inputs ({'; '.join(changed)}); "
            "delete that folder to retrain, or pass --set run_root=<another folder> (OVERRIDES "
            '{"run_root": ...} in a notebook) to keep both'
        )


def _comparison_row(name: str, model: VisionTransformer, metrics: Mapping[str, Any]) -> dict:
    return {
        "variant": name,
        "title": VARIANTS[name].title,
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "train_minutes": metrics["train_minutes"],
        "params": sum(p.numel() for p in model.parameters()),
        "attention_bytes": attention_memory(model),
        "epochs": metrics["epochs"],
    }


def attention_memory(model: VisionTransformer, *, batch_size: int = 1) -> int:
    """Bytes one attention layer of `model` holds for training: the peak of the tensors its
    forward allocates with autograd on (what backward keeps, plus transients), on
    `batch_size` images' tokens (B, N, D); measured with `peak_tensor_memory`."""
    N = model.num_prefix_tokens + model.patch_embed.num_patches
    param = next(model.parameters())
    x = torch.randn(batch_size, N, model.embed_dim, device=param.device)
    return _layer_memory(model.blocks[0].attn, x)


def attention_memory_by_length(
    token_counts: Sequence[int],
    *,
    embed_dim: int,
    num_heads: int,
    kinds: Sequence[str] = ATTENTION_KINDS,
    performer_features: int = 64,
) -> dict[str, list[int]]:
    """`attention_memory` of one attention layer of each kind at each sequence length N:
    {kind: [bytes for N in token_counts]}; weights random (memory does not depend on them)."""
    out: dict[str, list[int]] = {}
    for kind in kinds:
        layer = build_attention(
            kind,
            embed_dim,
            num_heads=num_heads,
            qkv_bias=True,
            performer_features=performer_features,
        )
        out[kind] = [_layer_memory(layer, torch.randn(1, n, embed_dim)) for n in token_counts]
    return out


def _layer_memory(layer: nn.Module, x: Tensor) -> int:
    x = x.detach().requires_grad_(True)
    with using_mode(layer, training=True):
        return peak_tensor_memory(lambda: layer(x))


class _PeakTensorMemory(TorchDispatchMode):
    """Tracks the bytes of live storages that operators allocate, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                if storage.data_ptr() not in self.live:
                    self.live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def peak_tensor_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes of live tensors that `fn()` allocates, its result included (inputs and
    weights not counted; views share their base's bytes). Any device; operators' internal
    workspaces are not seen."""
    with _PeakTensorMemory() as tracker:
        fn()
    return tracker.peak
