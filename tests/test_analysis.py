"""Attention rollout, attention distance, position similarity and filter PCA on known answers."""

import itertools
import math
from unittest import mock

import numpy as np
import pytest
import torch

import vitlib.model
from vitlib import analysis
from vitlib.model import build_vit, sincos_pos_embed_2d

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
G = 4  # TINY's patch grid
N = G * G + 1


def _tiny(num_classes=3, seed=0, **overrides):
    """TINY with a random (not zero-init) head, so logits depend on the attention."""
    torch.manual_seed(seed)
    model = build_vit("vit_custom", num_classes=num_classes, **{**TINY, **overrides}).eval()
    torch.nn.init.normal_(model.head.weight)
    return model


def _attention(kind, *, layers=3, batch=2, heads=2, tokens=N):
    """(L, B, H, N, N) identity, uniform or random row-stochastic attention."""
    shape = (layers, batch, heads, tokens, tokens)
    if kind == "identity":
        return torch.eye(tokens).expand(shape).clone()
    if kind == "uniform":
        return torch.full(shape, 1.0 / tokens)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1)).softmax(dim=-1)


# ------------------------------------------------------------------------ rollout


@pytest.mark.parametrize("head_fusion", ["mean", "max"])
@pytest.mark.parametrize("add_identity", [True, False])
def test_rollout_of_identity_attention_is_identity(head_fusion, add_identity):
    rollout = analysis.attention_rollout(
        _attention("identity"), head_fusion=head_fusion, add_identity=add_identity
    )
    assert torch.equal(rollout, torch.eye(N).expand(2, N, N))


def test_rollout_of_uniform_attention_is_uniform():
    layers = 3
    uniform = _attention("uniform", layers=layers)
    plain = analysis.attention_rollout(uniform, add_identity=False)
    torch.testing.assert_close(plain, torch.full((2, N, N), 1.0 / N))
    # With the residual identity each layer is (A + I) / 2, and U @ U = U gives the closed form
    # 0.5^L I + (1 - 0.5^L) U: still uniform over the patches for the class-token query.
    rollout = analysis.attention_rollout(uniform)
    expected = 0.5**layers * torch.eye(N) + (1 - 0.5**layers) / N
    torch.testing.assert_close(rollout, expected.expand(2, N, N))
    cls_map = analysis.rollout_map(rollout)
    assert cls_map.shape == (2, G, G)
    torch.testing.assert_close(cls_map, torch.full((2, G, G), (1 - 0.5**layers) / N))


def test_rollout_multiplies_first_layer_first():
    attn = _attention("random", layers=2, batch=1)
    fused = attn.double().mean(dim=2)[:, 0].numpy()  # (L, N, N)
    mix = [(a + np.eye(N)) / (a + np.eye(N)).sum(axis=1, keepdims=True) for a in fused]
    expected = mix[1] @ mix[0]
    rollout = analysis.attention_rollout(attn)[0].double().numpy()
    np.testing.assert_allclose(rollout, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rollout.sum(axis=1), 1.0, rtol=1e-6)


def test_rollout_accepts_the_models_list():
    attn = _attention("random")
    torch.testing.assert_close(
        analysis.attention_rollout(list(attn)), analysis.attention_rollout(attn)
    )
    with pytest.raises(ValueError, match="head_fusion"):
        analysis.attention_rollout(attn, head_fusion="median")


def test_rollout_map_picks_the_query_row_without_the_class_token():
    rollout = torch.arange(N * N, dtype=torch.float).reshape(N, N)
    cls_map = analysis.rollout_map(rollout)
    assert torch.equal(cls_map.flatten(), rollout[0, 1:])
    patch = analysis.rollout_map(rollout, query=(2, 1))
    assert torch.equal(patch.flatten(), rollout[1 + 2 * G + 1, 1:])
    assert torch.equal(analysis.rollout_map(rollout, query=1 + 2 * G + 1), patch)


