"""The three attentions against plain softmax attention, the papers' formulas and hand maths."""

import math

import pytest
import torch

from vitlib.attention import (
    ATTENTION_KINDS,
    Attention,
    PerformerAttention,
    ReAttention,
    build_attention,
    favor_features,
    orthogonal_gaussian,
)

DIM, HEADS = 32, 4
DH = DIM // HEADS
BN_EPS = 1e-5  # nn.BatchNorm2d's default


def _softmax_reference(x):
    """A plain Attention, its output (B, N, D), its softmax map (B, H, N, N) and v (B, H, N, Dh)."""
    torch.manual_seed(0)
    ref = Attention(DIM, num_heads=HEADS).eval()
    with torch.no_grad():
        out, attn = ref(x, return_attention=True)
        v = ref.split_heads(x)[2]
    return ref, out, attn, v


def _merge(ref, maps, v):
    """Output of `ref`'s projection applied to maps @ v, heads concatenated by hand."""
    B, H, N, Dh = v.shape
    return ref.proj((maps @ v).permute(0, 2, 1, 3).reshape(B, N, H * Dh))


def _copy_into(module, ref):
    """Load `ref`'s qkv / proj weights into `module`; only the variant's own weights are left."""
    result = module.load_state_dict(ref.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith(("reattn_", "projection")) for k in result.missing_keys)
    return module


# --- DeepViT re-attention ------------------------------------------------------------------


def test_reattention_with_identity_mixing_equals_softmax_attention():
    """Theta = I (its init) and a fresh BatchNorm in eval mode (running mean 0, var 1) leave
    the softmax map as it is up to BatchNorm's 1/sqrt(1 + eps)."""
    x = torch.randn(2, 9, DIM)
    ref, expected, softmax_map, _ = _softmax_reference(x)
    re = _copy_into(ReAttention(DIM, num_heads=HEADS), ref).eval()
    assert torch.equal(re.reattn_weight, torch.eye(HEADS))
    with torch.no_grad():
        out, attn = re(x, return_attention=True)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(attn, softmax_map / math.sqrt(1 + BN_EPS), rtol=1e-5, atol=1e-7)

    with torch.no_grad():
        re.reattn_weight.copy_(torch.eye(HEADS) + 0.5 * torch.randn(HEADS, HEADS))
        mixed, _ = re(x)
    assert (mixed - expected).abs().max() > 1e-2  # a learnt Theta is not plain attention


def test_reattention_mixes_the_heads_maps_along_the_head_axis():
    """Theta^T A (DeepViT eq. 3): mixed head g = sum_h Theta[h, g] A_h, checked with a
    permutation (head h's map moves to head perm[h]) and with a random Theta by hand."""
    x = torch.randn(2, 7, DIM)
    ref, _, softmax_map, v = _softmax_reference(x)
    re = _copy_into(ReAttention(DIM, num_heads=HEADS), ref).eval()
    perm = [2, 0, 3, 1]
    permutation = torch.zeros(HEADS, HEADS)
    permutation[torch.arange(HEADS), perm] = 1.0
    theta = torch.randn(HEADS, HEADS)
    bn = math.sqrt(1 + BN_EPS)
    for weight in (permutation, theta):
        with torch.no_grad():
            re.reattn_weight.copy_(weight)
            out, attn = re(x, return_attention=True)
        expected = torch.zeros_like(softmax_map)
        for h in range(HEADS):
            for g in range(HEADS):
                expected[:, g] += weight[h, g] * softmax_map[:, h]
        torch.testing.assert_close(attn, expected / bn, rtol=1e-5, atol=1e-6)
        if weight is permutation:  # stated plainly: head h's map is now head perm[h]'s
            for h in range(HEADS):
                torch.testing.assert_close(attn[:, perm[h]] * bn, softmax_map[:, h])
        with torch.no_grad():  # the returned map is the one applied to the values
            torch.testing.assert_close(out, _merge(ref, attn, v), rtol=1e-5, atol=1e-6)


