"""Looking inside a ViT: the numbers behind the study's and the paper's inspection figures.

Everything here returns data (tensors on the CPU) and draws nothing; `vitlib.viz` draws it.

- Position-embedding similarity: the paper's Figure 7 (centre), the study's Figure 3.
- Attention maps and attention rollout (Abnar & Zuidema 2020, arXiv 2005.00928), and a
  class-specific, gradient-weighted rollout (after Chefer, Gur & Wolf 2021, arXiv 2103.15679):
  the study's Figures 5-6.
- Mean attention distance per head and depth: the paper's Figure 7 (right).
- Principal components of the patch-embedding filters: the paper's Figure 7 (left).
- `summarise_model` / `compare_summaries`: the three model-level views together, and what
  changed between two models (before/after fine-tuning).

Attention comes from the model itself: `model(x, return_attention=True)` returns logits and a
list of `depth` tensors (B, H, N, N) that stay in the autograd graph; only that call computes
the probabilities explicitly, the ordinary forward keeps fused attention. Shape letters are
those of `vitlib.model` (B, C, P, G, N, D, H, K), plus L for layers (= depth).

A query is named as `"cls"` (the class token), a token index (0 is the class token, patches
follow in row-major order) or a `(row, col)` patch position.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vitlib.model import using_mode

__all__ = [
    "Query",
    "attention_distance",
    "attention_maps",
    "attention_rollout",
    "compare_summaries",
    "filter_pca",
    "get_attention",
    "get_attention_gradients",
    "gradient_rollout",
    "model_attention_distance",
    "patch_distances",
    "position_similarity",
    "relevance_maps",
    "rollout_map",
    "summarise_model",
]

# Tokens in front of the patches: the paper's ViT has one, the class token. The default of every
# function below that takes `num_prefix_tokens`; functions given the model read its own
# (`model.num_prefix_tokens`: 0 without a class token, 2 for DeiT's distilled ViT).
NUM_PREFIX_TOKENS = 1

# A query token: "cls", a token index, or a patch (row, col) as a tuple or a list (papermill
# and YAML give lists).
Query = int | str | tuple[int, int] | list[int]


# ---------------------------------------------------------------------------- helpers


def _grid_of(num_patches: int, num_prefix_tokens: int | None = None) -> int:
    """The side G of a square grid of `num_patches` patches; `num_prefix_tokens`, if given, is
    named in the error (the patches being the tokens after them)."""
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        after = "" if num_prefix_tokens is None else f" (tokens after {num_prefix_tokens} prefix)"
        raise ValueError(
            f"{num_patches} patches{after} do not form a square grid; if the model has another "
            "number of class/distillation tokens, pass num_prefix_tokens=model.num_prefix_tokens"
        )
    return grid


def _token_index(query: Query, grid: int, num_prefix_tokens: int) -> int:
    """`"cls"`, a token index or a (row, col) patch (tuple or list) -> the token index."""
    if isinstance(query, str):
        if query != "cls":
            raise ValueError(f"query must be 'cls', a token index or (row, col); got {query!r}")
        if num_prefix_tokens == 0:
            raise ValueError("this model has no class token; query a patch (row, col) instead")
        return 0
    if isinstance(query, tuple | list):
        if len(query) != 2:
            raise ValueError(f"a patch query is (row, col); got {query!r}")
        row, col = (int(v) for v in query)
        if not (0 <= row < grid and 0 <= col < grid):
            raise ValueError(f"patch {query} is outside the {grid}x{grid} grid")
        return num_prefix_tokens + row * grid + col
    index = int(query)
    last = num_prefix_tokens + grid * grid - 1
    if not 0 <= index <= last:
        raise ValueError(f"token index {index} is outside 0..{last}")
    return index


def _prefix_tokens(model: nn.Module) -> int:
    """The model's tokens in front of the patches (vitlib's and timm's ViTs say)."""
    return getattr(model, "num_prefix_tokens", NUM_PREFIX_TOKENS)


