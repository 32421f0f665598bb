"""The masked autoencoder: masks, patches, the loss by hand, the encoder on visible tokens
only, and masked pixels never reaching it (with and without a conv stem)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitlib.config import get_config
from vitlib.errors import ConfigError
from vitlib.mae import MaskedAutoencoder, mae_loss, patchify, random_masking, unpatchify
from vitlib.model import build_vit

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)


def tiny_mae(seed: int = 0, **arch) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    encoder = build_vit("vit_custom", num_classes=2, **{**TINY, **arch})
    return MaskedAutoencoder(encoder, decoder_dim=16, decoder_depth=1, decoder_heads=2)


def test_masking_hides_the_ratio_of_each_image_and_the_visible_ones_are_the_kept():
    m = random_masking(5, 64, 0.75)
    assert m.keep.shape == (5, 16) and m.mask.shape == m.restore.shape == (5, 64)
    assert m.mask.sum(1).tolist() == [48.0] * 5
    for b in range(5):
        assert m.mask[b, m.keep[b]].sum() == 0  # every kept patch is visible
        assert sorted(m.keep[b].tolist()) == sorted(torch.nonzero(m.mask[b] == 0)[:, 0].tolist())


def test_each_image_draws_its_own_mask_uniformly():
    m = random_masking(4000, 16, 0.75, generator=torch.Generator().manual_seed(0)).mask
    assert (m.mean(0) - 0.75).abs().max() < 0.03  # each patch masked 3/4 of the time
    # two images' masks are independent: P(both masked) = 0.75^2 (pairs of rows)
    assert abs(float((m[0::2] * m[1::2]).mean()) - 0.75**2) < 0.02
    assert len({tuple(r.tolist()) for r in m[:50]}) > 40  # not one mask for the whole batch


def test_the_restore_order_puts_kept_and_masked_tokens_back_in_patch_order():
    m = random_masking(3, 10, 0.6, generator=torch.Generator().manual_seed(1))
    tokens = torch.arange(30.0).reshape(3, 10, 1)  # token value = its position
    shuffle = m.restore.argsort(1)
    shuffled = tokens.gather(1, shuffle[..., None])
    assert torch.equal(shuffled[:, :4, 0], tokens.gather(1, m.keep[..., None])[..., 0])
    assert torch.equal(shuffled.gather(1, m.restore[..., None]), tokens)


def test_bad_mask_ratios_are_refused():
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        random_masking(2, 16, 1.0)
    with pytest.raises(ValueError, match="no visible patch"):
        random_masking(2, 4, 0.9)
    with pytest.raises(ConfigError, match="pretrain.mask_ratio"):
        get_config("smoke", {"pretrain.mask_ratio": 1.0})
    with pytest.raises(ConfigError, match="pretrain.decoder_dim"):
        get_config("smoke", {"pretrain.decoder_dim": 30})


def test_patchify_takes_each_patch_row_major_and_unpatchify_inverts_it():
    images = torch.randn(2, 3, 16, 16)
    patches = patchify(images, 8)
    assert patches.shape == (2, 4, 8 * 8 * 3)
    top_right = images[1, :, :8, 8:].permute(1, 2, 0).reshape(-1)  # (row, col, channel)
    assert torch.equal(patches[1, 1], top_right)
    assert torch.equal(unpatchify(patches, 8), images)


def test_the_loss_counts_masked_patches_only_by_hand():
    pred = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 3.0], [2.0, 4.0]]])
    only_first = torch.tensor([[1.0, 0.0]])
    only_second = torch.tensor([[0.0, 1.0]])
    assert float(mae_loss(pred, target, only_first, norm_pix=False)) == 5.0  # (1 + 9) / 2
    assert float(mae_loss(pred, target, only_second, norm_pix=False)) == 10.0  # (4 + 16) / 2
    # normalised per patch: [2, 4] -> mean 3, unbiased variance 2 -> [-1, 1] / sqrt(2 + 1e-6)
    expected = 1 / (2 + 1e-6)
    assert math.isclose(float(mae_loss(pred, target, only_second)), expected, rel_tol=1e-6)
    assert math.isclose(float(mae_loss(pred, target, torch.ones(1, 2))), expected, rel_tol=1e-6)


def test_the_encoder_sees_only_the_visible_tokens():
    mae = tiny_mae()
    seen = []
    mae.encoder.blocks[0].register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
    loss, pred, mask = mae(torch.randn(3, 3, 32, 32))
    assert seen == [(3, 1 + 4, 32)]  # the class token and 16 * (1 - 0.75) patches
    assert pred.shape == (3, 16, 8 * 8 * 3) and mask.shape == (3, 16)
    masking = mae.mask(3)
    with FlopCounterMode(display=False) as masked:
        mae.forward_encoder(torch.randn(3, 3, 32, 32), masking)
    with FlopCounterMode(display=False) as whole:
        mae.encoder.forward_features(torch.randn(3, 3, 32, 32))
    embed = 2 * 3 * 16 * 32 * (8 * 8 * 3)  # the patch projection runs on all 16 patches
    # the blocks: 17 tokens against 5, attention quadratic in them: more than 3x the FLOPs
    assert whole.get_total_flops() - embed > 3 * (masked.get_total_flops() - embed)


@pytest.mark.parametrize("conv_stem", [0, 2])
def test_masked_pixels_never_reach_the_encoder(conv_stem):
    mae = tiny_mae(conv_stem=conv_stem).eval()
    images = torch.randn(2, 3, 32, 32)
    masking = mae.mask(2)
    hidden = masking.mask.reshape(2, 1, 4, 4).repeat_interleave(8, 2).repeat_interleave(8, 3)
    changed = images + 5 * torch.randn_like(images) * hidden  # new pixels in masked patches only
    with torch.no_grad():
        a, b = mae.forward_encoder(images, masking), mae.forward_encoder(changed, masking)
    assert torch.allclose(a, b, atol=1e-5)
