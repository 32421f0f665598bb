"""The from-scratch ViT against timm, analytic values and its own contracts."""

import math

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from vitlib.model import ARCHITECTURES, build_vit, resample_pos_embed, sincos_pos_embed_2d

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)


def _pair(arch: str, **kwargs):
    """A random-init timm model and a vitlib model holding the same weights, eval mode."""
    torch.manual_seed(0)
    reference = timm.create_model(arch, pretrained=False, **kwargs).eval()
    ours = build_vit(arch, **kwargs).eval()
    ours.load_state_dict(reference.state_dict())
    return reference, ours


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_state_dict_keys_and_shapes_equal_timm(arch):
    with torch.device("meta"):  # shapes only: no memory, no init time
        reference = timm.create_model(arch, pretrained=False, num_classes=1000).state_dict()
        ours = build_vit(arch).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in reference.items()
    }


@pytest.mark.parametrize(
    "arch, params",
    [  # the paper / big_vision parameter counts at 224 px, 1000 classes
        ("vit_tiny_patch16_224", 5_717_416),
        ("vit_small_patch16_224", 22_050_664),
        ("vit_base_patch16_224", 86_567_656),
    ],
)
def test_parameter_counts(arch, params):
    assert sum(p.numel() for p in build_vit(arch).parameters()) == params


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "vit_base_patch16_224"])
def test_logits_equal_timm_both_directions(arch):
    reference, ours = _pair(arch)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() <= 1e-5
        # the reverse direction: vitlib weights exported into a fresh timm model
        back = timm.create_model(arch, pretrained=False).eval()
        back.load_state_dict(ours.state_dict())
        assert (back(x) - ours(x)).abs().max() <= 1e-5


def test_global_average_pooling_equals_timm():
    reference, ours = _pair("vit_tiny_patch16_224", global_pool="avg")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() <= 1e-5


