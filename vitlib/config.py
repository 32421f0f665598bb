"""Experiment settings: named profiles as frozen dataclasses, the one place they differ.

`full` is the study's setting (report section 3.2: ViT-B/16 with the original JAX weights,
20k/2k/2k images, 5 epochs, batch 16, Adam lr 1e-4, cosine decay), written out in full. `smoke`
and `cpu` are overlays of it (as big_vision's local configs): only the settings they change,
as dotted keys. `smoke` runs the whole pipeline offline on a CPU in about a minute on synthetic
data; `cpu` trains a small ViT from scratch on real photographs in tens of minutes on a CPU.

    cfg = get_config("smoke", {"finetune.epochs": 2, "data.root": "data/my-photos"})

Unknown profiles and settings, values of the wrong type and values out of range are
`ConfigError`s (a ValueError) whose one-line message starts with the dotted key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitlib.errors import ConfigError
from vitlib.overlay import check_types, overlay, show

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "PretrainConfig",
    "TrainConfig",
    "VariantsConfig",
    "OVERLAYS",
    "PROFILES",
    "VARIANT_NAMES",
    "get_config",
    "overlay",
    "to_dict",
    "validate",
]

# The choices of a few string settings; each must match the code that reads it.
VARIANT_NAMES = ("vit", "simple_vit", "deit", "deepvit", "performer")  # vitlib.variants.VARIANTS
SCHEDULES = ("cosine", "constant")  # vitlib.recipe.make_scheduler
OPTIMIZERS = ("adam", "adamw")  # vitlib.recipe.make_optimizer
DATA_SOURCES = ("synthetic", "folder")  # vitlib.data
# vitlib.model builds "vit_custom" from CUSTOM_DEFAULTS (these sizes) and named archs at the
# sizes in their names ("vit_base_patch16_224"); used only to check img_size against the patch.
CUSTOM_ARCH = "vit_custom"
CUSTOM_SIZES = {"img_size": 224, "patch_size": 16}
# The settings `validate` checks in each section of that kind, by dotted key.
RUNS = ("probe", "finetune", "variants.train", "variants.teacher")
RUNS += ("pretrain.train", "pretrain.probe", "pretrain.finetune")  # vitlib.pretrain, efficiency
MODELS = ("model", "variants.model")
# The least value of each integer setting.
MINIMA: dict[str, int] = {
    "seed": 0,
    "data.synthetic_per_class": 1,
    "data.synthetic_img_size": 8,  # pixels
    "data.synthetic_seed": 0,
    "data.num_workers": 0,  # 0 = load in the main process
    **{f"{at}.num_classes": 2 for at in MODELS},
    **{f"{at}.{name}": 1 for at in RUNS for name in ("epochs", "batch_size", "eval_batch_size")},
    **{f"pretrain.{name}": 1 for name in ("decoder_depth", "decoder_heads", "held_out_images")},
    **{f"pretrain.{n}": 1 for n in ("finetune_images", "probe_images", "val_images")},
    **{"pretrain.reconstructions": 1, "pretrain.decoder_dim": 4, "report_jobs": 1},
}
# The allowed values of each string setting with a fixed set of them.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": DATA_SOURCES,
    **{f"{at}.schedule": SCHEDULES for at in RUNS},
    **{f"{at}.optimizer": OPTIMIZERS for at in RUNS},
}


@dataclass(frozen=True)
class ModelConfig:
    """Which ViT to build and which weights to start from (see `vitlib.create_model`)."""

    arch: str = "vit_base_patch16_224"
    # timm tag, local .pth/.bin/.safetensors/.npz path, or None for random init.
    pretrained: str | None = None
    num_classes: int = 2
    img_size: int | None = None
    # Architecture overrides for custom sizes, e.g. {"patch_size": 8, "embed_dim": 64}.
    arch_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split."""

    # "synthetic" generates the two-class shape set under `cache_dir`; otherwise a folder in
    # one of the layouts `vitlib.data` recognises.
    source: str = "synthetic"
    root: str | None = None
    # Images per split when one labelled pool is split (study section 3.1: 20k/2k/2k).
    split_sizes: tuple[int, int, int] = (20_000, 2_000, 2_000)
    # Images per class generated for the synthetic set, their size, and the seed that draws
    # them (fixed, so the set stays the same whichever seed the split uses).
    synthetic_per_class: int = 400
    synthetic_img_size: int = 64
    synthetic_seed: int = 0
    # Train split only: random resized crops and flips (`ImageDataset.augment_batch`).
    augment: bool = False  # the study trained without augmentation
    # A missing `root` is downloaded from this `vitlib.download.SOURCES` name into the folder
    # above it when the network is there (`vitlib.fetch`); None: never.
    download: str | None = None
    download_url: str | None = None  # a mirror (or a test server) in place of the source's URL
    allow_download: bool = True  # False (--no-download): a missing folder fails at once
    num_workers: int = 0
    cache_dir: str = "data/cache"


