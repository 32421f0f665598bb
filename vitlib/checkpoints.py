"""Building a ViT from published weights: timm tags, timm-layout files and Google's .npz.

Every source goes through one pure adapter, `adapt_state_dict`, which checks keys and shapes
against the model, drops a head of another size and resamples the position embedding for
another image size. Files are read with `torch.load(weights_only=True)`: a checkpoint can never
run code, and one that would is refused with how to convert a trusted one to safetensors.

    model = create_model("vit_base_patch16_224",
                         pretrained="vit_base_patch16_224.orig_in21k_ft_in1k", num_classes=2)
    model = create_model("vit_base_patch16_224", pretrained="jx_vit_base_p16_224-80ecf9dd.pth")
    model = create_model("vit_base_patch16_224", pretrained="ViT-B_16.npz")
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vitlib.config import ModelConfig
from vitlib.errors import CheckpointError
from vitlib.model import VisionTransformer, build_vit, resample_pos_embed

__all__ = [
    "CheckpointError",
    "adapt_state_dict",
    "build_model",
    "create_model",
    "export_to_timm",
    "npz_to_state_dict",
    "read_checkpoint",
    "resolve_weights",
    "sha256_file",
]

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".npz")
# Keys of timm models that vitlib's plain ViT does not have and that carry no weights we use.
JAX_IGNORED = ("pre_logits/kernel", "pre_logits/bias")  # ImageNet-21k representation layer


def create_model(
    arch: str,
    pretrained: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    **arch_kwargs: Any,
) -> VisionTransformer:
    """A vitlib ViT, random-init or from `pretrained` weights.

    `pretrained` is a timm tag (`vit_base_patch16_224.orig_in21k_ft_in1k`, downloaded into the
    Hugging Face cache), a local `.pth/.pt/.bin/.safetensors` file in timm layout, or a local
    Google `.npz`. A head of another size than `num_classes` is dropped and re-initialised; any
    other mismatch raises CheckpointError listing the keys. The model's `pretrained_cfg` carries
    the weights' preprocessing and `provenance` says where they came from.
    """
    if img_size is not None:
        arch_kwargs["img_size"] = img_size
    if pretrained is None:
        model = build_vit(
            arch, num_classes=1000 if num_classes is None else num_classes, **arch_kwargs
        )
        model.provenance = {"weights": "random init", "preprocessing": model.pretrained_cfg}
        return model

    path, tag = resolve_weights(pretrained, arch)
    state_dict = read_checkpoint(path)
    ckpt_classes = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0
    model = build_vit(
        arch, num_classes=ckpt_classes if num_classes is None else num_classes, **arch_kwargs
    )
    model.load_state_dict(adapt_state_dict(state_dict, model), strict=False)
    model.pretrained_cfg = _pretrained_cfg(arch, tag, path, model.patch_embed.img_size)
    model.provenance = {
        "weights": tag or str(path),
        "file": str(path),
        "sha256": sha256_file(path),
        "format": path.suffix.lstrip("."),
        "preprocessing": model.pretrained_cfg,
    }
    return model


def export_to_timm(model: VisionTransformer) -> torch.nn.Module:
    """A timm `VisionTransformer` of the same architecture holding `model`'s weights.

    Plain ViTs (either pooling, with or without a class token) and distilled ones (timm's
    `deit_*_distilled_*`) have a timm twin; sin-cos, re-attention, Performer and conv-stem
    models do not.
    """
    import timm

    config = dict(model.arch_config)
    distilled = config.pop("distilled", False)
    extras = {k: config.pop(k) for k in ("attention", "performer_features", "conv_stem")}
    if (
        config.get("pos_embed", "learn") != "learn"
        or extras.get("attention", "softmax") != "softmax"
        or extras.get("conv_stem")
    ):
        raise ValueError(
            f"timm has no twin of this variant (pos_embed={config.get('pos_embed')!r}, "
            f"attention={extras.get('attention')!r}, conv_stem={extras.get('conv_stem')}); only "
            "learned position embeddings with softmax attention and the linear patch "
            "projection export to timm"
        )
    base = "deit_base_distilled_patch16_224" if distilled else "vit_base_patch16_224"
    twin = timm.create_model(base, pretrained=False, **config)
    twin.load_state_dict(model.state_dict())
    twin.pretrained_cfg = {**twin.pretrained_cfg, **model.pretrained_cfg}
    return twin.train(model.training)


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a timm-layout state dict {key: tensor}.

    Nothing in the file is ever run: pickles are read with `torch.load(weights_only=True)` and
    one that holds anything but tensors and containers is refused (`_code_message`), .npz
    without pickle. An empty, truncated or unreadable file is a CheckpointError too."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): a download or copy that did not finish; "
            "download it again"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return npz_to_state_dict({k: npz[k] for k in npz.files})
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError:  # weights_only refuses anything but tensors/containers
        # from None: torch's own message advises weights_only=False, which would run the code
        raise CheckpointError(_code_message(path)) from None
    except Exception as exc:  # torch, zipfile, safetensors and numpy each raise their own
        raise CheckpointError(
            f"cannot read checkpoint {path}: {_first_line(exc)}. The file may be truncated or "
            "not a weights file; download it again."
        ) from exc
    return _unwrap_state_dict(obj, path)


def _code_message(path: Path) -> str:
    """Why a pickle was refused and, for a file one trusts, how to convert it to safetensors
    (a format of plain tensors that cannot hold code)."""
    try:  # torch >= 2.5, zip-format files: the callables the pickle names
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # older torch, a legacy or damaged file
        names = []
    named = f" (it names {', '.join(names[:4])})" if names else ""
    target = path.with_suffix(".safetensors")
    return (
        f"refused to load {path}: it is a pickle that the safe loader (torch.load with "
        f"weights_only=True) does not accept{named}; unpickling it in full could run code from "
        "the file, so vitlib did not load it. If the file may be damaged, download it again. "
        "If you trust it (you made it, or it comes from its authors), convert it once to "
        "safetensors and pass that file instead:\n"
        f"  sd = torch.load({str(path)!r}, map_location='cpu', weights_only=False)  # runs its code\n"
        f"  safetensors.torch.save_file({{k: v.contiguous() for k, v in sd.items()}}, "
        f"{str(target)!r})"
    )


def _first_line(exc: BaseException) -> str:
    """'TypeName: first line of the message' (just the type when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].rstrip('.')}" if lines else type(exc).__name__


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    # Training checkpoints nest the weights; timm files are the state dict itself.
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict of named tensors; expected a "
            "timm ViT checkpoint (e.g. jx_vit_base_p16_224-80ecf9dd.pth)"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def npz_to_state_dict(arrays: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Google's JAX ViT checkpoint (official .npz naming) -> timm-layout state dict.

    Flax stores dense kernels as (in, out) and attention as (D, H, Dh); torch wants (out, in).
    """
    arrays = {k.removeprefix("opt/target/"): v for k, v in arrays.items()}
    missing = [
        k
        for k in ("embedding/kernel", "cls", "Transformer/posembed_input/pos_embedding")
        if k not in arrays
    ]
    if missing:
        raise CheckpointError(
            f"not a ViT .npz checkpoint: it lacks {missing}; expected the official naming "
            "(embedding/kernel, cls, Transformer/encoderblock_0/...)"
        )
    used: set[str] = set()

    def take(key: str) -> Tensor:
        used.add(key)
        return torch.from_numpy(np.asarray(arrays[key], dtype=np.float32).copy())

    def dense(prefix: str) -> tuple[Tensor, Tensor]:
        return take(f"{prefix}/kernel").T, take(f"{prefix}/bias")

    sd: dict[str, Tensor] = {
        "patch_embed.proj.weight": take("embedding/kernel").permute(3, 2, 0, 1),  # (D, C, P, P)
        "patch_embed.proj.bias": take("embedding/bias"),
        "cls_token": take("cls"),
        "pos_embed": take("Transformer/posembed_input/pos_embedding"),
        "norm.weight": take("Transformer/encoder_norm/scale"),
        "norm.bias": take("Transformer/encoder_norm/bias"),
    }
    if "head/kernel" in arrays:
        sd["head.weight"], sd["head.bias"] = dense("head")
    depth = sum(1 for k in arrays if k.endswith("/LayerNorm_0/scale"))
    for i in range(depth):
        src, dst = f"Transformer/encoderblock_{i}", f"blocks.{i}"
        mha = f"{src}/MultiHeadDotProductAttention_1"
        D = arrays[f"{mha}/query/kernel"].shape[0]
        # (D, H, Dh) -> (D, D) -> (out, in); q, k, v stacked along out as timm's qkv
        sd[f"{dst}.attn.qkv.weight"] = torch.cat(
            [take(f"{mha}/{n}/kernel").reshape(D, D).T for n in ("query", "key", "value")]
        )
        sd[f"{dst}.attn.qkv.bias"] = torch.cat(
            [take(f"{mha}/{n}/bias").reshape(D) for n in ("query", "key", "value")]
        )
        sd[f"{dst}.attn.proj.weight"] = take(f"{mha}/out/kernel").reshape(D, D).T  # (H, Dh, D)
        sd[f"{dst}.attn.proj.bias"] = take(f"{mha}/out/bias")
        for j, norm in ((0, "norm1"), (2, "norm2")):
            sd[f"{dst}.{norm}.weight"] = take(f"{src}/LayerNorm_{j}/scale")
            sd[f"{dst}.{norm}.bias"] = take(f"{src}/LayerNorm_{j}/bias")
        for j, fc in ((0, "fc1"), (1, "fc2")):
            sd[f"{dst}.mlp.{fc}.weight"], sd[f"{dst}.mlp.{fc}.bias"] = dense(
                f"{src}/MlpBlock_3/Dense_{j}"
            )
    unused = sorted(set(arrays) - used - set(JAX_IGNORED))
    if unused:
        raise CheckpointError(f"the .npz has arrays vitlib's ViT has no place for: {unused[:8]}")
    if any(k in arrays for k in JAX_IGNORED):
        log.info("dropped the ImageNet-21k pre_logits layer (not used when fine-tuning)")
    return {k: v.contiguous() for k, v in sd.items()}


def adapt_state_dict(
    state_dict: Mapping[str, Tensor], model: VisionTransformer
) -> dict[str, Tensor]:
    """Fit a timm-layout state dict to `model`: drop a head of another size (the model keeps
    its fresh head), resample the position embedding to the model's grid; raise
    CheckpointError on any other mismatch. Pure: neither argument is changed.
    """
    expected = model.state_dict()
    sd = dict(state_dict)
    for name in model.head_names:  # the class head, and a distilled model's second head
        head = sd.get(f"{name}.weight")
        if head is not None and head.shape != getattr(
            expected.get(f"{name}.weight"), "shape", None
        ):
            log.info(
                "checkpoint %s %s dropped; new head for %d classes",
                name,
                tuple(head.shape),
                model.num_classes,
            )
            for k in (f"{name}.weight", f"{name}.bias"):
                sd.pop(k, None)
    if "pos_embed" in sd and sd["pos_embed"].shape != expected["pos_embed"].shape:
        old = sd["pos_embed"]
        if (
            old.shape[-1] == expected["pos_embed"].shape[-1]
            and math.isqrt(old.shape[1] - model.num_prefix_tokens) ** 2
            == old.shape[1] - model.num_prefix_tokens
        ):
            sd["pos_embed"] = resample_pos_embed(
                old, model.grid_size, num_prefix_tokens=model.num_prefix_tokens
            )
    missing = sorted(k for k in set(expected) - set(sd) if not model.is_head_key(k))
    unexpected = sorted(set(sd) - set(expected))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(sd) & set(expected)
        if sd[k].shape != expected[k].shape
    )
    if missing or unexpected or mis_shaped:
        raise CheckpointError(
            "checkpoint does not fit this architecture (is it for another ViT size?)\n"
            + "".join(
                f"  {what} ({len(keys)}): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}\n"
                for what, keys in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("wrong shape", mis_shaped),
                )
                if keys
            )
        )
    return sd


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


STUDY_WEIGHTS_URL = (
    "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/"
    "jx_vit_base_p16_224-80ecf9dd.pth"
)


def resolve_weights(
    pretrained: str | Path, arch: str, *, download: bool = True
) -> tuple[Path | None, str | None]:
    """The one answer to "file or timm tag?": (local file, None) or (cached file, tag).

    A path (a weights suffix, a path separator, or an existing file) must be a file. A tag must
    be a timm pretrained tag of `arch`; its file is looked up in the Hugging Face (or torch
    hub) cache, and if absent downloaded (`download=True`) or, with `download=False`, only its
    host is probed (3 s), returning (None, tag) when it could be downloaded. Raises
    CheckpointError saying what to fetch or pass.
    """
    text = str(pretrained)
    path = Path(text).expanduser()
    if path.suffix.lower() in WEIGHT_SUFFIXES or os.sep in text or path.exists():
        if not path.is_file():
            raise CheckpointError(
                f"weights file {path} does not exist. For the study's ViT-B/16 download "
                f"{STUDY_WEIGHTS_URL}; pass a .pth/.bin/.safetensors (timm layout) or .npz "
                "(Google) file with --weights PATH (model.pretrained), or a timm tag such as "
                f"'{arch}.orig_in21k_ft_in1k'"
            )
        return path, None
    tag_arch = text.split(".")[0]
    if tag_arch != arch:
        raise CheckpointError(
            f"pretrained tag {text!r} is for {tag_arch!r}, but the model is {arch!r}"
        )
    cfg = _timm_cfg(text)
    if cfg is None or not (cfg.get("hf_hub_id") or cfg.get("url")):
        raise CheckpointError(
            f"{text!r} is not a timm pretrained tag with downloadable weights; list them with "
            "timm.list_pretrained('vit_*'), or pass a local weights file"
        )
    cached = _cached_file(cfg)
    if cached is not None:
        return cached, text
    if not download:
        _probe_host(text, cfg)
        return None, text
    return _download(text, cfg), text


def _cached_file(cfg: Mapping[str, Any]) -> Path | None:
    """A tag's weights file if the Hugging Face or torch hub cache already holds it."""
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(hub_id, cfg.get("hf_hub_filename") or "model.safetensors")
        return Path(found) if isinstance(found, str) else None
    local = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return local if local.is_file() else None


def _probe_host(tag: str, cfg: Mapping[str, Any]) -> None:
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    host = "huggingface.co" if hub_id else (url or "").split("/")[2]
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        raise CheckpointError(
            _offline_message(tag, cfg, f"{host} cannot be reached: {exc}")
        ) from None


def _offline_message(tag: str, cfg: Mapping[str, Any], why: str) -> str:
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    where = f"https://huggingface.co/{hub_id}" if hub_id else url
    return (
        f"the weights of {tag!r} are not in the local cache and could not be downloaded "
        f"({why}).\nWithout internet, fetch them on another machine from {where}"
        + (f" (the study's file: {url})" if hub_id and url else "")
        + ", copy the file here and pass its path instead of the tag, e.g. "
        "create_model(arch, pretrained='data/weights/jx_vit_base_p16_224-80ecf9dd.pth') or "
        "`python -m vitlib train --weights PATH` (model.pretrained)."
    )


def _timm_cfg(tag: str) -> dict[str, Any] | None:
    import timm.models

    try:
        cfg = timm.models.get_pretrained_cfg(tag, allow_unregistered=False)
    except RuntimeError:  # a known architecture with an unknown tag
        return None
    return None if cfg is None else cfg.to_dict()


def _download(tag: str, cfg: Mapping[str, Any]) -> Path:
    """Fetch a timm tag's weights into the Hugging Face (or torch hub) cache."""
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    try:
        if hub_id:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(hub_id, cfg.get("hf_hub_filename") or "model.safetensors"))
        return _download_url(url)
    except Exception as exc:  # offline, hub down, auth: all end the same way for the user
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no connection'}"
        raise CheckpointError(_offline_message(tag, cfg, why)) from exc