def _stack(attentions: Sequence[Tensor] | Tensor) -> Tensor:
    """A list of L tensors (B, H, N, N), or one (L, B, H, N, N) -> (L, B, H, N, N)."""
    stacked = attentions if isinstance(attentions, Tensor) else torch.stack(list(attentions))
    if stacked.dim() != 5 or stacked.shape[-1] != stacked.shape[-2]:
        raise ValueError(
            f"expected attention (L, B, H, N, N) or a list of (B, H, N, N), got {tuple(stacked.shape)}"
        )
    return stacked


def _batched(images: Tensor) -> Tensor:
    """(C, H, W) or (B, C, H, W) -> (B, C, H, W)."""
    if images.dim() == 3:
        return images[None]
    if images.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W) or (C, H, W), got {tuple(images.shape)}")
    return images


def _targets(target: int | Sequence[int] | Tensor | None, logits: Tensor) -> Tensor:
    """The class to explain per image, (B,): given, or the predicted one."""
    if target is None:
        return logits.argmax(dim=-1)
    target = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    return target.expand(logits.shape[0]) if target.numel() == 1 else target


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------ position embeddings


def position_similarity(pos_embed: Tensor, *, num_prefix_tokens: int = NUM_PREFIX_TOKENS) -> Tensor:
    """Cosine similarity of every patch's position embedding with every other's.

    `pos_embed` is (1, N, D) or (N, D) (e.g. `model.pos_embed`); the first `num_prefix_tokens`
    rows (the class token) are left out; pass 0 for a patch-only embedding such as
    `sincos_pos_embed_2d`. Returns (G*G, G*G), patches in row-major order: row i reshaped to
    (G, G) is the similarity map of patch i, as one small panel of the paper's Figure 7.
    """
    emb = pos_embed.detach().float().cpu()
    emb = emb.reshape(-1, emb.shape[-1])[num_prefix_tokens:]  # (G*G, D)
    _grid_of(emb.shape[0], num_prefix_tokens)
    emb = torch.nn.functional.normalize(emb, dim=-1)
    return emb @ emb.T  # (G*G, G*G)


# ---------------------------------------------------------------------- attention