def test_reattention_batchnorm_standardises_each_heads_map_in_training():
    """In training the BatchNorm (one channel per head) standardises each mixed map with
    its batch statistics over (B, N, N): (m - mean) / sqrt(var + eps), weight 1, bias 0."""
    re = ReAttention(DIM, num_heads=HEADS).train()
    x = torch.randn(3, 10, DIM)
    theta = torch.randn(HEADS, HEADS)
    with torch.no_grad():
        re.reattn_weight.copy_(theta)
        _, attn = re(x, return_attention=True)
        softmax_map = re.softmax_map(*re.split_heads(x)[:2])
    for g in range(HEADS):
        mixed = sum(theta[h, g] * softmax_map[:, h] for h in range(HEADS))  # (B, N, N)
        expected = (mixed - mixed.mean()) / torch.sqrt(mixed.var(unbiased=False) + BN_EPS)
        torch.testing.assert_close(attn[:, g], expected, rtol=1e-4, atol=1e-4)
        assert abs(attn[:, g].mean().item()) < 1e-5


# --- Performer FAVOR+ ----------------------------------------------------------------------


def test_orthogonal_gaussian_rows_are_orthogonal_in_blocks_with_gaussian_norms():
    """(M, Dh) = (20, 8): blocks of Dh rows (the last one partial), orthogonal within a
    block; over many rows the norms average the chi(Dh) mean, sqrt(2) G((k+1)/2) / G(k/2)
    (near sqrt(Dh)), and every coordinate averages 0, as rows of N(0, I)."""
    w = orthogonal_gaussian(20, 8, generator=torch.Generator().manual_seed(0))
    assert w.shape == (20, 8)
    for block in (w[0:8], w[8:16], w[16:20]):
        gram = block @ block.T
        off_diagonal = gram - torch.diag(gram.diagonal())
        assert off_diagonal.abs().max() < 1e-4 * gram.diagonal().max()

    dh, blocks = 16, 600
    w = orthogonal_gaussian(dh * blocks, dh, generator=torch.Generator().manual_seed(1))
    chi_mean = math.sqrt(2) * math.exp(math.lgamma((dh + 1) / 2) - math.lgamma(dh / 2))
    norms = w.norm(dim=1)
    assert norms.mean().item() == pytest.approx(chi_mean, abs=0.06)  # chi sd 0.70 / sqrt(9600)
    assert abs(chi_mean - math.sqrt(dh)) < 0.1
    # Each row position within a block is a uniform direction: no lean towards its own axis
    # (QR without the sign fix gives a mean near -0.8 on the diagonal).
    position_mean = w.reshape(blocks, dh, dh).mean(0)  # (row in block, coordinate)
    assert position_mean.abs().max() < 0.25  # 5.5 standard errors of 1 / sqrt(600)


def test_favor_features_are_positive_and_estimate_the_softmax_kernel():
    """E[phi(q)^T phi(k)] = exp(q^T k) for q, k already carrying the Dh^-1/4 scaling.

    favor_features subtracts documented constants before exp (the row's largest w^T q for a
    query, the largest w^T k over all keys), so exp(s_q + s_k) is multiplied back here.
    Measured (|q| = |k| = 1, Dh 16, M 4096, mean of 16 draws): within 1.5% of exp(q^T k) for
    5 query seeds, the spread of one draw being ~5%; tolerance 5%. (QR without the sign fix
    was 17% off for one of them; the 1e-6 added after the 1/sqrt(M) instead of before: up to
    a factor 30 at |q| = |k| = 2, M 16384.)"""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 16, generator=g)
    k = torch.randn(6, 16, generator=g)
    q, k = q / q.norm(), k / k.norm(dim=1, keepdim=True)
    exact = torch.exp(q @ k.T)[0]  # (6,)
    ratios = []
    for seed in range(16):
        w = orthogonal_gaussian(4096, 16, generator=torch.Generator().manual_seed(seed))
        phi_q = favor_features(q, w, is_query=True)
        phi_k = favor_features(k, w, is_query=False)
        assert (phi_q > 0).all() and (phi_k > 0).all()
        undo = torch.exp((q @ w.T).amax() + (k @ w.T).amax())
        ratios.append((phi_q @ phi_k.T)[0] * undo / exact)
    mean_ratio = torch.stack(ratios).mean(0)
    torch.testing.assert_close(mean_ratio, torch.ones(6), atol=0.05, rtol=0)


