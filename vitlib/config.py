"""Experiment settings: named profiles as frozen dataclasses, the one place they differ.

`full` is the study's setting (report section 3.2: ViT-B/16 with the original JAX weights,
20k/2k/2k images, 5 epochs, batch 16, Adam lr 1e-4, cosine decay). `smoke` is a small local
overlay that runs the whole pipeline offline on a CPU in about a minute on synthetic data; `cpu`
trains a small ViT from scratch on real photographs in tens of minutes on a CPU.

    cfg = get_config("smoke", {"finetune.epochs": 2, "data.root": "data/my-photos"})

Unknown profiles and unknown override keys are errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "VariantsConfig",
    "PROFILES",
    "get_config",
    "to_dict",
]


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

    names: tuple[str, ...] = ("vit", "simple_vit", "deit", "deepvit", "performer")
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher_arch: str = "resnet18"
    teacher: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class Config:
    """Everything one profile needs; notebooks and the CLI receive sections of it."""

    profile: str
    model: ModelConfig
    data: DataConfig
    probe: TrainConfig
    finetune: TrainConfig
    variants: VariantsConfig = field(default_factory=VariantsConfig)
    seed: int = 0
    run_root: str = "runs"
    figure_root: str = "figures"
    # True when the profile may build missing artefacts itself (a notebook run on its own).
    build_missing: bool = False

    @property
    def run_dir(self) -> Path:
        return Path(self.run_root) / self.profile

    @property
    def figure_dir(self) -> Path:
        return Path(self.figure_root) / self.profile


SMOKE_ARCH = {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4}
CPU_ARCH = {"patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3}
# Training from scratch, sized to finish well within 30 min on a 2-core CPU; AdamW with
# warm-up and gradient clipping, as DeiT trains ViTs from scratch (arXiv 2012.12877), with a
# higher lr for the few steps there are.
CPU_FROM_SCRATCH = TrainConfig(
    epochs=4,
    batch_size=64,
    lr=1e-3,
    optimizer="adamw",
    weight_decay=0.05,
    warmup_epochs=0.5,
    grad_clip_norm=1.0,
    eval_batch_size=256,
)

PROFILES: dict[str, Config] = {
    # The study (report sections 3.1-3.2).
    "full": Config(
        profile="full",
        model=ModelConfig(
            arch="vit_base_patch16_224",
            pretrained="vit_base_patch16_224.orig_in21k_ft_in1k",  # jx_vit_base_p16_224-80ecf9dd.pth
        ),
        data=DataConfig(source="folder", root="data/dogs-vs-cats/train", num_workers=4),
        probe=TrainConfig(),
        finetune=TrainConfig(),
        # Not in the study: ViT-Ti/16-sized variants from scratch at 224 px, for a GPU.
        variants=VariantsConfig(
            model=ModelConfig(arch="vit_tiny_patch16_224"),
            train=TrainConfig(
                epochs=30,
                batch_size=128,
                lr=1e-3,
                optimizer="adamw",
                weight_decay=0.05,
                warmup_epochs=3,
                grad_clip_norm=1.0,
                eval_batch_size=256,
            ),
            teacher=TrainConfig(
                epochs=30,
                batch_size=128,
                lr=1e-3,
                optimizer="adamw",
                weight_decay=0.05,
                warmup_epochs=3,
                eval_batch_size=256,
            ),
        ),
    ),
    # Real photographs, a small ViT from scratch at 64 px: tens of minutes on a CPU.
    "cpu": Config(
        profile="cpu",
        model=ModelConfig(arch="vit_custom", img_size=64, arch_kwargs=CPU_ARCH),
        data=DataConfig(
            source="folder", root="data/dogs-vs-cats", split_sizes=(9_000, 1_000, 1_000)
        ),
        # A random-init backbone: the probe is the "features of an untrained ViT" baseline.
        probe=TrainConfig(epochs=5, batch_size=64, lr=1e-3, eval_batch_size=256),
        finetune=CPU_FROM_SCRATCH,
        # Five ViTs and a ResNet-18 teacher from scratch, 5 epochs each: about 40 min here.
        variants=VariantsConfig(
            model=ModelConfig(arch="vit_custom", img_size=64, arch_kwargs=CPU_ARCH),
            train=dataclasses.replace(CPU_FROM_SCRATCH, epochs=5),
            teacher=dataclasses.replace(CPU_FROM_SCRATCH, epochs=5),
        ),
    ),
    # Offline, synthetic, seconds: what CI and nbval run.
    "smoke": Config(
        profile="smoke",
        model=ModelConfig(arch="vit_custom", img_size=32, arch_kwargs=SMOKE_ARCH),
        data=DataConfig(
            source="synthetic",
            split_sizes=(480, 160, 160),
            synthetic_per_class=400,
            synthetic_img_size=32,
        ),
        probe=TrainConfig(epochs=3, batch_size=32, lr=1e-3),
        finetune=TrainConfig(epochs=6, batch_size=32, lr=1e-3),
        # Two-layer ViTs, a few epochs each: seconds.
        variants=VariantsConfig(
            model=ModelConfig(
                arch="vit_custom", img_size=32, arch_kwargs={**SMOKE_ARCH, "depth": 2}
            ),
            train=TrainConfig(epochs=8, batch_size=32, lr=1e-3),
            # timm's tiny test ResNet (0.37M parameters): 100% on the bars in 3 epochs, 1.2 s
            # (ResNet-18 took 7 s, a tenth of the smoke report).
            teacher_arch="test_resnet",
            teacher=TrainConfig(epochs=3, batch_size=32, lr=1e-3),
        ),
        build_missing=True,
    ),
}


def get_config(
    profile: str = "smoke",
    overrides: dict[str, Any] | None = None,
    *,
    root: str | Path | None = None,
) -> Config:
    """Return profile `profile` with dotted-key `overrides` applied ({"probe.epochs": 1}).

    With `root` (the project folder), relative paths (runs, figures, data, cache, a local
    weights file) are resolved against it, so a notebook running in notebooks/ writes where
    the CLI does. Raises ValueError for an unknown profile or key, naming the valid ones.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    cfg = PROFILES[profile]
    for key, value in (overrides or {}).items():
        cfg = _replace_dotted(cfg, key.split("."), value, key)
    return cfg if root is None else _resolve_paths(cfg, Path(root))


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


def _replace_dotted(obj: Any, parts: list[str], value: Any, key: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    head, rest = parts[0], parts[1:]
    if head not in names:
        raise ValueError(f"unknown setting {key!r}: {type(obj).__name__} has {names}")
    current = getattr(obj, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"unknown setting {key!r}: {head!r} has no sub-settings")
        value = _replace_dotted(current, rest, value, key)
    elif dataclasses.is_dataclass(current):
        raise ValueError(f"setting {key!r} is a section; set one of its fields, e.g. {key}.<name>")
    elif isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)  # JSON and papermill give lists
    return dataclasses.replace(obj, **{head: value})


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain JSON-ready data (for run metadata)."""
    return dataclasses.asdict(cfg)
