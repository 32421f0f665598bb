"""Self-attention for vitlib's ViT: softmax (the paper's), DeepViT re-attention, Performer FAVOR+.

All three take tokens (B, N, D) and return (B, N, D) plus, when asked, the attention map that
was applied to the values, (B, H, N, N). They share the `qkv` / `proj` layers (timm's names),
so the plain ViT's state dict is timm's and a variant adds only its own extra weights.

- `Attention`: softmax(Q K^T / sqrt(Dh)) V (arXiv 2010.11929, eq. 5-8); fused SDPA when the map
  is not asked for.
- `ReAttention`: DeepViT (arXiv 2103.11886, eq. 3): Norm(Theta^T softmax(Q K^T / sqrt(Dh))) V,
  a learnable H x H matrix Theta mixing the heads' maps, then BatchNorm over the heads.
- `PerformerAttention`: FAVOR+ (arXiv 2009.14794, section 2): positive orthogonal random features
  phi with E[phi(q)^T phi(k)] = exp(q^T k / sqrt(Dh)), so softmax attention becomes
  D^-1 (phi(Q) (phi(K)^T V)) at O(N M Dh) time and O(N M) memory for M features, not O(N^2).

Shape letters as in `vitlib.model`; M is the number of random features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ATTENTION_KINDS",
    "Attention",
    "PerformerAttention",
    "ReAttention",
    "build_attention",
    "favor_features",
    "orthogonal_gaussian",
]

ATTENTION_KINDS = ("softmax", "reattention", "performer")


class Attention(nn.Module):
    """Multi-head self-attention; fused SDPA unless the probabilities are asked for."""

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, D) -> q, k, v, each (B, H, N, Dh)."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def merge_heads(self, out: Tensor) -> Tensor:
        """(B, H, N, Dh) -> projected (B, N, D)."""
        B, H, N, Dh = out.shape
        return self.proj(out.transpose(1, 2).reshape(B, N, H * Dh))

    def softmax_map(self, q: Tensor, k: Tensor) -> Tensor:
        """softmax(Q K^T / sqrt(Dh)), (B, H, N, N)."""
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """(B, N, D) -> (B, N, D), and softmax(QK^T/sqrt(Dh)) as (B, H, N, N) when asked."""
        q, k, v = self.split_heads(x)
        if return_attention:
            attn = self.softmax_map(q, k)
            return self.merge_heads(attn @ v), attn
        return self.merge_heads(F.scaled_dot_product_attention(q, k, v)), None


class ReAttention(Attention):
    """DeepViT's re-attention: the heads' softmax maps mixed by a learnable H x H matrix.

    `reattn_weight` is Theta (H_in, H_out); `reattn_norm` is a BatchNorm over the H mixed maps.
    The returned map (what multiplies V) is no longer row-stochastic.
    """

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = True):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        # NOTE(paper): Theta starts as the identity (DeepViT's code draws it at random), so a
        # fresh re-attention layer computes plain attention up to the BatchNorm.
        self.reattn_weight = nn.Parameter(torch.eye(num_heads))
        self.reattn_norm = nn.BatchNorm2d(num_heads)

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        q, k, v = self.split_heads(x)
        attn = self.softmax_map(q, k)  # (B, H, N, N)
        attn = torch.einsum("bhij,hg->bgij", attn, self.reattn_weight)  # mix along heads
        attn = self.reattn_norm(attn)
        return self.merge_heads(attn @ v), attn if return_attention else None


def orthogonal_gaussian(
    num_features: int, dim: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """(M, Dh) random projection: blocks of orthogonal rows, each row rescaled to the norm of
    a Gaussian vector, so rows are marginally N(0, I) but exactly orthogonal within a block
    (FAVOR+'s orthogonal random features, which lower the estimator's variance)."""
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator)
        q, r = torch.linalg.qr(gaussian)
        # QR's Q is uniform on the orthogonal group only with R's diagonal made positive
        # (Mezzadri 2007); without it each row leans towards minus its axis, which biases
        # the estimator.
        q = q * torch.sign(torch.diagonal(r))
        blocks.append(q.T)  # rows orthonormal
    rows = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator).norm(dim=1, keepdim=True)
    return rows * norms


def favor_features(x: Tensor, projection: Tensor, *, is_query: bool) -> Tensor:
    """Positive random features phi(x) = exp(w^T x - |x|^2 / 2) / sqrt(M), (..., N, M).

    `x` (..., N, Dh) must already carry the Dh^-1/4 scaling, so that
    E[phi(q)^T phi(k)] = exp(q^T k / sqrt(Dh)). The largest exponent is subtracted before exp
    for stability: per row for queries, over all rows for keys; either constant cancels in
    the attention's normalisation.
    """
    proj = x @ projection.T  # (..., N, M)
    sq = x.pow(2).sum(dim=-1, keepdim=True) / 2  # (..., N, 1)
    if is_query:
        stabiliser = proj.amax(dim=-1, keepdim=True)
    else:
        stabiliser = proj.amax(dim=(-2, -1), keepdim=True)
    # The 1e-6 goes in before the 1/sqrt(M), as in the paper's code, so its bias does not grow
    # with M.
    return (torch.exp(proj - sq - stabiliser.detach()) + 1e-6) / math.sqrt(projection.shape[0])


class PerformerAttention(Attention):
    """FAVOR+ linear attention with `num_features` positive orthogonal random features per head.

    The projection (M, Dh) is drawn once at construction (torch's global RNG) and kept as a
    buffer, so a saved model computes the same function when loaded.
    """

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = True, num_features: int):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        if num_features < 1:
            raise ValueError(f"performer needs at least 1 random feature, got {num_features}")
        # NOTE(paper): the features are drawn once, not redrawn during training as the paper
        # suggests; fine for short runs, and inference stays deterministic.
        self.register_buffer("projection", orthogonal_gaussian(num_features, self.head_dim))

    def feature_maps(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """q, k (B, H, N, Dh) -> phi(q), phi(k), each (B, H, N, M)."""
        scale = self.head_dim**-0.25
        q_prime = favor_features(q * scale, self.projection, is_query=True)
        k_prime = favor_features(k * scale, self.projection, is_query=False)
        return q_prime, k_prime

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        q, k, v = self.split_heads(x)
        q_prime, k_prime = self.feature_maps(q, k)
        kv = k_prime.transpose(-2, -1) @ v  # (B, H, M, Dh): the linear-time trick
        normaliser = q_prime @ k_prime.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, H, N, 1)
        out = (q_prime @ kv) / normaliser
        attn = None
        if return_attention:  # the implicit N x N map, materialised only when asked
            attn = q_prime @ k_prime.transpose(-2, -1)
            attn = attn / attn.sum(dim=-1, keepdim=True)
        return self.merge_heads(out), attn


def build_attention(
    kind: str, dim: int, *, num_heads: int, qkv_bias: bool, performer_features: int
) -> Attention:
    """The attention layer of one kind: "softmax", "reattention" or "performer"."""
    if kind == "softmax":
        return Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
    if kind == "reattention":
        return ReAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
    if kind == "performer":
        return PerformerAttention(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, num_features=performer_features
        )
    raise ValueError(f"unknown attention {kind!r}; expected one of {ATTENTION_KINDS}")