@pytest.mark.parametrize("prefix", [0, 2])
def test_rollout_map_and_attention_maps_skip_the_given_prefix_tokens(prefix):
    tokens = prefix + G * G
    rollout = torch.arange(tokens * tokens, dtype=torch.float).reshape(tokens, tokens)
    patch = analysis.rollout_map(rollout, query=(2, 1), num_prefix_tokens=prefix)
    assert torch.equal(patch.flatten(), rollout[prefix + 2 * G + 1, prefix:])
    attn = rollout.expand(1, 1, 2, tokens, tokens)  # (L, B, H, N, N)
    maps = analysis.attention_maps(attn, layer=0, query=(2, 1), num_prefix_tokens=prefix)
    assert torch.equal(maps[1].flatten(), rollout[prefix + 2 * G + 1, prefix:])
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        analysis.rollout_map(rollout)  # the default, one class token, leaves no square grid
    if prefix == 0:
        with pytest.raises(ValueError, match="no class token"):
            analysis.rollout_map(rollout, num_prefix_tokens=0)


def test_attention_distance_leaves_out_every_prefix_token():
    one = _attention("random", tokens=N)
    two = torch.zeros(*one.shape[:3], N + 1, N + 1)  # a second prefix token, given no attention
    two[..., 1:, 1:] = one
    two[..., 0, 0] = 1.0
    torch.testing.assert_close(
        analysis.attention_distance(two, patch_size=8, num_prefix_tokens=2),
        analysis.attention_distance(one, patch_size=8),
    )


# ---------------------------------------------------------------- attention maps


def test_attention_maps_place_each_key_at_its_patch():
    attn = torch.zeros(2, 1, 3, N, N)  # (L, B, H, N, N)
    query = 1 + 3 * G + 0  # patch (3, 0)
    for head in range(3):  # head h puts all of layer 1's attention on key patch (h, G - 1)
        attn[1, 0, head, query, 1 + head * G + G - 1] = 1.0
    maps = analysis.attention_maps(attn, layer=1, query=(3, 0))
    assert maps.shape == (3, G, G)
    for head in range(3):
        expected = torch.zeros(G, G)
        expected[head, G - 1] = 1.0
        assert torch.equal(maps[head], expected)
    assert torch.equal(analysis.attention_maps(attn, layer=-1, query=query), maps)
    assert analysis.attention_maps(attn, layer=0, query="cls").abs().sum() == 0


@pytest.mark.parametrize("query", ["CLS", (G, 0), N, -1])
def test_bad_queries_are_errors(query):
    with pytest.raises(ValueError):
        analysis.attention_maps(_attention("uniform"), layer=0, query=query)


def test_get_attention_matches_the_model_and_leaves_its_mode():
    model = _tiny().train()
    x = torch.randn(3, 3, 32, 32)
    logits, attn = analysis.get_attention(model, x)
    assert attn.shape == (TINY["depth"], 3, TINY["num_heads"], N, N)
    assert not attn.requires_grad
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]))
    with torch.no_grad():
        torch.testing.assert_close(logits, model.eval()(x))
    assert analysis.get_attention(model.train(), x[0])[1].shape[1] == 1  # one (C, H, W) image
    assert model.training


# ------------------------------------------------------------- attention distance


def _mean_pairwise_grid_distance(grid, patch_size):
    """Brute force over an explicit grid: mean distance between patch centres, self included."""
    cells = list(itertools.product(range(grid), repeat=2))
    total = sum(math.dist(a, b) for a, b in itertools.product(cells, repeat=2))
    return patch_size * total / len(cells) ** 2


def test_attention_on_the_query_itself_has_distance_zero():
    distance = analysis.attention_distance(_attention("identity"), patch_size=16)
    assert distance.shape == (3, 2)
    assert torch.equal(distance, torch.zeros(3, 2))


@pytest.mark.parametrize("grid, patch_size", [(2, 1), (4, 8), (7, 16)])
def test_uniform_attention_has_the_mean_pairwise_distance(grid, patch_size):
    attn = _attention("uniform", tokens=grid * grid + 1)
    distance = analysis.attention_distance(attn, patch_size=patch_size)
    expected = _mean_pairwise_grid_distance(grid, patch_size)
    torch.testing.assert_close(distance, torch.full((3, 2), expected), rtol=1e-6, atol=0)
    if grid == 2:  # by hand: each patch sees 0, 1, 1 and sqrt(2)
        assert distance[0, 0].item() == pytest.approx((2 + math.sqrt(2)) / 4)