def test_returned_attention_matches_hand_computation_from_qkv():
    torch.manual_seed(0)
    model = build_vit("vit_custom", **TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, attentions = model(x, return_attention=True)
        assert torch.allclose(logits, model(x), atol=1e-5)  # same output as the fused path
        # Layer 0 by hand: tokens -> LN -> qkv -> softmax(q k^T / sqrt(Dh)).
        tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([model.cls_token.expand(3, -1, -1), tokens], 1) + model.pos_embed
        h = model.blocks[0].norm1(tokens)
        w, b = model.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.bias
        heads, dh = 4, 8
        q, k, _ = (h @ w.T + b).split(32, dim=-1)
        q = q.reshape(3, -1, heads, dh).transpose(1, 2)
        k = k.reshape(3, -1, heads, dh).transpose(1, 2)
        expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
    assert len(attentions) == 2
    assert attentions[0].shape == (3, heads, 17, 17)
    assert torch.allclose(attentions[0], expected, atol=1e-6)
    for attn in attentions:
        assert torch.allclose(attn.sum(-1), torch.ones(3, heads, 17), atol=1e-6)


def test_every_parameter_gets_a_gradient_and_no_nans():
    model = build_vit("vit_custom", num_classes=2, **TINY)
    model.head.weight.data.normal_()  # a zero head would block the gradient to the backbone
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_attention_stays_in_the_graph():
    model = build_vit("vit_custom", num_classes=2, **TINY)
    logits, attentions = model(torch.randn(1, 3, 32, 32), return_attention=True)
    assert all(a.requires_grad for a in attentions)


def test_head_reset_freeze_and_features():
    model = build_vit("vit_custom", **TINY)
    model.reset_classifier(2)
    assert model.head.weight.shape == (2, 32) and model.num_classes == 2
    model.freeze_backbone()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    model.unfreeze()
    assert all(p.requires_grad for p in model.parameters())
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    features = model.extract_features(x)
    assert features.shape == (4, 32)
    with torch.no_grad():
        assert torch.allclose(model.head(features), model(x), atol=1e-6)


@pytest.mark.parametrize("new_grid", [7, 24])
def test_pos_embed_resampling_matches_timm(new_grid):
    pos = torch.randn(1, 1 + 14 * 14, 64)
    ours = resample_pos_embed(pos, new_grid)
    reference = resample_abs_pos_embed(pos, (new_grid, new_grid), num_prefix_tokens=1)
    assert ours.shape == (1, 1 + new_grid**2, 64)
    assert torch.allclose(ours, reference, atol=1e-6)
    assert torch.equal(ours[:, :1], pos[:, :1])  # the class token is kept


def test_sincos_embedding_follows_the_formula():
    """Simple ViT's 2D sin-cos (arXiv 2205.01580), entry by entry: for patch (row y, col x)
    and k < D/4, w_k = 10000^(-k / (D/4)), columns sin(x w_k), cos(x w_k), sin(y w_k),
    cos(y w_k); rows in row-major patch order."""
    grid, dim = 3, 16
    quarter = dim // 4
    emb = sincos_pos_embed_2d(grid, dim)
    assert emb.shape == (grid * grid, dim)
    for y in range(grid):
        for x in range(grid):
            for k in range(quarter):
                w = 10_000 ** (-k / quarter)
                row = emb[y * grid + x]
                assert row[k].item() == pytest.approx(math.sin(x * w), abs=1e-6)
                assert row[quarter + k].item() == pytest.approx(math.cos(x * w), abs=1e-6)
                assert row[2 * quarter + k].item() == pytest.approx(math.sin(y * w), abs=1e-6)
                assert row[3 * quarter + k].item() == pytest.approx(math.cos(y * w), abs=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(3, 18)


@pytest.mark.parametrize("class_token", [True, False])
def test_sincos_position_embedding_is_a_fixed_buffer_with_zero_prefix_rows(class_token):
    pool = "token" if class_token else "avg"
    model = build_vit(
        "vit_custom", **TINY, pos_embed="sincos", class_token=class_token, global_pool=pool
    )
    prefix = int(class_token)
    assert model.num_prefix_tokens == prefix
    assert model.pos_embed.shape == (1, prefix + 16, 32)
    assert "pos_embed" not in dict(model.named_parameters())
    assert "pos_embed" not in model.state_dict()  # non-persistent: rebuilt, never loaded
    assert "pos_embed" in dict(model.named_buffers())
    assert torch.equal(model.pos_embed[0, :prefix], torch.zeros(prefix, 32))
    assert torch.equal(model.pos_embed[0, prefix:], sincos_pos_embed_2d(4, 32))
    learned = build_vit("vit_custom", **TINY, class_token=class_token, global_pool=pool)
    assert set(model.state_dict()) == set(learned.state_dict()) - {"pos_embed"}


def test_no_class_token_with_average_pooling_equals_timm():
    torch.manual_seed(0)
    kw = dict(TINY, class_token=False, global_pool="avg", num_classes=5)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw).eval()
    ours = build_vit("vit_custom", **kw).eval()
    assert ours.cls_token is None and ours.num_prefix_tokens == 0
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert reference(x).abs().max() > 0.1  # timm's head is not zero: a real comparison
        assert (ours(x) - reference(x)).abs().max() <= 1e-5


def test_distilled_model_loads_timms_deit_and_matches_both_heads():
    """timm's deit_tiny_distilled (random init, shrunk): its state dict loads unchanged; eval
    logits are the two heads' average, and forward_distilled gives timm's training-time
    (class head, distillation head) pair."""
    torch.manual_seed(0)
    kw = dict(TINY, num_classes=5)
    reference = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, **kw)
    ours = build_vit("vit_custom", **kw, distilled=True)
    assert ours.num_prefix_tokens == 2 and ours.pos_embed.shape == (1, 2 + 16, 32)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 32, 32)
    reference.eval()
    ours.eval()
    with torch.no_grad():
        expected = reference(x)
        assert (ours(x) - expected).abs().max() <= 1e-5
        reference.set_distilled_training(True)
        reference.train()  # no dropout in either: train mode only switches timm's output
        cls_ref, dist_ref = reference(x)
        cls, dist = ours.forward_distilled(x)
    assert (cls - cls_ref).abs().max() <= 1e-5 and (dist - dist_ref).abs().max() <= 1e-5
    assert (cls - dist).abs().max() > 1e-3  # two different heads, not one twice
    torch.testing.assert_close((cls + dist) / 2, expected, atol=1e-5, rtol=0)