@dataclass(frozen=True)
class TrainConfig:
    """One optimisation run (study section 3.2: Adam, lr 1e-4, batch 16, cosine, 5 epochs)."""

    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "cosine"  # CosineAnnealingLR over all steps, as in the study; or "constant"
    optimizer: str = "adam"  # "adam" as the study (L2 weight decay) or "adamw" (decoupled)
    warmup_epochs: float = 0.0  # linear warm-up before the cosine; the study had none
    grad_clip_norm: float = 0.0  # clip the gradient's global norm; 0 = off, as the study
    label_smoothing: float = 0.0  # cross-entropy against (1 - e) one-hot + e / K; the study: 0
    eval_batch_size: int = 128  # evaluation and feature extraction only
    # Fine-tune only: start from the probe's trained head instead of a fresh one.
    init_from_probe: bool = False


@dataclass(frozen=True)
class VariantsConfig:
    """The from-scratch comparison of ViT variants (notebook 06): one model size, one budget.

    Each name in `names` is a `vitlib.variants.VARIANTS` entry, built as `model` plus that
    variant's options and trained with `train`; "deit" learns from a CNN teacher
    (`teacher_arch`, any timm classifier name, from scratch) trained first with `teacher`.
    """

    names: tuple[str, ...] = VARIANT_NAMES
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher_arch: str = "resnet18"
    teacher: TrainConfig = field(default_factory=TrainConfig)


# The four kinds of ViT-B/16 weights the pre-training study compares (timm tags): supervised
# (the study's), AugReg (2106.10270), DINO (2104.14294), MAE (2111.06377); the last two headless.
WEIGHT_KINDS = (
    "vit_base_patch16_224.orig_in21k_ft_in1k",
    "vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "vit_base_patch16_224.dino",
    "vit_base_patch16_224.mae",
)


# MAE's ViT-B recipe is 800-1600 epochs at batch 4096, lr 1.5e-4 x batch/256, AdamW, weight
# decay 0.05, 40 warm-up epochs (its Table 8); this is a GPU-sized run on a small data set.
MAE_RECIPE = TrainConfig(
    epochs=100, batch_size=256, lr=1.5e-4, optimizer="adamw", weight_decay=0.05, warmup_epochs=10
)


@dataclass(frozen=True)
class PretrainConfig:
    """MAE pre-training (arXiv 2111.06377) of `model`'s architecture from a random init, and the
    label-efficiency study on it (notebook 07; `vitlib.pretrain`, `vitlib.efficiency`): for each
    of `label_counts` labelled images (0 = all), the probe and the fine-tune (each seeing
    `finetune_images` images) from a random init, from this pre-training and from `weights`."""

    train: TrainConfig = field(default_factory=lambda: MAE_RECIPE)
    mask_ratio: float = 0.75  # the paper's
    decoder_dim: int = 512  # the paper's default decoder: 8 blocks of width 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True
    held_out_images: int = 256  # val images the held-out reconstruction loss is measured on
    reconstructions: int = 8  # test images in the reconstruction figure
    label_counts: tuple[int, ...] = (100, 250, 500, 1000, 0)  # 0: every labelled image
    probe: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=50, lr=1e-3))
    finetune: TrainConfig = field(default_factory=TrainConfig)
    finetune_images: int = 50_000  # epochs = ceil(finetune_images / labels)
    probe_images: int = 50_000  # the same for the probe (on cached features: cheap)
    val_images: int = 1_000  # of the val split, for the per-epoch validation
    weights: tuple[str, ...] = WEIGHT_KINDS