def test_attention_distance_renormalises_over_patches():
    # Half the attention on the class token, half on one fixed key patch (0, 0).
    attn = torch.zeros(1, 1, 1, N, N)
    attn[..., 0] = 0.5
    attn[..., 1] = 0.5
    cells = list(itertools.product(range(G), repeat=2))
    to_corner = 8 * sum(math.dist(c, (0, 0)) for c in cells) / len(cells)
    renormalised = analysis.attention_distance(attn, patch_size=8)
    assert renormalised.item() == pytest.approx(to_corner, rel=1e-6)
    raw = analysis.attention_distance(attn, patch_size=8, renormalise=False)
    assert raw.item() == pytest.approx(to_corner / 2, rel=1e-6)


def test_model_attention_distance_averages_over_batches():
    model = _tiny()
    x = torch.randn(5, 3, 32, 32)
    _, attn = analysis.get_attention(model, x)
    whole = analysis.attention_distance(attn, patch_size=8)
    batches = [(x[:2], torch.zeros(2)), (x[2:], torch.zeros(3))]  # as a DataLoader yields
    torch.testing.assert_close(analysis.model_attention_distance(model, batches), whole)
    torch.testing.assert_close(analysis.model_attention_distance(model, x, batch_size=2), whole)
    first_three = analysis.attention_distance(attn[:, :3], patch_size=8)
    torch.testing.assert_close(
        analysis.model_attention_distance(model, batches, max_images=3), first_three
    )
    assert whole.shape == (TINY["depth"], TINY["num_heads"])
    assert ((whole > 0) & (whole < 8 * G * math.sqrt(2))).all()


# ---------------------------------------------------------------- position embedding


@pytest.mark.parametrize("grid, dim", [(8, 64), (14, 192)])
def test_sincos_position_similarity_peaks_at_itself_and_falls_off(grid, dim):
    sim = analysis.position_similarity(sincos_pos_embed_2d(grid, dim), num_prefix_tokens=0)
    assert sim.shape == (grid * grid, grid * grid)
    torch.testing.assert_close(sim.diagonal(), torch.ones(grid * grid))
    off_diagonal = sim.masked_fill(torch.eye(grid * grid, dtype=torch.bool), -2.0)
    assert (off_diagonal.amax(dim=1) < 1 - 1e-3).all()  # the peak is each patch's own position
    distance = analysis.patch_distances(grid, 1.0)
    for i in range(grid * grid):  # every 4-neighbour is more similar than anything 2.5 away
        assert sim[i][distance[i] == 1].min() > sim[i][distance[i] >= 2.5].max()
    rings = [sim[(distance > r - 0.5) & (distance <= r + 0.5)].mean() for r in range(grid)]
    assert all(a > b for a, b in itertools.pairwise(rings))  # mean similarity falls with distance


def test_position_similarity_leaves_out_the_class_token():
    model = _tiny()
    with torch.no_grad():
        model.pos_embed[0, 0] = 1e3  # a class-token row that would dominate if it were used
    sim = analysis.position_similarity(model.pos_embed)
    patches = torch.nn.functional.normalize(model.pos_embed[0, 1:].detach(), dim=-1)
    torch.testing.assert_close(sim, patches @ patches.T)
    with pytest.raises(ValueError, match="square"):
        analysis.position_similarity(model.pos_embed, num_prefix_tokens=0)


# ------------------------------------------------------------------- filter PCA


