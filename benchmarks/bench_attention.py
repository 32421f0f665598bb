"""Attention cost against sequence length: Performer FAVOR+ against softmax attention.

    python -m benchmarks.bench_attention [--quick]          # -> results/attention.json

One attention layer at the `cpu` profile's width (D 192, 3 heads), forward + backward on one
sequence of N tokens, N = 256, 1024, 4096, 16384 (a 16x16 to 128x128 patch grid). Four kinds:
softmax with PyTorch's fused kernel (what vitlib's ViT runs), softmax with the N x N map
materialised (the paper's formulation, and what `return_attention` and re-attention need),
DeepViT re-attention, and Performer with 64 random features. For each: median seconds and the
peak bytes of tensors the forward keeps for backward (`vitlib.variants.peak_tensor_memory`),
and the growth of both per 4x tokens (1 = constant, 4 = linear, 16 = quadratic). Cases whose
N x N maps would pass MAX_MAP_BYTES are skipped.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import format_table, time_call, write_result
from vitlib.attention import build_attention
from vitlib.variants import peak_tensor_memory

EMBED_DIM, NUM_HEADS, FEATURES = 192, 3, 64
TOKENS = (256, 1024, 4096, 16384)
KINDS = ("softmax (fused)", "softmax (materialised)", "reattention", "performer")
MAX_MAP_BYTES = 4 * 2**30  # one (H, N, N) float32 map: 3 GiB at N = 16384


def _layer(kind: str) -> torch.nn.Module:
    base = kind.split(" ")[0]
    return build_attention(
        base, EMBED_DIM, num_heads=NUM_HEADS, qkv_bias=True, performer_features=FEATURES
    ).train()


def _forward(layer: torch.nn.Module, x: torch.Tensor, materialise: bool) -> Callable[[], Any]:
    return lambda: layer(x, return_attention=materialise)[0]


def _step(forward: Callable[[], Any]) -> Callable[[], None]:
    return lambda: forward().sum().backward()


def run(quick: bool = False) -> dict[str, Any]:
    torch.manual_seed(0)
    tokens = TOKENS[:3] if quick else TOKENS
    rows = []
    for kind in KINDS:
        layer = _layer(kind)
        materialise = kind == "softmax (materialised)"
        for n in tokens:
            quadratic = kind in ("softmax (materialised)", "reattention")
            if quadratic and 2 * NUM_HEADS * n * n * 4 > MAX_MAP_BYTES:
                rows.append({"kind": kind, "tokens": n, "seconds": None, "mib": None})
                continue
            x = torch.randn(1, n, EMBED_DIM, requires_grad=True)
            forward = _forward(layer, x, materialise)
            mib = peak_tensor_memory(forward)
            seconds = time_call(_step(forward), device="cpu", repeats=3 if quick else 5, warmup=1)
            rows.append({"kind": kind, "tokens": n, "seconds": seconds, "mib": mib / 2**20})
            layer.zero_grad(set_to_none=True)
    _add_growth(rows)
    result = {
        "embed_dim": EMBED_DIM,
        "num_heads": NUM_HEADS,
        "performer_features": FEATURES,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    path = write_result("attention", result)
    print(format_table(rows, ["kind", "tokens", "seconds", "time_growth", "mib", "memory_growth"]))
    print(f"growth per 4x tokens: 4 = linear, 16 = quadratic -> {path}")
    return result


def _add_growth(rows: list[dict[str, Any]]) -> None:
    """Each row's seconds and MiB over the previous length's, same kind."""
    previous: dict[str, dict[str, Any]] = {}
    for row in rows:
        before = previous.get(row["kind"])
        for key, growth in (("seconds", "time_growth"), ("mib", "memory_growth")):
            ok = before and before[key] and row[key]
            row[growth] = row[key] / before[key] if ok else None
        previous[row["kind"]] = row


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(quick=parser.parse_args().quick)
