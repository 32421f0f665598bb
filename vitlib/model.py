"""The Vision Transformer of Dosovitskiy et al. 2020 (arXiv 2010.11929), written from scratch.

Module and attribute names follow timm's `VisionTransformer` (PatchEmbed / Attention / Mlp /
Block), so `state_dict()` keys and shapes are exactly timm's and published checkpoints load
with no mapping.

Shape letters used throughout vitlib:
    B   batch size
    C   image channels (3)
    P   patch size in pixels
    G   patches per side (img_size // P)
    N   tokens: 1 class token + G*G patches
    D   embedding width (embed_dim)
    H   attention heads
    Dh  width of one head (D // H)
    K   classes
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlib.attention import ATTENTION_KINDS, build_attention

__all__ = [
    "ARCHITECTURES",
    "HEAD_NAMES",
    "VisionTransformer",
    "build_vit",
    "resample_pos_embed",
    "sincos_pos_embed_2d",
    "using_mode",
]

# Named sizes, as in the paper's Table 1 and timm's model names (ViT-Ti/S from DeiT).
ARCHITECTURES: dict[str, dict[str, int]] = {
    "vit_tiny_patch16_224": dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_tiny_patch16_384": dict(img_size=384, patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": dict(
        img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6
    ),
    "vit_small_patch32_224": dict(
        img_size=224, patch_size=32, embed_dim=384, depth=12, num_heads=6
    ),
    "vit_base_patch16_224": dict(
        img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12
    ),
    "vit_base_patch16_384": dict(
        img_size=384, patch_size=16, embed_dim=768, depth=12, num_heads=12
    ),
    "vit_base_patch32_224": dict(
        img_size=224, patch_size=32, embed_dim=768, depth=12, num_heads=12
    ),
    "vit_large_patch16_224": dict(
        img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16
    ),
    "vit_large_patch32_384": dict(
        img_size=384, patch_size=32, embed_dim=1024, depth=24, num_heads=16
    ),
    "vit_huge_patch14_224": dict(
        img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16
    ),
}
# The classifier layers' names (timm's): the class-token head, and DeiT's distillation head.
HEAD_NAMES = ("head", "head_dist")
# A custom size starts from this and takes any keyword (img_size, patch_size, embed_dim, ...).
CUSTOM_ARCH = "vit_custom"
CUSTOM_DEFAULTS = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3)


class PatchEmbed(nn.Module):
    """Image to patch tokens with one strided convolution (= the paper's linear projection E).

    With `conv_stem=k` (k >= 1), k 3x3 stride-2 convolutions (BatchNorm, ReLU; widths D/2^k ..
    D/2) come first and `proj` then covers patch_size / 2^k of their output: the same G x G
    token grid from a small convolutional network, as Xiao et al. 2021 (arXiv 2106.14881).
    """

    def __init__(
        self, *, img_size: int, patch_size: int, in_chans: int, embed_dim: int, conv_stem: int = 0
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if conv_stem < 0 or patch_size % 2**conv_stem:
            raise ValueError(
                f"conv_stem={conv_stem} needs a patch_size divisible by 2**{conv_stem}, got "
                f"{patch_size}; use fewer stem layers (0 = the paper's linear projection)"
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        # NOTE(paper): conv_stem > 0 is the paper's hybrid (section 3.1, a CNN feature map as
        # the patch input) in small, not its linear projection; off by default, and such a
        # model has no timm twin. The stem's widths follow Xiao et al. (doubling to D/2).
        layers: list[nn.Module] = []
        width = in_chans
        for i in range(conv_stem):
            out = max(8, embed_dim >> (conv_stem - i))
            layers += [
                nn.Conv2d(width, out, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            width = out
        self.stem = nn.Sequential(*layers) if layers else None
        step = patch_size >> conv_stem
        self.proj = nn.Conv2d(width, embed_dim, kernel_size=step, stride=step)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H_img, W_img) -> (B, G*G, D)."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"expected images of {self.img_size}x{self.img_size} px, got "
                f"{tuple(x.shape[-2:])}; resize them or build the model with img_size="
                f"{x.shape[-1]}"
            )
        if self.stem is not None:
            x = self.stem(x)  # (B, D/2, H_img / 2^k, W_img / 2^k)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, G, G) -> (B, G*G, D)


class Mlp(nn.Module):
    """Two linear layers with a GELU between (the paper's eq. 3)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm encoder block: x + MSA(LN(x)), then x + MLP(LN(x)) (the paper's eq. 2-3)."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        attention: str = "softmax",
        performer_features: int = 0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = build_attention(
            attention,
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            performer_features=performer_features,
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        y, attn = self.attn(self.norm1(x), return_attention)
        x = x + y
        del y  # free it before the MLP: a smaller peak, and allocations reused as in timm
        x = x + self.mlp(self.norm2(x))
        return x, attn


class VisionTransformer(nn.Module):
    """ViT: patch embedding, class token, learned 1D position embedding, encoder, head.

    The defaults are the paper's ViT, with timm's state dict. Keyword options build the
    variants the study names as next steps, in the same model (see `vitlib.variants`):

    - `pos_embed="sincos"`: fixed 2D sin-cos position embedding (Simple ViT, arXiv
      2205.01580), a buffer, not a parameter; prefix tokens get position zero.
    - `class_token=False` with `global_pool="avg"`: no class token, pool the patches.
    - `distilled=True`: DeiT's distillation token after the class token, with its own head
      `head_dist` (arXiv 2012.12877); `forward` averages the two heads, `forward_distilled`
      returns both. Its state dict is timm's `deit_*_distilled_*`.
    - `attention="reattention"` (DeepViT) or `"performer"` (FAVOR+ with `performer_features`
      random features per head); see `vitlib.attention`.

    `pretrained_cfg` holds the preprocessing that goes with the weights (mean, std,
    input_size, crop_pct, interpolation); `vitlib.create_model` fills it from the checkpoint.
    """

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        pos_embed: str = "learn",
        distilled: bool = False,
        attention: str = "softmax",
        performer_features: int = 64,
        conv_stem: int = 0,
    ):
        super().__init__()
        # The constructor's arguments: enough to rebuild this model (and its timm twin).
        self.arch_config = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool=global_pool,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            class_token=class_token,
            pos_embed=pos_embed,
            distilled=distilled,
            attention=attention,
            performer_features=performer_features,
            conv_stem=conv_stem,
        )
        _check_options(global_pool, class_token, pos_embed, distilled, attention)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.distilled = distilled
        self.num_prefix_tokens = int(class_token) + int(distilled)
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            conv_stem=conv_stem,
        )
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self._add_position_embedding(pos_embed, self.num_prefix_tokens + num_patches)
        block = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, attention=attention)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads=num_heads, performer_features=performer_features, **block)
            for _ in range(depth)
        )
        self._add_norms_and_heads(num_classes)
        self.pretrained_cfg: dict[str, Any] = default_pretrained_cfg(img_size)
        self._init_weights()

    def _add_position_embedding(self, kind: str, num_tokens: int) -> None:
        """A learned (1, N, D) parameter (the paper's), or the fixed 2D sin-cos buffer."""
        if kind == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, self.embed_dim))  # (1, N, D)
        else:
            fixed = sincos_pos_embed_2d(self.patch_embed.grid_size, self.embed_dim)  # (G*G, D)
            fixed = F.pad(fixed, (0, 0, self.num_prefix_tokens, 0))[None]  # (1, N, D)
            self.register_buffer("pos_embed", fixed, persistent=False)

    def _add_norms_and_heads(self, num_classes: int) -> None:
        """The final norm and the D x K head(s). timm's layout: the norm sits before pooling
        for the class token, after it (as `fc_norm`) for average pooling."""
        dim = self.embed_dim
        if self.global_pool == "token":
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.fc_norm = nn.Identity()
        else:
            self.norm = nn.Identity()
            self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        for name in self.head_names:
            setattr(self, name, nn.Linear(dim, num_classes) if num_classes else nn.Identity())

    def _init_weights(self) -> None:
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for head in self.heads():
            nn.init.zeros_(head.weight)  # as the paper's fine-tuning: a zero-init head

    @property
    def head_names(self) -> tuple[str, ...]:
        """The classifier layers' attribute names: ("head",), or ("head", "head_dist") for a
        distilled model. The one list training, freezing and checkpoint loading go by."""
        return HEAD_NAMES if self.distilled else HEAD_NAMES[:1]

    def is_head_key(self, key: str) -> bool:
        """Whether a state-dict key or parameter name belongs to a classifier layer."""
        return key.split(".", 1)[0] in self.head_names

    def heads(self) -> list[nn.Linear]:
        """The classifier layers: `head`, and `head_dist` for a distilled model."""
        return [m for m in (getattr(self, n) for n in self.head_names) if isinstance(m, nn.Linear)]

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay besides the 1-D ones (biases, norms): the
        position embedding and the prefix tokens, as in timm and DeiT."""
        return {"pos_embed", "cls_token", "dist_token"}

    @property
    def grid_size(self) -> int:
        return self.patch_embed.grid_size

    def forward_features(
        self, x: Tensor, return_attention: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        """(B, C, H_img, W_img) -> normalised tokens (B, N, D), and per-layer attention."""
        x = self.patch_embed(x)  # (B, G*G, D)
        prefix = [
            t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token) if t is not None
        ]
        x = torch.cat([*prefix, x], dim=1) + self.pos_embed  # (B, N, D)
        attentions = []
        for block in self.blocks:
            x, attn = block(x, return_attention)
            if return_attention:
                attentions.append(attn)
        return self.norm(x), attentions

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens (B, N, D) -> logits (B, K), or the pooled features (B, D) if `pre_logits`.

        A distilled model averages its two heads (DeiT's inference), and its pooled features
        are the mean of the class and distillation tokens (as timm's)."""
        if self.distilled:
            cls, dist = self.fc_norm(x[:, 0]), self.fc_norm(x[:, 1])
            if pre_logits:
                return (cls + dist) / 2
            return (self.head(cls) + self.head_dist(dist)) / 2
        if self.global_pool == "token":
            x = x[:, 0]
        else:
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(
        self, x: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Images (B, C, H_img, W_img) -> logits (B, K).

        With `return_attention`, also every layer's attention map, a list of `depth` tensors
        (B, H, N, N) (softmax rows sum to 1); they stay in the autograd graph.
        """
        tokens, attentions = self.forward_features(x, return_attention)
        logits = self.forward_head(tokens)
        return (logits, attentions) if return_attention else logits

    def forward_distilled(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, C, H_img, W_img) -> (class-head logits, distillation-head logits), each
        (B, K): what DeiT's hard-distillation loss trains. Distilled models only."""
        if not self.distilled:
            raise ValueError("forward_distilled needs a model built with distilled=True")
        tokens = self.forward_features(x)[0]
        return self.head(self.fc_norm(tokens[:, 0])), self.head_dist(self.fc_norm(tokens[:, 1]))

    @torch.no_grad()
    def extract_features(self, x: Tensor) -> Tensor:
        """Images (B, C, H_img, W_img) -> pooled features (B, D), no grad."""
        return self.forward_head(self.forward_features(x)[0], pre_logits=True)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head(s) with fresh zero-initialised D x K layers (the paper's fine-tune)."""
        self.num_classes = self.arch_config["num_classes"] = num_classes
        for name in self.head_names:
            head = nn.Linear(self.embed_dim, num_classes) if num_classes else nn.Identity()
            if num_classes:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
            setattr(self, name, head)

    def freeze_backbone(self) -> None:
        """Make every parameter but the head's untrainable (the study's frozen baseline)."""
        for name, p in self.named_parameters():
            p.requires_grad = self.is_head_key(name)

    def unfreeze(self) -> None:
        """Make every parameter trainable (full fine-tune)."""
        for p in self.parameters():
            p.requires_grad = True


def _check_options(
    global_pool: str, class_token: bool, pos_embed: str, distilled: bool, attention: str
) -> None:
    if global_pool not in ("token", "avg"):
        raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
    if global_pool == "token" and not class_token:
        raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg'")
    if distilled and (global_pool != "token" or not class_token):
        raise ValueError("distilled=True needs the class token and global_pool='token' (DeiT)")
    if pos_embed not in ("learn", "sincos"):
        raise ValueError(f"pos_embed must be 'learn' or 'sincos', got {pos_embed!r}")
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")


def default_pretrained_cfg(img_size: int) -> dict[str, Any]:
    """Preprocessing for random-init models: the JAX ViT's 0.5/0.5 normalisation, no crop."""
    return dict(
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=(3, img_size, img_size),
        crop_pct=1.0,
        interpolation="bicubic",
    )


def build_vit(arch: str, *, num_classes: int = 1000, **overrides: Any) -> VisionTransformer:
    """A random-init ViT of a named architecture, or of `vit_custom` with any sizes.

    Named architectures accept overrides too (e.g. img_size=384); unknown names are errors.
    """
    if arch == CUSTOM_ARCH:
        kwargs = {**CUSTOM_DEFAULTS, **overrides}
    elif arch in ARCHITECTURES:
        kwargs = {**ARCHITECTURES[arch], **overrides}
    else:
        raise ValueError(
            f"unknown architecture {arch!r}; expected {CUSTOM_ARCH!r} (with sizes) or one of "
            f"{sorted(ARCHITECTURES)}"
        )
    return VisionTransformer(num_classes=num_classes, **kwargs)


def resample_pos_embed(pos_embed: Tensor, new_grid: int, *, num_prefix_tokens: int = 1) -> Tensor:
    """Resample a (1, prefix + G*G, D) position embedding to a new_grid x new_grid patch grid.

    Bicubic interpolation with antialiasing of the patch part, class token kept (the paper's
    section 3.2, "fine-tuning and higher resolution"; the same result as timm's).
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_grid = math.isqrt(grid.shape[1])
    if old_grid**2 != grid.shape[1]:
        raise ValueError(f"position embedding has {grid.shape[1]} patches, not a square grid")
    if old_grid == new_grid:
        return pos_embed
    dtype = pos_embed.dtype
    D = grid.shape[-1]
    grid = grid.float().reshape(1, old_grid, old_grid, D).permute(0, 3, 1, 2)  # (1, D, G, G)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, D).to(dtype)
    return torch.cat([prefix, grid], dim=1)


def sincos_pos_embed_2d(grid: int, dim: int, *, temperature: float = 10_000.0) -> Tensor:
    """Fixed 2D sine-cosine position embedding, (G*G, D) for a G x G patch grid.

    Per axis, a quarter of D each for sin(p * w_k) and cos(p * w_k) with
    w_k = temperature^(-k / (D/4)), as in Simple ViT (arXiv 2205.01580) and MAE; rows in
    row-major patch order, x then y.
    """
    if dim % 4:
        raise ValueError(f"sin-cos embedding needs a width divisible by 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    omega = temperature ** -(torch.arange(dim // 4) / (dim // 4))  # (D/4,)
    y = y.flatten()[:, None] * omega[None, :]  # (G*G, D/4)
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)  # (G*G, D)


@contextlib.contextmanager
def using_mode(module: nn.Module, *, training: bool) -> Iterator[nn.Module]:
    """Put `module` in training or eval mode for the block, and back as it was after (even on
    an error): for evaluating, analysing or measuring a model that may be mid-training."""
    was_training = module.training
    module.train(training)
    try:
        yield module
    finally:
        module.train(was_training)