def test_filter_pca_recovers_known_principal_directions():
    gen = torch.Generator().manual_seed(0)
    D, shape, k = 64, (3, 4, 4), 5
    dims = math.prod(shape)
    directions = torch.linalg.qr(torch.randn(dims, k, generator=gen, dtype=torch.float64))[0].T
    # Coefficients: orthonormal, zero-mean columns, so the sample covariance is exactly diagonal.
    coeffs = torch.randn(D, k, generator=gen, dtype=torch.float64)
    coeffs = torch.linalg.qr(coeffs - coeffs.mean(dim=0))[0]
    stds = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    offset = torch.randn(dims, generator=gen, dtype=torch.float64)  # a mean filter to remove
    order = torch.tensor([2, 0, 4, 1, 3])  # the directions in a shuffled order of variance
    weight = (coeffs[:, order] * stds) @ directions[order] + offset
    components, explained = analysis.filter_pca(weight.reshape(D, *shape).float(), k=k)
    assert components.shape == (k, *shape)
    flat = components.reshape(k, -1).double()
    overlap = flat @ directions[order].T  # (k, k): +-identity if each direction was found
    torch.testing.assert_close(overlap.abs(), torch.eye(k, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(explained.double(), stds**2 / (stds**2).sum(), atol=1e-6, rtol=0)
    peaks = flat.gather(1, flat.abs().argmax(dim=1, keepdim=True))
    assert (peaks > 0).all()  # the sign convention


def test_filter_pca_of_a_model_and_k_larger_than_the_rank():
    weight = _tiny().patch_embed.proj.weight  # (32, 3, 8, 8): at most 32 components
    components, explained = analysis.filter_pca(weight, k=100)
    assert components.shape == (32, 3, 8, 8)
    assert (explained[:-1] >= explained[1:]).all()
    assert explained.sum().item() == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------- gradient rollout


def test_zero_gradient_gives_identity_rollout():
    model = build_vit("vit_custom", num_classes=2, **TINY)  # zero-init head: logits ignore x
    x = torch.randn(2, 3, 32, 32)
    _, attn, grad = analysis.get_attention_gradients(model, x, target=1)
    assert torch.equal(grad, torch.zeros_like(grad))
    assert torch.equal(analysis.gradient_rollout(attn, grad), torch.eye(N).expand(2, N, N))


def test_gradient_flows_through_the_returned_attention_without_side_effects():
    model = _tiny().train()
    model.freeze_backbone()  # the probe's model: only the head trains, attention still explained
    x = torch.randn(2, 3, 32, 32)
    logits, attn, grad = analysis.get_attention_gradients(model, x)
    assert grad.shape == attn.shape == (TINY["depth"], 2, TINY["num_heads"], N, N)
    assert (grad.flatten(1).abs().amax(dim=1) > 0).all()  # every layer gets a gradient
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    # The ordinary forward still takes the fused path afterwards: no global switch was flipped.
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with mock.patch.object(vitlib.model.F, "scaled_dot_product_attention", wraps=sdpa) as fused:
        with torch.no_grad():
            model.eval()(x)
    assert fused.call_count == TINY["depth"]
    # Each image gets its own gradient although the batch is explained in one backward pass.
    _, _, alone = analysis.get_attention_gradients(model, x[1:], target=logits[1].argmax())
    torch.testing.assert_close(alone[:, 0], grad[:, 1])


def _forward_with_attention(model, x, layer, attention):
    """The model's forward written out again, with `layer`'s attention replaced by `attention`.

    x is (B, C, H, W), attention (B, H, N, N): one perturbed copy of the attention per image.
    """
    tokens = model.patch_embed(x)
    tokens = torch.cat([model.cls_token.expand(len(x), -1, -1), tokens], dim=1) + model.pos_embed
    for index, block in enumerate(model.blocks):
        attn_module, h = block.attn, block.norm1(tokens)
        B, T, D = h.shape
        q, k, v = attn_module.qkv(h).reshape(B, T, 3, model.num_heads, -1).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * attn_module.scale).softmax(dim=-1)
        if index == layer:
            weights = attention
        mixed = (weights @ v).transpose(1, 2).reshape(B, T, D)
        tokens = tokens + attn_module.proj(mixed)
        tokens = tokens + block.mlp(block.norm2(tokens))
    return model.head(model.norm(tokens)[:, 0])


def test_gradient_rollout_equals_brute_force_finite_differences():
    model = _tiny(seed=3).double()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    target, eps = 1, 1e-6
    logits, attn, grad = analysis.get_attention_gradients(model, x, target=target)
    with torch.no_grad():
        torch.testing.assert_close(_forward_with_attention(model, x, -1, None), logits)
        numeric = torch.zeros_like(attn)  # (L, 1, H, N, N)
        for layer in range(TINY["depth"]):
            # One copy of the image per attention entry and sign, all in one batch.
            entries = attn[layer, 0].numel()
            bump = torch.eye(entries, dtype=torch.float64).reshape(entries, *attn.shape[2:]) * eps
            base = attn[layer].expand(entries, -1, -1, -1)
            up = _forward_with_attention(model, x.expand(entries, -1, -1, -1), layer, base + bump)
            down = _forward_with_attention(model, x.expand(entries, -1, -1, -1), layer, base - bump)
            numeric[layer, 0] = ((up - down)[:, target] / (2 * eps)).reshape(attn.shape[2:])
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-8)
    # The rollout by hand from the numeric gradient: mean over heads of relu(A * dA), + I,
    # rows renormalised, layers multiplied first layer first.
    rollout = np.eye(N)
    for layer in range(TINY["depth"]):
        weighted = np.maximum((attn[layer, 0] * numeric[layer, 0]).numpy(), 0).mean(axis=0)
        weighted = weighted + np.eye(N)
        rollout = weighted / weighted.sum(axis=1, keepdims=True) @ rollout
    np.testing.assert_allclose(
        analysis.gradient_rollout(attn, grad)[0].numpy(), rollout, rtol=1e-4, atol=1e-7
    )