def test_favor_features_stabilisers_cancel_in_the_normalised_map():
    """Row-normalised phi(Q) phi(K)^T equals the same map from the paper's unstabilised
    phi(x) = exp(W x - |x|^2 / 2) / sqrt(M) (written here, float64, the same W): the
    subtracted maxima are constants per query row and over all keys. Measured largest
    relative difference (|q| = |k| = 1.5, Dh 16, M 1024): 2.3e-3, the 1e-6 floor's share
    (0.071 with the floor added after the 1/sqrt(M)); tolerance 1e-2."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    q, k = 1.5 * q / q.norm(dim=1, keepdim=True), 1.5 * k / k.norm(dim=1, keepdim=True)
    w = orthogonal_gaussian(1024, 16, generator=torch.Generator().manual_seed(1))

    def paper_phi(x):
        x, w64 = x.double(), w.double()
        return torch.exp(x @ w64.T - x.pow(2).sum(-1, keepdim=True) / 2) / math.sqrt(1024)

    expected = paper_phi(q) @ paper_phi(k).T
    expected = expected / expected.sum(-1, keepdim=True)
    got = favor_features(q, w, is_query=True) @ favor_features(k, w, is_query=False).T
    got = (got / got.sum(-1, keepdim=True)).double()
    assert ((got - expected).abs() / expected).max() < 1e-2


def _performer_error(num_features: int, seed: int) -> tuple[float, float, float]:
    """Mean |Performer - softmax| of the outputs and of the maps, and mean |softmax output|,
    for one draw of the random features; same qkv / proj weights."""
    torch.manual_seed(seed)
    ref = Attention(DIM, num_heads=2)
    x = torch.randn(2, 17, DIM)
    performer = _copy_into(PerformerAttention(DIM, num_heads=2, num_features=num_features), ref)
    with torch.no_grad():
        expected, softmax_map = ref(x, return_attention=True)
        out, attn = performer(x, return_attention=True)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 17), atol=1e-5, rtol=0)
    with torch.no_grad():  # the linear-time output is the materialised map applied to V
        torch.testing.assert_close(
            out, _merge(ref, attn, ref.split_heads(x)[2]), rtol=1e-4, atol=1e-6
        )
    return (
        (out - expected).abs().mean().item(),
        (attn - softmax_map).abs().mean().item(),
        expected.abs().mean().item(),
    )


def test_performer_approximates_softmax_attention_better_with_more_features():
    """Mean absolute error against softmax attention, averaged over 5 seeds (x, weights and
    features), Dh 16, N 17. Measured: outputs 0.042, 0.020, 0.0087 at M = 16, 128, 1024 with
    mean |softmax output| 0.122, i.e. 7.1% of it at M = 1024; maps 0.022, 0.010, 0.0046
    (entries average 1/17 = 0.059). Tolerance at M = 1024: 10% of the output's scale and 10%
    of a map entry."""
    errors = {}
    for m in (16, 128, 1024):
        runs = [_performer_error(m, seed) for seed in range(5)]
        errors[m] = [sum(r[i] for r in runs) / len(runs) for i in range(3)]
    out_err, map_err = [errors[m][0] for m in errors], [errors[m][1] for m in errors]
    assert out_err[0] > out_err[1] > out_err[2]
    assert map_err[0] > map_err[1] > map_err[2]
    assert out_err[2] < 0.1 * errors[1024][2]
    assert map_err[2] < 0.1 / 17


def test_performer_projection_is_saved_and_not_trained():
    performer = PerformerAttention(DIM, num_heads=HEADS, num_features=12)
    assert performer.projection.shape == (12, DH)
    assert "projection" in performer.state_dict()
    assert "projection" not in dict(performer.named_parameters())
    with pytest.raises(ValueError, match="at least 1 random feature"):
        PerformerAttention(DIM, num_heads=HEADS, num_features=0)


def test_build_attention_kinds_and_errors():
    kw = dict(num_heads=HEADS, qkv_bias=True, performer_features=8)
    built = {kind: build_attention(kind, DIM, **kw) for kind in ATTENTION_KINDS}
    assert type(built["softmax"]) is Attention
    assert type(built["reattention"]) is ReAttention
    assert type(built["performer"]) is PerformerAttention
    assert built["performer"].projection.shape == (8, DH)
    assert build_attention("softmax", DIM, **{**kw, "qkv_bias": False}).qkv.bias is None
    with pytest.raises(ValueError, match="unknown attention 'linear'.*softmax.*performer"):
        build_attention("linear", DIM, **kw)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        build_attention("performer", 30, **kw)
