"""MAE pre-training throughput against a plain forward+backward of the same encoder.

    python -m benchmarks.bench_pretrain [--profile cpu] [--quick] [--set pretrain.mask_ratio=0.9
                                        --tag mask90]

One optimisation step (forward, backward, AdamW) on a batch of random images at the profile's
model and pre-training batch size: MAE (encoder on the visible patches only, light decoder,
masked-patch loss) against the encoder seeing every patch with a classification loss. Images/s
and FLOPs per image (counted with FlopCounterMode); the paper reports MAE's encoder at 75%
masking costs about a third of the full encoder's FLOPs (He et al. 2021, section 4.1). The
steps take turns, median over rounds. Writes benchmarks/results/pretrain_<profile>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import format_table, time_side_by_side, write_result
from vitlib.config import get_config
from vitlib.mae import build_mae
from vitlib.pretrain import encoder_model
from vitlib.recipe import make_optimizer


def _steps(cfg, device: str) -> tuple[dict, dict]:
    """{name: one optimisation step} and {name: FLOPs per image} for MAE and the plain model."""
    batch = cfg.pretrain.train.batch_size
    size = cfg.model.img_size or 224
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, cfg.model.num_classes, (batch,), device=device)
    mae = build_mae(encoder_model(cfg), cfg.pretrain).to(device).train()
    plain = encoder_model(cfg).to(device).train()
    opt_mae = make_optimizer(mae, cfg.pretrain.train)
    opt_plain = make_optimizer(plain, cfg.pretrain.train)

    def mae_loss():
        return mae(images)[0]

    def plain_loss():
        return F.cross_entropy(plain(images), labels)

    def step(loss_fn, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()

        return run

    flops = {}
    for name, loss_fn in (("mae", mae_loss), ("plain", plain_loss)):
        with FlopCounterMode(display=False) as counter:
            loss_fn().backward()
        flops[name] = counter.get_total_flops() / batch
    return {"mae": step(mae_loss, opt_mae), "plain": step(plain_loss, opt_plain)}, flops


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 10")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--tag", default="", help="results/pretrain_<profile>_<tag>.json")
    args = parser.parse_args(argv)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = get_config(args.profile, overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    steps, flops = _steps(cfg, device)
    seconds = time_side_by_side(steps, device=device, repeats=3 if args.quick else 10)
    batch = cfg.pretrain.train.batch_size
    rows = [
        {
            "step": name,
            "images_per_s": batch / seconds[name],
            "gflops_per_image": flops[name] / 1e9,
            "seconds_per_step": seconds[name],
        }
        for name in steps
    ]
    result = {
        "profile": args.profile,
        "device": device,
        "batch_size": batch,
        "img_size": cfg.model.img_size,
        "arch_kwargs": cfg.model.arch_kwargs,
        "pretrain": dataclasses.asdict(cfg.pretrain),
        "rows": rows,
        "speedup": seconds["plain"] / seconds["mae"],
        "flops_ratio": flops["plain"] / flops["mae"],
    }
    result["overrides"] = overrides
    write_result("_".join(filter(None, ("pretrain", args.profile, args.tag))), result)
    print(format_table(rows, ["step", "images_per_s", "gflops_per_image", "seconds_per_step"]))
    print(f"MAE step {result['speedup']:.2f}x the images/s of the plain step; "
          f"{result['flops_ratio']:.2f}x fewer FLOPs per image")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
