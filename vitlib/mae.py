"""The masked autoencoder of He et al. 2021 (arXiv 2111.06377) around a vitlib ViT.

Each image loses a random `mask_ratio` of its patches (0.75, as the paper), drawn per image;
the encoder (the ViT itself, unchanged) sees the visible patches only, which is where MAE's
speed comes from; a light decoder (its own width, depth and fixed 2D sin-cos position
embedding) gets the encoded visible tokens plus a shared mask token at every masked position
and predicts each patch's pixels; the loss is the mean squared error on the masked patches only,
against pixels normalised per patch (the paper's `norm_pix_loss`).

    mae = MaskedAutoencoder(encoder, decoder_dim=128, decoder_depth=2, decoder_heads=4)
    loss, pred, mask = mae(images)                # images (B, 3, H, W), normalised
    figure_data = reconstruct(mae, images)        # the paper's Fig. 2: masked, prediction, original

Training it is `vitlib.pretrain`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlib.config import PretrainConfig
from vitlib.model import Block, VisionTransformer, sincos_pos_embed_2d, using_mode

__all__ = [
    "MaskedAutoencoder",
    "Masking",
    "build_mae",
    "mae_loss",
    "normalised_targets",
    "patchify",
    "random_masking",
    "reconstruct",
    "unpatchify",
]


# --------------------------------------------------------------------------------------------
# Masking, patches and the loss
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Masking:
    """One draw of per-image random masks over L patches, L_keep of them visible."""

    keep: Tensor  # (B, L_keep) indices of the visible patches, in the shuffled order
    mask: Tensor  # (B, L) 1.0 where a patch is masked (removed), 0.0 where visible
    restore: Tensor  # (B, L) the inverse shuffle: gathering by it puts tokens in patch order


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Masking:
    """Mask `mask_ratio` of the patches of each image independently (the paper's per-sample
    shuffle: argsort of uniform noise; the first L_keep = int(L * (1 - ratio)) stay visible).
    Draws from torch's global RNG unless a `generator` is given."""
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    num_keep = int(num_patches * (1 - mask_ratio))
    if num_keep < 1:
        raise ValueError(
            f"mask_ratio {mask_ratio} leaves no visible patch of {num_patches}; lower it"
        )
    noise = torch.rand(batch, num_patches, generator=generator).to(device)  # (B, L)
    shuffle = noise.argsort(dim=1)  # (B, L): patch indices, visible ones first
    restore = shuffle.argsort(dim=1)  # (B, L)
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :num_keep] = 0
    mask = mask.gather(1, restore)  # (B, L) in patch order
    return Masking(keep=shuffle[:, :num_keep], mask=mask, restore=restore)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, G*P, G*P) -> (B, G*G, P*P*C), patches in row-major order, pixels (row, col, C)."""
    B, C, H, W = images.shape
    P = patch_size
    if H != W or H % P:
        raise ValueError(f"expected square images of a multiple of {P} px, got {H}x{W}")
    G = H // P
    x = images.reshape(B, C, G, P, G, P)
    x = torch.einsum("bchpwq->bhwpqc", x)  # (B, G, G, P, P, C)
    return x.reshape(B, G * G, P * P * C)


def unpatchify(patches: Tensor, patch_size: int, channels: int = 3) -> Tensor:
    """(B, G*G, P*P*C) -> (B, C, G*P, G*P): the inverse of `patchify`."""
    B, L, _ = patches.shape
    G, P = math.isqrt(L), patch_size
    if G * G != L:
        raise ValueError(f"{L} patches are not a square grid")
    x = patches.reshape(B, G, G, P, P, channels)
    x = torch.einsum("bhwpqc->bchpwq", x)  # (B, C, G, P, G, P)
    return x.reshape(B, channels, G * P, G * P)


def normalised_targets(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Each patch's pixels (B, L, P*P*C) minus their mean, over sqrt(variance + eps)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)  # unbiased, as the paper's code
    return (patches - mean) / (var + eps) ** 0.5


def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, *, norm_pix: bool = True) -> Tensor:
    """Mean squared error per patch (pred, target (B, L, P*P*C)), averaged over the masked
    patches only (mask (B, L), 1 = masked); targets normalised per patch with `norm_pix`."""
    if norm_pix:
        target = normalised_targets(target)
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, L)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class MaskedAutoencoder(nn.Module):
    """A vitlib ViT as MAE's encoder, with MAE's light decoder (the paper's Fig. 1).

    `encoder` is used as it is (its patch embedding, position embedding, class token, blocks
    and final norm; its head is not used), so its state dict stays a plain ViT's."""

    def __init__(
        self,
        encoder: VisionTransformer,
        *,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
    ):
        super().__init__()
        if decoder_dim % decoder_heads or decoder_dim % 4:
            raise ValueError(
                f"decoder_dim {decoder_dim} must be divisible by decoder_heads "
                f"({decoder_heads}) and by 4 (the sin-cos position embedding)"
            )
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = encoder.patch_embed.patch_size
        self.num_patches = encoder.patch_embed.num_patches
        prefix = encoder.num_prefix_tokens
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = sincos_pos_embed_2d(encoder.grid_size, decoder_dim)  # (G*G, Dd)
        pos = F.pad(pos, (0, 0, prefix, 0))[None]  # (1, prefix + G*G, Dd), prefix at 0
        self.register_buffer("decoder_pos_embed", pos, persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, num_heads=decoder_heads, mlp_ratio=4.0, qkv_bias=True)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)  # as the paper's code
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {"mask_token"}

    def mask(self, batch: int, device: torch.device | str | None = None) -> Masking:
        return random_masking(batch, self.num_patches, self.mask_ratio, device=device)

    def forward_encoder(self, images: Tensor, masking: Masking) -> Tensor:
        """Images (B, 3, H, W) -> encoded prefix and visible tokens (B, prefix + L_keep, D)."""
        enc = self.encoder
        prefix = enc.num_prefix_tokens
        if enc.patch_embed.stem is not None:
            # NOTE(paper): MAE's patch embedding is per patch; a conv stem's 31 px receptive
            # field would carry masked pixels into visible tokens, so masked patches are blanked
            # (set to the normalised mean, 0) before the stem, which then sees the whole image.
            G, P = enc.grid_size, self.patch_size
            hidden = masking.mask.reshape(-1, 1, G, G).repeat_interleave(P, 2)
            images = images * (1 - hidden.repeat_interleave(P, 3))  # (B, 3, H, W)
        x = enc.patch_embed(images) + enc.pos_embed[:, prefix:]  # (B, L, D)
        keep = masking.keep[..., None].expand(-1, -1, x.shape[-1])  # (B, L_keep, D)
        x = x.gather(1, keep)  # (B, L_keep, D): the encoder sees these only
        tokens = [t for t in (enc.cls_token, enc.dist_token) if t is not None]
        if tokens:
            first = torch.cat(tokens, dim=1) + enc.pos_embed[:, :prefix]  # (1, prefix, D)
            x = torch.cat([first.expand(x.shape[0], -1, -1), x], dim=1)
        for block in enc.blocks:
            x, _ = block(x)
        return enc.norm(x)

    def forward_decoder(self, latent: Tensor, masking: Masking) -> Tensor:
        """Encoded tokens (B, prefix + L_keep, D) -> pixel predictions (B, L, P*P*3)."""
        prefix = self.encoder.num_prefix_tokens
        x = self.decoder_embed(latent)  # (B, prefix + L_keep, Dd)
        B, L = masking.mask.shape
        filler = self.mask_token.expand(B, L - masking.keep.shape[1], -1)  # (B, L_masked, Dd)
        x_ = torch.cat([x[:, prefix:], filler], dim=1)  # (B, L, Dd), shuffled order
        x_ = x_.gather(1, masking.restore[..., None].expand(-1, -1, x.shape[-1]))  # patch order
        x = torch.cat([x[:, :prefix], x_], dim=1) + self.decoder_pos_embed  # (B, prefix + L, Dd)
        for block in self.decoder_blocks:
            x, _ = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, prefix:]  # (B, L, P*P*3)

    def forward(
        self, images: Tensor, masking: Masking | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Images (B, 3, H, W) -> (loss, predictions (B, L, P*P*3), mask (B, L))."""
        masking = masking or self.mask(images.shape[0], images.device)
        pred = self.forward_decoder(self.forward_encoder(images, masking), masking)
        target = patchify(images, self.patch_size)
        loss = mae_loss(pred.float(), target.float(), masking.mask, norm_pix=self.norm_pix_loss)
        return loss, pred, masking.mask


def build_mae(encoder: VisionTransformer, pc: PretrainConfig) -> MaskedAutoencoder:
    """The MAE of `pc`'s decoder and mask settings around `encoder`."""
    return MaskedAutoencoder(
        encoder,
        decoder_dim=pc.decoder_dim,
        decoder_depth=pc.decoder_depth,
        decoder_heads=pc.decoder_heads,
        mask_ratio=pc.mask_ratio,
        norm_pix_loss=pc.norm_pix_loss,
    )


@torch.no_grad()
def reconstruct(mae: MaskedAutoencoder, images: Tensor, *, seed: int = 0) -> dict[str, Tensor]:
    """The paper's Fig. 2 for normalised images (B, 3, H, W): "masked" (masked patches 0),
    "prediction" (the decoder's output, un-normalised with each patch's own mean and spread,
    visible patches pasted back) and "original", each (B, 3, H, W) in the input's scale; and
    the "loss" on the masked patches."""
    generator = torch.Generator().manual_seed(seed)
    masking = random_masking(
        images.shape[0], mae.num_patches, mae.mask_ratio, device=images.device, generator=generator
    )
    with using_mode(mae, training=False):
        loss, pred, mask = mae(images, masking)
    target = patchify(images, mae.patch_size)
    if mae.norm_pix_loss:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    m = mask[..., None]  # (B, L, 1)
    return {
        "masked": unpatchify(target * (1 - m), mae.patch_size),
        "prediction": unpatchify(pred * m + target * (1 - m), mae.patch_size),
        "original": images,
        "loss": loss,
    }
