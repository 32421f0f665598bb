"""The split: which labelled image goes to train, val, test or is left unused.

Deterministic (a hash of seed and path orders each class, so every machine gets the same split
from the same files), stratified (each split in proportion to the classes), sized by
`split_sizes` (report section 3.1: 20,000 / 2,000 / 2,000), for one pool or a pre-split folder.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np

from vitlib.errors import DataError

__all__ = ["SPLITS", "UNUSED", "split_items"]

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
UNUSED = "unused"  # manifest rows beyond split_sizes: listed, so no good image goes missing


def split_items(
    files: Iterable[tuple[str, str, str | None]],
    split_sizes: Sequence[int],
    *,
    seed: int = 0,
) -> list[tuple[str, str, str]]:
    """Assign (path, class, source split or None) items to train/val/test/unused.

    One pool (no source splits): val, then test, then train are drawn from it, each stratified
    (in proportion to the classes left in the pool, largest remainders) with `split_sizes`
    (train, val, test) images; the rest is "unused". Pre-split: each present split is kept
    (subsampled to its size when larger); a missing val or test is carved out of train,
    stratified, before train's own draw. If a pool is smaller than what is asked of it, the
    sizes are scaled down in proportion (logged). Each class is ordered by sha256(seed, path): the same seed and files
    give the same split everywhere, whatever order the files were listed in, and val/test do
    not change when only the train size does.
    """
    sizes = dict(zip(SPLITS, (int(s) for s in split_sizes), strict=True))
    pools: dict[str | None, list[tuple[str, str]]] = {}
    for path, cls, source in files:
        pools.setdefault(source, []).append((path, cls))
    if set(pools) == {None}:
        plan = {None: ["val", "test", "train"]}
    else:
        if None in pools or "train" not in pools:
            raise DataError("a pre-split folder needs usable images in train/ to split")
        missing = [s for s in ("val", "test") if s not in pools]
        plan = {s: ([*missing, "train"] if s == "train" else [s]) for s in pools}
    rows: list[tuple[str, str, str]] = []
    for source, targets in plan.items():
        rows += _draw(pools[source], [(t, sizes[t]) for t in targets], seed, source)
    order = {s: i for i, s in enumerate((*SPLITS, UNUSED))}
    return sorted(rows, key=lambda r: (order[r[2]], r[0]))


def _draw(
    pool: list[tuple[str, str]], targets: list[tuple[str, int]], seed: int, source: str | None
) -> list[tuple[str, str, str]]:
    asked = sum(n for _, n in targets)
    if len(targets) == 1:  # a split of a pre-split folder: kept whole, or subsampled
        targets = [(targets[0][0], min(asked, len(pool)))]
    elif asked > len(pool):  # val, test, train from one pool: scaled, train takes the rest
        scaled = [n * len(pool) // asked for _, n in targets]
        scaled[-1] += len(pool) - sum(scaled)
        log.warning(
            "%s has %d images, %d asked (%s); using %s",
            f"{source}/" if source else "the folder",
            len(pool),
            asked,
            ", ".join(f"{t} {n}" for t, n in targets),
            ", ".join(f"{t} {n}" for (t, _), n in zip(targets, scaled, strict=True)),
        )
        targets = [(t, n) for (t, _), n in zip(targets, scaled, strict=True)]
    by_class: dict[str, list[str]] = {}
    for path, cls in pool:
        by_class.setdefault(cls, []).append(path)
    classes = sorted(by_class)
    for cls in classes:
        by_class[cls].sort(key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).digest())
    counts = np.array([len(by_class[c]) for c in classes])
    taken = np.zeros_like(counts)
    rows = []
    for name, n in targets:
        quota = _apportion(n, counts - taken, counts - taken)  # in proportion to what is left
        for c, cls in enumerate(classes):
            rows += [(p, cls, name) for p in by_class[cls][taken[c] : taken[c] + quota[c]]]
        taken += quota
    for c, cls in enumerate(classes):
        rows += [(p, cls, UNUSED) for p in by_class[cls][taken[c] :]]
    return rows


def _apportion(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """`total` split in proportion to `weights` (largest remainders), each part <= its cap."""
    raw = total * weights / max(weights.sum(), 1)
    quota = np.minimum(np.floor(raw).astype(int), caps)
    order = sorted(range(len(weights)), key=lambda i: (-(raw[i] - math.floor(raw[i])), i))
    while quota.sum() < total:
        for i in order:
            if quota.sum() < total and quota[i] < caps[i]:
                quota[i] += 1
    return quota