def test_distilled_heads_reset_and_train_together():
    model = build_vit("vit_custom", **TINY, distilled=True)
    model.reset_classifier(3)
    assert model.head.weight.shape == model.head_dist.weight.shape == (3, 32)
    assert model.head_dist.weight.abs().sum() == 0
    assert model.heads() == [model.head, model.head_dist]
    model.freeze_backbone()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    with pytest.raises(ValueError, match="distilled=True"):
        build_vit("vit_custom", **TINY).forward_distilled(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(class_token=False), "needs class_token=True"),
        (dict(distilled=True, global_pool="avg"), "distilled=True needs the class token"),
        (dict(pos_embed="rope"), "pos_embed must be 'learn' or 'sincos'"),
        (dict(attention="flash"), "attention must be one of"),
        (dict(global_pool="max"), "global_pool must be 'token' or 'avg'"),
    ],
)
def test_inconsistent_variant_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        build_vit("vit_custom", **TINY, **options)


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_vit("vit_gigantic")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_vit("vit_custom", img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        build_vit("vit_custom", embed_dim=30, num_heads=4)
    model = build_vit("vit_custom", **TINY)
    with pytest.raises(ValueError, match="expected images of 32x32"):
        model(torch.randn(1, 3, 64, 64))


def test_one_list_of_heads_for_freezing_loading_and_fingerprints():
    plain = build_vit("vit_custom", num_classes=2, img_size=16, patch_size=8, embed_dim=32,
                      depth=1, num_heads=2)  # fmt: skip
    deit = build_vit("vit_custom", num_classes=2, img_size=16, patch_size=8, embed_dim=32,
                     depth=1, num_heads=2, distilled=True)  # fmt: skip
    assert plain.head_names == ("head",) and deit.head_names == ("head", "head_dist")
    assert deit.is_head_key("head_dist.weight") and not plain.is_head_key("head_dist.weight")
    assert not deit.is_head_key("blocks.0.attn.qkv.weight") and not deit.is_head_key("header")
    deit.freeze_backbone()
    trainable = {n for n, p in deit.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}


def test_using_mode_sets_the_mode_and_restores_it_even_on_an_error():
    from vitlib.model import using_mode

    net = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.BatchNorm1d(2)).train()
    with using_mode(net, training=False) as same:
        assert same is net and not net.training and not net[1].training
    assert net.training and net[1].training
    net.eval()
    with pytest.raises(RuntimeError), using_mode(net, training=True):
        assert net[0].training
        raise RuntimeError
    assert not net.training and not net[0].training


@pytest.mark.parametrize("img_size,patch_size,stem", [(32, 8, 3), (32, 8, 2), (64, 16, 4)])
def test_conv_stem_keeps_the_token_grid_and_trains_end_to_end(img_size, patch_size, stem):
    torch.manual_seed(0)
    kw = dict(img_size=img_size, patch_size=patch_size, embed_dim=32, depth=1, num_heads=2)
    plain = build_vit("vit_custom", num_classes=2, **kw)
    model = build_vit("vit_custom", num_classes=2, conv_stem=stem, **kw)
    x = torch.randn(3, 3, img_size, img_size)
    grid = img_size // patch_size
    assert model.patch_embed(x).shape == plain.patch_embed(x).shape == (3, grid * grid, 32)
    assert model.grid_size == grid and model.pos_embed.shape == plain.pos_embed.shape
    convs = [m for m in model.patch_embed.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * stem  # k stride-2 3x3 layers, widths doubling
    assert [c.kernel_size for c in convs] == [(3, 3)] * stem
    assert [c.out_channels for c in convs] == [max(8, 32 >> (stem - i)) for i in range(stem)]
    assert model.patch_embed.proj.kernel_size == (patch_size >> stem,) * 2
    # Moving one pixel changes its own patch's token and at most the 8 around it (the 3x3
    # receptive fields reach across patch borders): the tokens still tile the image in order.
    model.eval()
    y = x.clone()
    at = patch_size + patch_size // 2  # inside patch (1, 1)
    y[:, :, at, at] += 10.0
    changed = (model.patch_embed(y) - model.patch_embed(x)).abs().sum(dim=(0, 2)) > 1e-6
    rows, cols = torch.nonzero(changed.view(grid, grid), as_tuple=True)
    assert changed.view(grid, grid)[1, 1]
    assert (rows - 1).abs().max() <= 1 and (cols - 1).abs().max() <= 1
    model.train()
    model.head.weight.data.normal_()  # a zero head would stop every gradient below it
    model(x).logsumexp(dim=1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert "patch_embed.stem.0.weight" in model.state_dict()
    assert not any(".stem." in k for k in plain.state_dict())  # conv_stem=0: timm's keys


def test_conv_stem_errors_and_has_no_timm_twin():
    from vitlib.checkpoints import export_to_timm

    with pytest.raises(ValueError, match="divisible by 2\\*\\*4"):
        build_vit("vit_custom", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                  conv_stem=4)  # fmt: skip
    model = build_vit("vit_custom", img_size=32, patch_size=8, embed_dim=32, depth=1,
                      num_heads=2, conv_stem=2)  # fmt: skip
    with pytest.raises(ValueError, match="conv_stem=2"):
        export_to_timm(model)
