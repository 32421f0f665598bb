"""Tests of vitlib.resume: fingerprints of the fixed parts a checkpoint does not hold."""

from __future__ import annotations

import torch
from training import TINY, tiny_model

from vitlib import resume
from vitlib.checkpoints import create_model


def test_a_distilled_models_fingerprint_leaves_out_both_heads():
    model = tiny_model()
    deit = create_model("vit_custom", num_classes=2, distilled=True, **TINY)
    before = resume.backbone_fingerprint(deit)
    with torch.no_grad():
        deit.head_dist.weight.add_(1.0)
        deit.head.bias.add_(1.0)
    assert resume.backbone_fingerprint(deit) == before
    with torch.no_grad():
        deit.pos_embed.add_(1.0)
    assert resume.backbone_fingerprint(deit) != before
    assert resume.backbone_fingerprint(model) != before