def get_attention(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """Logits (B, K) and every layer's attention (L, B, H, N, N) for images, without gradients.

    `images` are model inputs, (B, C, H_img, W_img) or one (C, H_img, W_img), moved to the
    model's device; results come back on the CPU. The model is evaluated in eval mode and
    left in the mode it was in.
    """
    images = _batched(images).to(_device_of(model))
    with torch.no_grad(), using_mode(model, training=False):
        logits, attentions = model(images, return_attention=True)
    return logits.cpu(), torch.stack(attentions).cpu()


def get_attention_gradients(
    model: nn.Module, images: Tensor, *, target: int | Sequence[int] | Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits (B, K), attention (L, B, H, N, N) and d logit[target] / d attention (same shape).

    `target` is the class to explain: one for all images, one per image, or None for each
    image's predicted class. The gradient is taken through the attention the model returns
    (`torch.autograd.grad`), so no parameter's `.grad` changes and nothing global is switched;
    it works for frozen models too. Images are independent, so one backward pass of the summed
    target logits gives every image its own gradient.
    """
    images = _batched(images).to(_device_of(model))
    with torch.enable_grad(), using_mode(model, training=False):
        # An input that requires grad puts the attention in the graph even for a frozen model.
        x = images.detach().clone().requires_grad_(True)
        logits, attentions = model(x, return_attention=True)
        targets = _targets(target, logits)
        score = logits.gather(1, targets[:, None]).sum()
        gradients = torch.autograd.grad(score, attentions, allow_unused=True)
    gradients = [
        torch.zeros_like(a) if g is None else g for a, g in zip(attentions, gradients, strict=True)
    ]
    return (
        logits.detach().cpu(),
        torch.stack(attentions).detach().cpu(),
        torch.stack(gradients).detach().cpu(),
    )


def attention_maps(
    attentions: Sequence[Tensor] | Tensor,
    *,
    layer: int,
    query: Query = "cls",
    index: int = 0,
    num_prefix_tokens: int = NUM_PREFIX_TOKENS,
) -> Tensor:
    """One query's attention over the patches, every head of one layer: (H, G, G).

    `attentions` as `get_attention` returns it (or the model's list); `layer` counts from 0
    (negative counts from the end), `index` picks the image in the batch. The prefix-token
    columns are left out, so a map sums to 1 minus the attention paid to the class token.
    """
    attn = _stack(attentions)[layer, index]  # (H, N, N)
    p = num_prefix_tokens
    grid = _grid_of(attn.shape[-1] - p, p)
    row = attn[:, _token_index(query, grid, p), p:]  # (H, G*G)
    return row.detach().float().cpu().reshape(-1, grid, grid)


# ----------------------------------------------------------------------- rollout


def _rollout(fused: Tensor, *, add_identity: bool) -> Tensor:
    """Per-layer token mixing (L, B, N, N) -> its product through the layers (B, N, N).

    With `add_identity`, each layer becomes rownorm(A + I): the residual connection carries the
    token itself along (Abnar & Zuidema's 0.5 A + 0.5 I when A's rows sum to 1).
    """
    fused = fused.double()
    eye = torch.eye(fused.shape[-1], dtype=fused.dtype)
    rollout = eye.expand_as(fused[0]).clone()  # (B, N, N)
    for mix in fused:  # first layer first: R = A_L @ ... @ A_1
        if add_identity:
            mix = mix + eye
            mix = mix / mix.sum(dim=-1, keepdim=True)
        rollout = mix @ rollout
    return rollout.float()


def attention_rollout(
    attentions: Sequence[Tensor] | Tensor, *, head_fusion: str = "mean", add_identity: bool = True
) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): (L, B, H, N, N) -> (B, N, N).

    Heads are fused (`"mean"`, as the paper, or `"max"`), the identity added for the residual
    connection and rows renormalised, then the layers multiplied, first layer first. Row q of
    the result is how much each input token flows into output token q; `rollout_map` turns a
    row into a (G, G) map. Identity attention rolls out to the identity; uniform attention
    rolls out to uniform without `add_identity`, and with it to
    0.5^L I + (1 - 0.5^L) / N, whose class-token row is uniform over the patches.
    """
    attn = _stack(attentions).detach().cpu()
    if head_fusion == "mean":
        fused = attn.mean(dim=2)
    elif head_fusion == "max":
        fused = attn.amax(dim=2)
    else:
        raise ValueError(f"head_fusion must be 'mean' or 'max', got {head_fusion!r}")
    return _rollout(fused, add_identity=add_identity)


def gradient_rollout(
    attentions: Sequence[Tensor] | Tensor, gradients: Sequence[Tensor] | Tensor
) -> Tensor:
    """Class-specific rollout: (L, B, H, N, N) attention and its gradient -> (B, N, N).

    Each layer's attention is weighted by the positive part of its gradient for the chosen
    class, (A * relu(dA))  = relu(A * dA) as A >= 0, averaged over heads (Chefer et al. 2021,
    eq. 13), then rolled out as `attention_rollout` does (identity added, rows renormalised,
    layers multiplied). Where the class logit does not depend on a layer the gradient is zero
    and that layer passes tokens through unchanged.
    """
    # NOTE(paper): Chefer et al. accumulate R <- R + A_bar R without renormalising rows; we
    # renormalise as Abnar & Zuidema do, so both rollouts live on the same scale.
    attn, grad = _stack(attentions).detach().cpu(), _stack(gradients).detach().cpu()
    if attn.shape != grad.shape:
        raise ValueError(f"attention {tuple(attn.shape)} and gradient {tuple(grad.shape)} differ")
    fused = (attn * grad).clamp(min=0).mean(dim=2)  # (L, B, N, N)
    return _rollout(fused, add_identity=True)


def rollout_map(
    rollout: Tensor, *, query: Query = "cls", num_prefix_tokens: int = NUM_PREFIX_TOKENS
) -> Tensor:
    """One query's row of a rollout (B, N, N) or (N, N), over the patches: (B, G, G) or (G, G).

    The prefix-token columns are left out and values are left as they are (not rescaled).
    """
    p = num_prefix_tokens
    grid = _grid_of(rollout.shape[-1] - p, p)
    row = rollout[..., _token_index(query, grid, p), p:]  # (..., G*G)
    return row.reshape(*row.shape[:-1], grid, grid)


def relevance_maps(
    model: nn.Module,
    images: Tensor,
    *,
    method: str = "rollout",
    target: int | Sequence[int] | Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Where the model looks: maps over the patches (B, G, G) and the logits (B, K).

    A map is the rollout row of the token the head reads: the class token; the mean of the
    class and distillation tokens' rows for DeiT's distilled ViT (its heads read both); the
    mean of the patch tokens' rows for a model with average pooling.
    `method="rollout"` is attention rollout (class-agnostic, `target` must be None);
    `method="gradient"` is the gradient-weighted rollout for class `target` (None: each image's
    predicted class) - "where the model looks for *dog*".
    """
    if method == "rollout":
        if target is not None:
            raise ValueError("attention rollout is class-agnostic; use method='gradient'")
        logits, attentions = get_attention(model, images)
        rollout = attention_rollout(attentions)
    elif method == "gradient":
        logits, attentions, gradients = get_attention_gradients(model, images, target=target)
        rollout = gradient_rollout(attentions, gradients)
    else:
        raise ValueError(f"method must be 'rollout' or 'gradient', got {method!r}")
    p = _prefix_tokens(model)
    grid = _grid_of(rollout.shape[-1] - p, p)
    pooled = getattr(model, "global_pool", "token") == "avg" or p == 0
    rows = rollout[:, p:, p:] if pooled else rollout[:, :p, p:]  # (B, queries, G*G)
    return rows.mean(dim=1).reshape(-1, grid, grid), logits


# -------------------------------------------------------------- attention distance


def patch_distances(grid: int, patch_size: float) -> Tensor:
    """Pixel distance between every pair of patch centres of a grid x grid image: (G*G, G*G)."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).double()  # (G*G, 2)
    return torch.cdist(centres, centres) * patch_size


def attention_distance(
    attentions: Sequence[Tensor] | Tensor,
    *,
    patch_size: float,
    renormalise: bool = True,
    num_prefix_tokens: int = NUM_PREFIX_TOKENS,
) -> Tensor:
    """Mean attention distance in pixels per layer and head: (L, B, H, N, N) -> (L, H).

    For each patch query, the attention-weighted mean distance from its centre to the centres
    of the key patches, averaged over queries and images (the paper's Figure 7, right; its
    appendix D.7 calls it the analogue of receptive-field size). The class token (all
    `num_prefix_tokens`) is left out as a query and as a key.

    With `renormalise` (the default) each query's attention over the patches is rescaled to sum
    to 1, so the result is a true weighted mean over patch keys: a head that mostly reads the
    class token is then judged by where its remaining attention goes, and does not look "local"
    just because the class token has no position. Uniform attention thus gives exactly the mean
    pairwise distance of the patch grid; attention on the query itself gives 0.
    """
    attn = _stack(attentions).detach()
    p = num_prefix_tokens
    grid = _grid_of(attn.shape[-1] - p, p)
    distances = patch_distances(grid, patch_size).to(attn.device)  # (G*G, G*G)
    per_layer = []
    for layer in attn:  # one layer at a time: a float64 copy of all of them can be gigabytes
        patch_attn = layer[..., p:, p:].double()  # (B, H, G*G, G*G)
        if renormalise:
            patch_attn = patch_attn / patch_attn.sum(dim=-1, keepdim=True).clamp(min=1e-12)
        per_query = (patch_attn * distances).sum(dim=-1)  # (B, H, G*G)
        per_layer.append(per_query.mean(dim=(0, 2)))
    return torch.stack(per_layer).float().cpu()  # (L, H)


def _chunks(images: Tensor | Iterable[Any], size: int) -> Iterator[Tensor]:
    """Image tensors of at most `size` images, from one tensor or an iterable of batches
    (tensors, or (images, labels, ...) tuples as a DataLoader yields them)."""
    batches = [images] if isinstance(images, Tensor) else images
    for batch in batches:
        yield from _batched(batch if isinstance(batch, Tensor) else batch[0]).split(size)


def model_attention_distance(
    model: nn.Module,
    images: Tensor | Iterable[Any],
    *,
    max_images: int | None = None,
    renormalise: bool = True,
    batch_size: int = 16,
) -> Tensor:
    """`attention_distance` of a model over many images, batch by batch: (L, H) in pixels.

    `images` is a tensor (B, C, H_img, W_img) or an iterable of batches (a DataLoader yielding
    (images, labels) will do); at most `max_images` are used, at most `batch_size` at a time
    (ViT-B/16's attention is 22 MB per image).
    """
    patch_size = model.patch_embed.patch_size
    total, seen = None, 0
    for batch in _chunks(images, batch_size):
        if max_images is not None:
            batch = batch[: max_images - seen]
        if not len(batch):
            break
        _, attentions = get_attention(model, batch)
        part = attention_distance(
            attentions,
            patch_size=patch_size,
            renormalise=renormalise,
            num_prefix_tokens=_prefix_tokens(model),
        )
        total = part * len(batch) if total is None else total + part * len(batch)
        seen += len(batch)
        if max_images is not None and seen >= max_images:
            break
    if total is None:
        raise ValueError("no images given")
    return total / seen


# ------------------------------------------------------------- patch-embedding PCA


def filter_pca(weight: Tensor, *, k: int = 28) -> tuple[Tensor, Tensor]:
    """Top-k principal components of the patch-embedding filters, and their explained variance.

    `weight` is `model.patch_embed.proj.weight`, (D, C, P, P): D filters, each a point in
    C*P*P dimensions. The filters are centred and decomposed by SVD. Returns the components as
    (k, C, P, P), unit-norm, and the fraction of the total variance each explains, (k,),
    descending (the paper's Figure 7, left, shows the first 28). Each component's sign is fixed
    so that its largest-magnitude entry is positive, so runs and models compare.
    """
    w = weight.detach().cpu().double()
    D, shape = w.shape[0], w.shape[1:]
    flat = w.reshape(D, -1)
    flat = flat - flat.mean(dim=0, keepdim=True)  # (D, C*P*P)
    _, singular, vh = torch.linalg.svd(flat, full_matrices=False)
    k = min(k, vh.shape[0])
    components = vh[:k]  # (k, C*P*P)
    peak = components.gather(1, components.abs().argmax(dim=1, keepdim=True))
    components = components * torch.sign(peak)
    variance = singular**2
    explained = variance[:k] / variance.sum().clamp(min=1e-300)
    return components.reshape(k, *shape).float(), explained.float()


# ------------------------------------------------------------------ whole model


def summarise_model(
    model: nn.Module,
    images: Tensor | Iterable[Any],
    *,
    k: int = 28,
    max_images: int | None = 256,
) -> dict[str, Any]:
    """The model-level views, for one model or a before/after comparison.

    Returns a dict: `position_similarity` (G*G, G*G), `attention_distance` (L, H) in pixels
    over `images` (see `model_attention_distance`), `filters` (k, C, P, P) and
    `explained_variance` (k,) from `filter_pca`, and `patch_size` / `img_size` in pixels.
    """
    components, explained = filter_pca(model.patch_embed.proj.weight, k=k)
    return dict(
        position_similarity=position_similarity(
            model.pos_embed, num_prefix_tokens=_prefix_tokens(model)
        ),
        attention_distance=model_attention_distance(model, images, max_images=max_images),
        filters=components,
        explained_variance=explained,
        patch_size=model.patch_embed.patch_size,
        img_size=model.patch_embed.img_size,
    )


def compare_summaries(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What changed between two `summarise_model` results (e.g. pretrained -> fine-tuned).

    Returns `position_similarity_change`, the mean absolute change of the (G*G, G*G) cosine
    similarities; `attention_distance_change`, after minus before, (L, H) pixels; and
    `filter_subspace_overlap`, how much of the top-k filter subspace survived:
    ||U_before U_after^T||_F^2 / k, 1 for the same subspace, 0 for orthogonal ones (k the
    smaller number of components).
    """
    k = min(len(before["filters"]), len(after["filters"]))
    u_before = before["filters"][:k].reshape(k, -1).double()
    u_after = after["filters"][:k].reshape(k, -1).double()
    similarity_change = after["position_similarity"] - before["position_similarity"]
    return dict(
        position_similarity_change=similarity_change.abs().mean().item(),
        attention_distance_change=after["attention_distance"] - before["attention_distance"],
        filter_subspace_overlap=((u_before @ u_after.T) ** 2).sum().item() / k,
    )