@dataclass(frozen=True)
class Config:
    """Everything one profile needs; notebooks and the CLI receive sections of it."""

    profile: str
    model: ModelConfig
    data: DataConfig
    probe: TrainConfig
    finetune: TrainConfig
    variants: VariantsConfig = field(default_factory=VariantsConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    seed: int = 0
    run_root: str = "runs"
    figure_root: str = "figures"
    # True when the profile may build missing artefacts itself (a notebook run on its own).
    build_missing: bool = False
    # The least test accuracy notebook 03 asserts the fine-tune reaches: a training that
    # learned nothing (50% on two balanced classes) fails it. Study: 98.65% (section 3.3).
    expect_finetune_accuracy: float = 0.95
    sweep_grid: dict[str, Any] = field(default_factory=dict)  # notebook 08's (vitlib.sweep)
    report_jobs: int = 1  # notebooks `vitlib report` executes at once (vitlib.report.DEPENDS)

    @property
    def run_dir(self) -> Path:
        return Path(self.run_root) / self.profile

    @property
    def figure_dir(self) -> Path:
        return Path(self.figure_root) / self.profile


# DeiT's from-scratch recipe (arXiv 2012.12877) at a GPU's batch size, for full's variants.
GPU_FROM_SCRATCH = TrainConfig(
    epochs=30,
    batch_size=128,
    lr=1e-3,
    optimizer="adamw",
    weight_decay=0.05,
    warmup_epochs=3,
    grad_clip_norm=1.0,
    eval_batch_size=256,
)

# The study (report sections 3.1-3.2).
FULL = Config(
    profile="full",
    model=ModelConfig(
        arch="vit_base_patch16_224",
        pretrained="vit_base_patch16_224.orig_in21k_ft_in1k",  # jx_vit_base_p16_224-80ecf9dd.pth
    ),
    # PetImages: the Asirra photos of Kaggle's Dogs vs Cats (which needs a login), downloaded
    # when missing; a folder of the Kaggle files works the same with --data.
    data=DataConfig(source="folder", root="data/petimages", download="petimages", num_workers=4),
    probe=TrainConfig(),
    finetune=TrainConfig(),
    sweep_grid={"finetune.lr": [1e-4, 3e-4, 1e-3], "finetune.epochs": [5, 10]},  # section 3.3
    # Not in the study: ViT-Ti/16-sized variants from scratch at 224 px, for a GPU; the CNN
    # teacher by the same recipe without gradient clipping.
    variants=VariantsConfig(
        model=ModelConfig(arch="vit_tiny_patch16_224"),
        train=GPU_FROM_SCRATCH,
        teacher=dataclasses.replace(GPU_FROM_SCRATCH, grad_clip_norm=0.0),
    ),
)


def _under(section: str, **changes: Any) -> dict[str, Any]:
    """Dotted keys of one section: _under("probe", epochs=3) -> {"probe.epochs": 3}."""
    return {f"{section}.{name}": value for name, value in changes.items()}


SMOKE_ARCH = {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4}
# A ViT-Ti-wide, 4-layer ViT at the photos' own 128 px whose patch embedding is a 4-layer
# convolutional stem (the paper's hybrid in small): the same 8x8 token grid as 64 px with
# 8 px patches, at the same speed, from 4x the pixels. 4 layers learnt as fast per image as 6
# in 70% of the time (measured), so more epochs fit the budget.
CPU_ARCH = {"patch_size": 16, "embed_dim": 192, "depth": 4, "num_heads": 3, "conv_stem": 4}
# Training from scratch within about 30 min on a 2-core CPU, as DeiT trains ViTs from scratch
# (arXiv 2012.12877): AdamW, decoupled weight decay, warm-up then cosine, label smoothing,
# random resized crops and flips (data.augment), gradient clipping. lr 1e-3 did not leave
# chance in an epoch here, 3e-4 did (measured, see benchmarks/README.md).
CPU_FROM_SCRATCH = dict(
    epochs=7,
    batch_size=64,
    lr=3e-4,
    optimizer="adamw",
    weight_decay=0.05,
    warmup_epochs=0.3,
    grad_clip_norm=1.0,
    label_smoothing=0.1,
    eval_batch_size=256,
)
# The study's recipe (TrainConfig's defaults) where full's variants recipe differs from it.
STUDY_RECIPE = dict(
    optimizer="adam", weight_decay=0.0, warmup_epochs=0.0, grad_clip_norm=0.0, eval_batch_size=128
)

# What `smoke` and `cpu` change in `full`; `overlay` applies them (PROFILES, at the end).
OVERLAYS: dict[str, dict[str, Any]] = {
    # Real photographs, a small ViT from scratch at 64 px: tens of minutes on a CPU.
    "cpu": {
        "profile": "cpu",
        **_under("model", arch="vit_custom", pretrained=None, img_size=128, arch_kwargs=CPU_ARCH),
        # The cats-dogs-bench pool (23,000 labelled photos): train and val from it, test from
        # its test/ folder when there, else held out of the pool too.
        **_under("data", root="data/cats-dogs-bench", split_sizes=(21_000, 1_000, 1_000)),
        "data.download": "cats-dogs-bench",  # its public repository's archive, when online
        **_under("data", augment=True, num_workers=0),
        # From scratch in half an hour: far above chance, below the study's pre-trained 98.65%.
        "expect_finetune_accuracy": 0.7,
        # NOTE(paper): the study's sweep (lr 1e-4 first) in ~1 h here, fewer epochs from scratch.
        "sweep_grid": {"finetune.lr": [1e-4, 3e-4, 1e-3], "finetune.epochs": [1, 3]},
        # A random-init backbone: the probe is the "features of an untrained ViT" baseline.
        **_under("probe", batch_size=64, lr=1e-3, eval_batch_size=256),
        **_under("finetune", **CPU_FROM_SCRATCH),
        # Five ViTs and a ResNet-18 from scratch by the fine-tune's recipe, 1 epoch each
        # (about 6 min each here): the comparison at equal budget, not at convergence.
        **_under("variants.model", arch="vit_custom", img_size=128, arch_kwargs=CPU_ARCH),
        **_under("variants.train", **{**CPU_FROM_SCRATCH, "epochs": 1}),
        **_under("variants.teacher", **{**CPU_FROM_SCRATCH, "epochs": 1, "grad_clip_norm": 0.0}),
        # MAE on the pool (labels ignored): 167 img/s here with the stem, against 115 for a plain
        # forward+backward (benchmarks/results/pretrain_cpu.json), so 12 epochs of 21,000 fit in
        # ~30 min. NOTE(paper): 12 epochs, not 800-1600; lr 1e-3 at batch 128 (the paper's rule
        # gives 7.5e-5, too slow for so short a run); a 2-block, 128-wide decoder (its Table 1
        # ablation: a 1-block decoder still fine-tunes well).
        **_under("pretrain.train", **{**CPU_FROM_SCRATCH, "epochs": 12, "batch_size": 128}),
        **_under("pretrain.train", lr=1e-3, warmup_epochs=1, label_smoothing=0.0),
        **_under("pretrain", decoder_dim=128, decoder_depth=2, decoder_heads=4, weights=()),
        # Every fine-tune sees 20,000 images (200 epochs of 100 labels, 1 of all): ~3 min each.
        **_under("pretrain", finetune_images=20_000, probe_images=50_000, val_images=100),
        **_under("pretrain.probe", epochs=50, batch_size=64, lr=1e-3, eval_batch_size=256),
        **_under("pretrain.finetune", **{**CPU_FROM_SCRATCH, "warmup_epochs": 0.0}),
    },
    # The study's own model and weights (full's) on a CPU: its headline, frozen vs fine-tuned
    # with the JAX weights, on a stratified 1,000/500/500 subset of PetImages (downloaded as
    # for full). Measured on 2 cores (stand-in weights): zero-shot 6.9 min, probe 12.8 (its
    # features), fine-tune 18.8, notebook 01 4.6; under an hour in all. NOTE(paper): 1 epoch on a
    # twentieth of the images, not 5 on 20k; the probe is the study's 5 epochs, on cached
    # features; 500 test photos, so a 95% interval of about +-1.6 points at 96.5%.
    "laptop": {
        "profile": "laptop",
        **_under("data", split_sizes=(1_000, 500, 500), num_workers=2),
        "finetune.epochs": 1,
        "expect_finetune_accuracy": 0.9,
        "sweep_grid": {"finetune.lr": [1e-4, 1e-3], "finetune.epochs": [1]},  # ~35 min
        # The variants from scratch as cpu's (128 px hybrid, 1 epoch each) on the same subset.
        **_under("variants.model", arch="vit_custom", img_size=128, arch_kwargs=CPU_ARCH),
        **_under("variants.train", **{**CPU_FROM_SCRATCH, "epochs": 1}),
        **_under("variants.teacher", **{**CPU_FROM_SCRATCH, "epochs": 1, "grad_clip_norm": 0.0}),
        # The pre-training study with the study's weights only, on 100 and 250 labels; MAE on
        # ViT-B/16 for one epoch (minutes on a CPU; a GPU profile's setting, shown working).
        **_under("pretrain", weights=(WEIGHT_KINDS[0],), label_counts=(100, 250)),
        **_under("pretrain", finetune_images=1_000, probe_images=5_000, val_images=100),
        **_under("pretrain.train", epochs=1, batch_size=32, warmup_epochs=0),
    },
    # Offline, synthetic, seconds: what CI and nbval run.
    "smoke": {
        "profile": "smoke",
        "data.download": None,
        **_under("model", arch="vit_custom", pretrained=None, img_size=32, arch_kwargs=SMOKE_ARCH),
        **_under("data", source="synthetic", root=None, split_sizes=(480, 160, 160)),
        **_under("data", synthetic_img_size=32, num_workers=0),
        **_under("probe", epochs=3, batch_size=32, lr=1e-3),
        **_under("finetune", epochs=6, batch_size=32, lr=1e-3),
        # Two-layer ViTs, a few epochs each: seconds.
        "variants.model.arch": "vit_custom",
        "variants.model.img_size": 32,
        "variants.model.arch_kwargs": {**SMOKE_ARCH, "depth": 2},
        **_under("variants.train", epochs=8, batch_size=32, **STUDY_RECIPE),
        # timm's tiny test ResNet (0.37M parameters): 100% on the bars in 3 epochs, 1.2 s
        # (ResNet-18 took 7 s, a tenth of the smoke report).
        "variants.teacher_arch": "test_resnet",
        **_under("variants.teacher", epochs=3, batch_size=32, **STUDY_RECIPE),
        # MAE and the label-efficiency study in seconds (the report's 90 s budget): 40 labels.
        **_under("pretrain.train", epochs=8, batch_size=32, lr=1e-3, warmup_epochs=1),
        **_under("pretrain.train", optimizer="adamw", eval_batch_size=128),
        **_under("pretrain", decoder_dim=32, decoder_depth=1, decoder_heads=4, weights=()),
        **_under("pretrain", label_counts=(40,), finetune_images=480, probe_images=960),
        **_under("pretrain", val_images=40, held_out_images=64, reconstructions=4),
        **_under("pretrain.probe", epochs=20, batch_size=32, lr=1e-3),
        **_under("pretrain.finetune", epochs=6, batch_size=32, lr=1e-3),
        "build_missing": True,
        "sweep_grid": {"finetune.lr": [1e-3, 3e-3], "finetune.epochs": [2, 4]},  # seconds
        "report_jobs": 2,  # small single-threaded kernels: two at once on two cores
        # The bars are learnt to ~99% in 6 epochs.
        "expect_finetune_accuracy": 0.9,
    },
}


def get_config(
    profile: str = "smoke",
    overrides: dict[str, Any] | None = None,
    *,
    root: str | Path | None = None,
) -> Config:
    """Return profile `profile` with dotted-key `overrides` applied ({"probe.epochs": 1}).

    Each override is type-checked against its field (see `overlay`) and the result is range-
    checked (`validate`). With `root` (the project folder), relative paths (runs, figures,
    data, cache, a local weights file) are resolved against it, so a notebook running in
    notebooks/ writes where the CLI does. Raises ConfigError (a ValueError) for an unknown
    profile or key, naming the valid ones, or a bad value, naming what is allowed.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    cfg = validate(overlay(PROFILES[profile], overrides or {}))
    return cfg if root is None else _resolve_paths(cfg, Path(root))


def validate(cfg: Config) -> Config:
    """`cfg` itself if every setting has its field's type and is in range, else ConfigError.

    The message names the first bad setting by its dotted key, its value and what is allowed.
    Integers have the MINIMA, strings the CHOICES; lr is finite and > 0, weight_decay and
    grad_clip_norm finite and >= 0, label_smoothing in [0, 1), warmup_epochs from 0 to epochs; the three split sizes are
    >= 1; img_size is a multiple of the patch size; variants.names are distinct VARIANT_NAMES.
    """
    check_types(cfg, "")
    for key, least in MINIMA.items():
        _expect(_get(cfg, key) >= least, key, _get(cfg, key), f"an integer >= {least}")
    for key, choices in CHOICES.items():
        _expect(_get(cfg, key) in choices, key, _get(cfg, key), f"one of {list(choices)}")
    for at in RUNS:
        _check_train(_get(cfg, at), at)
    for at in MODELS:
        _check_model(_get(cfg, at), at)
    # build_manifest allows empty val/test splits, but every experiment reports both.
    floor = cfg.expect_finetune_accuracy
    _expect(0 <= floor <= 1, "expect_finetune_accuracy", floor, "a number from 0 to 1")
    sizes = cfg.data.split_sizes
    _expect(min(sizes) >= 1, "data.split_sizes", sizes, "3 integers >= 1 (train, val, test)")
    _check_pretrain(cfg.pretrain)
    names = cfg.variants.names
    _expect(
        len(names) >= 1 and len(set(names)) == len(names) and set(names) <= set(VARIANT_NAMES),
        "variants.names",
        names,
        f"a non-empty list of distinct names from {list(VARIANT_NAMES)}",
    )
    return cfg


def _get(obj: Any, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), obj)


def _expect(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {allowed}, got {show(value)}")


def _check_train(t: TrainConfig, at: str) -> None:
    _expect(math.isfinite(t.lr) and t.lr > 0, f"{at}.lr", t.lr, "a finite number > 0")
    for name in ("weight_decay", "grad_clip_norm"):
        value = getattr(t, name)
        _expect(math.isfinite(value) and value >= 0, f"{at}.{name}", value, "a finite number >= 0")
    smoothing = t.label_smoothing
    _expect(0 <= smoothing < 1, f"{at}.label_smoothing", smoothing, "a number from 0 to below 1")
    allowed = f"a number from 0 to {at}.epochs ({t.epochs})"
    _expect(0 <= t.warmup_epochs <= t.epochs, f"{at}.warmup_epochs", t.warmup_epochs, allowed)


def _check_pretrain(pc: PretrainConfig) -> None:
    ratio = pc.mask_ratio
    _expect(0 <= ratio < 1, "pretrain.mask_ratio", ratio, "a number from 0 to below 1")
    counts = pc.label_counts
    ok = len(counts) >= 1 and len(set(counts)) == len(counts) and min(counts) >= 0
    allowed = "a non-empty list of distinct integers >= 0 (0 = all labels)"
    _expect(ok, "pretrain.label_counts", counts, allowed)
    dim, heads = pc.decoder_dim, pc.decoder_heads
    allowed = f"a multiple of 4 and of pretrain.decoder_heads ({heads})"
    _expect(dim % 4 == 0 and dim % heads == 0, "pretrain.decoder_dim", dim, allowed)


def _check_model(m: ModelConfig, at: str) -> None:
    ok = m.img_size is None or m.img_size >= 1
    _expect(ok, f"{at}.img_size", m.img_size, "None or an integer >= 1")
    # create_model gets img_size= and **arch_kwargs: a second img_size would be a TypeError.
    allowed = f"no 'img_size' key (set {at}.img_size instead)"
    _expect("img_size" not in m.arch_kwargs, f"{at}.arch_kwargs", m.arch_kwargs, allowed)
    patch = m.arch_kwargs.get("patch_size")
    if patch is not None:
        ok = isinstance(patch, int) and not isinstance(patch, bool) and patch >= 1
        _expect(ok, f"{at}.arch_kwargs.patch_size", patch, "an integer >= 1")
    named = re.fullmatch(r".*_patch(\d+)_(\d+)", m.arch)  # "vit_base_patch16_224"
    sizes = {"patch_size": int(named[1]), "img_size": int(named[2])} if named else {}
    sizes = CUSTOM_SIZES if m.arch == CUSTOM_ARCH else sizes
    img = m.img_size if m.img_size is not None else sizes.get("img_size")
    patch = patch or sizes.get("patch_size")
    if img is not None and patch is not None and img % patch:
        default = "" if m.img_size is not None else f" ({m.arch}'s default)"
        allowed = f"a multiple of the patch size {patch}"
        raise ConfigError(f"{at}.img_size: expected {allowed}, got {img}{default}")


def _resolve_paths(cfg: Config, root: Path) -> Config:
    def under_root(path: str | None) -> str | None:
        return None if path is None else str((root / path).resolve())

    weights = cfg.model.pretrained
    if weights and (root / weights).exists():  # a local file, not a timm tag
        weights = under_root(weights)
    return dataclasses.replace(
        cfg,
        run_root=under_root(cfg.run_root),
        figure_root=under_root(cfg.figure_root),
        model=dataclasses.replace(cfg.model, pretrained=weights),
        data=dataclasses.replace(
            cfg.data, root=under_root(cfg.data.root), cache_dir=under_root(cfg.data.cache_dir)
        ),
    )


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain JSON-ready data (for run metadata)."""
    return dataclasses.asdict(cfg)


# Each built-in profile is checked here, at import, as overrides are in get_config.
PROFILES: dict[str, Config] = {
    "full": validate(FULL),
    **{name: validate(overlay(FULL, changes)) for name, changes in OVERLAYS.items()},
}