def _download_url(url: str) -> Path:
    dest = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    return dest


def _pretrained_cfg(arch: str, tag: str | None, path: Path, img_size: int) -> dict[str, Any]:
    """Preprocessing for weights: the tag's timm cfg, else the cfg whose file name matches
    (e.g. jx_vit_base_p16_224-80ecf9dd.pth), else JAX's 0.5/0.5 for .npz, else the arch's."""
    import timm

    cfg = _timm_cfg(tag) if tag else None
    if cfg is None and path.suffix != ".npz":
        for name in timm.list_pretrained(f"{arch}.*"):
            candidate = _timm_cfg(name) or {}
            if (
                Path(candidate.get("url") or "").name == path.name
                or candidate.get("file") == path.name
            ):
                cfg = candidate
                break
    if cfg is None and path.suffix != ".npz" and timm.is_model(arch):
        cfg = _timm_cfg(arch)
    out = {
        "mean": tuple(cfg["mean"]) if cfg else (0.5, 0.5, 0.5),
        "std": tuple(cfg["std"]) if cfg else (0.5, 0.5, 0.5),
        "crop_pct": cfg.get("crop_pct", 0.9) if cfg else 1.0,
        "interpolation": cfg.get("interpolation", "bicubic") if cfg else "bicubic",
        "input_size": (3, img_size, img_size),
    }
    if cfg:
        out["timm_tag"] = f"{arch}.{cfg.get('tag')}" if cfg.get("tag") else tag
    return out


def build_model(
    model_cfg: ModelConfig, *, seed: int = 0, keep_head: bool = False, **options: Any
) -> VisionTransformer:
    """The one model builder: `model_cfg` (arch, weights, classes, sizes) -> a vitlib ViT.

    Random parts are seeded by `seed` (the same model on every machine). With `keep_head` a
    pretrained checkpoint keeps its own head (the zero-shot ImageNet head) instead of a fresh
    `num_classes` one. `options` are ViT options on top (the variants': pos_embed, attention,
    distilled, ...)."""
    num_classes = None if keep_head and model_cfg.pretrained else model_cfg.num_classes
    torch.manual_seed(seed)
    return create_model(
        model_cfg.arch,
        pretrained=model_cfg.pretrained,
        num_classes=num_classes,
        img_size=model_cfg.img_size,
        **model_cfg.arch_kwargs,
        **options,
    )