def test_relevance_maps_for_both_methods():
    model = _tiny()
    x = torch.randn(2, 3, 32, 32)
    maps, logits = analysis.relevance_maps(model, x)
    assert maps.shape == (2, G, G) and logits.shape == (2, 3)
    assert (maps > 0).all()
    for_class_2, _ = analysis.relevance_maps(model, x, method="gradient", target=2)
    predicted, _ = analysis.relevance_maps(model, x, method="gradient")
    assert for_class_2.shape == predicted.shape == (2, G, G)
    _, attn, grad = analysis.get_attention_gradients(model, x, target=[2, 2])
    torch.testing.assert_close(
        for_class_2, analysis.rollout_map(analysis.gradient_rollout(attn, grad))
    )
    with pytest.raises(ValueError, match="class-agnostic"):
        analysis.relevance_maps(model, x, target=1)
    with pytest.raises(ValueError, match="method"):
        analysis.relevance_maps(model, x, method="lrp")


@pytest.mark.parametrize(
    "options, head_rows",
    [
        (dict(class_token=False, global_pool="avg"), slice(0, G * G)),  # the head pools patches
        (dict(distilled=True), slice(0, 2)),  # the heads read the class and distillation tokens
    ],
)
def test_relevance_maps_read_the_tokens_the_head_reads(options, head_rows):
    model = _tiny(**options)
    x = torch.randn(2, 3, 32, 32)
    maps, _ = analysis.relevance_maps(model, x)
    _, attn = analysis.get_attention(model, x)
    p = model.num_prefix_tokens
    rollout = analysis.attention_rollout(attn)
    expected = rollout[:, head_rows, p:].mean(dim=1).reshape(2, G, G)
    torch.testing.assert_close(maps, expected)
    summary = analysis.summarise_model(model, x, k=4)
    assert summary["position_similarity"].shape == (G * G, G * G)
    assert summary["attention_distance"].shape == (TINY["depth"], TINY["num_heads"])


def test_summarise_model():
    model = _tiny()
    summary = analysis.summarise_model(model, torch.randn(3, 3, 32, 32), k=4)
    assert summary["position_similarity"].shape == (G * G, G * G)
    assert summary["attention_distance"].shape == (TINY["depth"], TINY["num_heads"])
    assert summary["filters"].shape == (4, 3, 8, 8)
    assert summary["explained_variance"].shape == (4,)
    assert (summary["patch_size"], summary["img_size"]) == (8, 32)


def test_compare_summaries_of_a_model_with_itself_and_with_another():
    x = torch.randn(2, 3, 32, 32)
    first = analysis.summarise_model(_tiny(seed=0), x, k=4)
    same = analysis.compare_summaries(first, first)
    assert same["position_similarity_change"] == 0
    assert torch.equal(same["attention_distance_change"], torch.zeros(2, 2))
    assert same["filter_subspace_overlap"] == pytest.approx(1.0)
    other = analysis.compare_summaries(first, analysis.summarise_model(_tiny(seed=1), x, k=4))
    assert other["position_similarity_change"] > 0.01
    # Two random 4-dim subspaces of 192 dims overlap by about 4/192, far from 1.
    assert other["filter_subspace_overlap"] < 0.2


def test_a_patch_query_may_be_a_list_as_papermill_and_yaml_give_it():
    attn = torch.rand(2, 1, 3, N, N).softmax(-1)
    as_tuple = analysis.attention_maps(attn, layer=1, query=(3, 0))
    assert torch.equal(analysis.attention_maps(attn, layer=1, query=[3, 0]), as_tuple)
    with pytest.raises(ValueError, match=r"\(row, col\)"):
        analysis.attention_maps(attn, layer=1, query=[3, 0, 1])
