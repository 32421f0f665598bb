"""Tests of vitlib.recipe: which parameters decay, the optimisers, the schedule against torch's."""

from __future__ import annotations

import math

import pytest
import torch

from vitlib.config import TrainConfig
from vitlib.model import build_vit
from vitlib.recipe import (
    hard_distillation_loss,
    make_optimizer,
    make_scheduler,
    parameter_groups,
)

TINY = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def names_in(groups, net, decay: bool) -> set[str]:
    ids = {id(p) for g in groups if (g["weight_decay"] > 0) == decay for p in g["params"]}
    return {n for n, p in net.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("options", [{}, {"distilled": True}])
def test_only_weight_matrices_decay_not_norms_biases_embeddings_or_tokens(options):
    net = build_vit("vit_custom", num_classes=2, **TINY, **options)
    groups = parameter_groups(net, 0.05)
    decayed = names_in(groups, net, decay=True)
    kept = names_in(groups, net, decay=False)
    assert decayed | kept == {n for n, _ in net.named_parameters()} and not decayed & kept
    for name in kept:
        assert name.endswith(".bias") or "norm" in name or name in net.no_weight_decay(), name
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "head.bias"} <= kept
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "head.weight"} <= decayed
    if options:
        assert "dist_token" in kept and "head_dist.weight" in decayed


def test_adamw_leaves_exempt_parameters_alone_and_shrinks_the_rest():
    """With zero gradients AdamW's only change is the decoupled decay, w <- w (1 - lr wd)."""
    net = build_vit("vit_custom", num_classes=2, **TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
            p.grad = torch.zeros_like(p)
    tc = TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.5)
    make_optimizer(net, tc).step()
    assert torch.all(net.pos_embed == 1) and torch.all(net.cls_token == 1)
    assert torch.all(net.blocks[0].norm1.weight == 1) and torch.all(net.head.bias == 1)
    torch.testing.assert_close(net.head.weight, torch.full_like(net.head.weight, 0.95))


def test_frozen_parameters_are_in_no_group():
    net = build_vit("vit_custom", num_classes=2, **TINY)
    net.freeze_backbone()
    assert names_in(parameter_groups(net, 0.1), net, decay=True) == {"head.weight"}
    assert names_in(parameter_groups(net, 0.1), net, decay=False) == {"head.bias"}


def lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_cosine_without_warmup_is_torchs_cosine_annealing_step_by_step():
    steps_per_epoch, epochs = 7, 3
    tc = TrainConfig(epochs=epochs, lr=0.01)
    ours_opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=tc.lr)
    torch_opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=tc.lr)
    ours = lrs(make_scheduler(ours_opt, tc, steps_per_epoch), ours_opt, epochs * steps_per_epoch)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(torch_opt, T_max=21)
    theirs = lrs(reference, torch_opt, epochs * steps_per_epoch)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)


def test_warmup_then_cosine_by_hand_and_constant():
    tc = TrainConfig(epochs=2, lr=1.0, warmup_epochs=0.5)  # 4 steps per epoch: warm-up of 2
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=tc.lr)
    got = lrs(make_scheduler(opt, tc, 4), opt, 8)
    cosine = [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert got == pytest.approx([0.5, 1.0, *cosine])
    flat = TrainConfig(epochs=2, lr=1.0, schedule="constant", warmup_epochs=1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=flat.lr)
    assert lrs(make_scheduler(opt, flat, 4), opt, 8) == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]
    )


def test_hard_distillation_loss_on_a_hand_computed_case():
    """DeiT eq. 3: (CE(class logits, labels) + CE(distillation logits, teacher's labels)) / 2,
    with CE(z, y) = log(sum_j exp z_j) - z_y averaged over the batch."""
    cls = torch.tensor([[2.0, 0.0], [0.5, 1.5]])
    dist = torch.tensor([[0.0, 1.0], [1.0, -1.0]])
    labels, teacher = torch.tensor([0, 1]), torch.tensor([1, 1])  # the teacher errs on sample 0

    def ce(z, y):
        return math.log(sum(math.exp(v) for v in z)) - z[y]

    by_hand = (
        (ce([2.0, 0.0], 0) + ce([0.5, 1.5], 1)) / 2 + (ce([0.0, 1.0], 1) + ce([1.0, -1.0], 1)) / 2
    ) / 2
    loss = hard_distillation_loss(cls, dist, labels, teacher)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    # A teacher that agrees with the labels and one head reading both: plain cross-entropy.
    plain = torch.nn.functional.cross_entropy(cls, labels)
    assert hard_distillation_loss(cls, cls, labels, labels).item() == pytest.approx(plain.item())
    assert abs(hard_distillation_loss(cls, cls, labels, teacher).item() - plain.item()) > 0.1


def test_label_smoothing_is_cross_entropy_against_the_smoothed_one_hot():
    from vitlib.config import TrainConfig
    from vitlib.recipe import training_loss

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    e = 0.2
    value, logits = training_loss(TrainConfig(label_smoothing=e))(net, x, y)
    target = torch.full((5, 3), e / 3)
    target[torch.arange(5), y] += 1 - e
    by_hand = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-6)
    plain, _ = training_loss(TrainConfig())(net, x, y)
    assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item())
    assert plain.item() != pytest.approx(value.item())
