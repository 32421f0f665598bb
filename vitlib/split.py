"""The split: which labelled image goes to train, val, test or is left unused.

Deterministic (a hash of seed and group orders each class, so every machine gets the same split
from the same files), stratified (each split in proportion to the classes), sized by
`split_sizes` (report section 3.1: 20,000 / 2,000 / 2,000), for one pool, a pool beside given
splits (the bench layout's pre-train/ and test/) or a pre-split folder. Leak-free: the images
of one group (an image, its mirror and its near-copies, `vitlib.dedup`) go to one split
together, and a pool image with a copy in a given split or a labelled subset is kept out of
the splits that copy would leak into.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

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
    groups: Mapping[str, str] | None = None,
    train_only: Collection[str] = (),
) -> list[tuple[str, str, str]]:
    """Assign (path, class, source split or None) items to train/val/test/unused.

    The pool (items without a source split, or a pre-split folder's train/) gives every split
    the folder does not: val, then test, then train are drawn from it, each stratified (in
    proportion to the classes left, largest remainders) with `split_sizes` (train, val, test)
    images; the rest is "unused". A given split (val/, test/ of the folder) is kept, subsampled
    to its size when larger. If a pool is smaller than what is asked of it, the sizes are
    scaled down in proportion (logged).

    `groups` ({path: group key}; a path not in it is a group of its own) keeps near-copies
    together: a group is drawn whole into one split, so a split can fall short of its size by
    less than a group (logged). A pool group that holds an image of a given split is left
    unused (in train it would leak into that split); one whose key is in `train_only` (a copy
    of a labelled-subset photo a fine-tune will see) may go to train only. Groups are ordered
    by sha256(seed, key), per class (a mixed group counts as its most frequent class): the same
    seed and files give the same split everywhere, in any listing order, and val/test do not
    change when only the train size does.
    """
    sizes = dict(zip(SPLITS, (int(s) for s in split_sizes), strict=True))
    pools: dict[str | None, list[tuple[str, str]]] = {}
    for path, cls, source in files:
        pools.setdefault(source, []).append((path, cls))
    base = "train" if "train" in pools else None
    if base not in pools or (base == "train" and None in pools):
        raise DataError(
            "a pre-split folder needs usable images in train/ to split (or, in the bench "
            "layout, in its pre-train/ pool)"
        )
    key: Callable[[str], str] = (lambda p: groups.get(p, p)) if groups else (lambda p: p)
    given = {key(p) for source, pool in pools.items() if source != base for p, _ in pool}
    missing = [s for s in ("val", "test") if s not in pools]
    rows: list[tuple[str, str, str]] = []
    for source, pool in pools.items():
        targets = [*missing, "train"] if source == base else [source]
        rules = (given, set(train_only)) if source == base else (set(), set())
        rows += _draw(pool, [(t, sizes[t]) for t in targets], seed, source, key, *rules)
    order = {s: i for i, s in enumerate((*SPLITS, UNUSED))}
    return sorted(rows, key=lambda r: (order[r[2]], r[0]))


def _draw(
    pool: list[tuple[str, str]],
    targets: list[tuple[str, int]],
    seed: int,
    source: str | None,
    key: Callable[[str], str],
    barred: set[str],
    train_only: set[str],
) -> list[tuple[str, str, str]]:
    units: dict[str, list[tuple[str, str]]] = {}
    for path, cls in pool:
        units.setdefault(key(path), []).append((path, cls))
    rows = [(p, c, UNUSED) for k in sorted(barred & units.keys()) for p, c in units.pop(k)]
    if rows:
        log.warning(
            "%d %s images left unused: near-copies of images in a given split (%s)",
            len(rows), f"{source}/" if source else "pool", _some([p for p, _, _ in rows]),
        )  # fmt: skip
    targets = _fit(targets, sum(map(len, units.values())), source)
    tally = {k: Counter(c for _, c in members) for k, members in units.items()}
    by_class: dict[str, list[str]] = {}
    for k in sorted(units, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).digest()):
        by_class.setdefault(min(tally[k], key=lambda c: (-tally[k][c], c)), []).append(k)
    classes = sorted({c for t in tally.values() for c in t})
    left = Counter({c: sum(t[c] for t in tally.values()) for c in classes})
    for name, n in targets:
        rest = np.array([left[c] for c in classes])
        quota = _apportion(n, rest, rest)  # in proportion to what is left
        need = dict(zip(classes, quota.tolist(), strict=True))
        for cls in classes:
            for k in by_class.get(cls, []):
                if need[cls] <= 0:
                    break
                if k not in units or (k in train_only and name != "train"):
                    continue
                if all(m <= need[c] for c, m in tally[k].items()):
                    rows += [(p, c, name) for p, c in units.pop(k)]
                    need.update({c: need[c] - m for c, m in tally[k].items()})
                    left -= tally[k]
        if short := sum(need.values()):
            log.warning("%s: %d of %d images (near-copy groups are kept whole)", name, n - short, n)
    return rows + [(p, c, UNUSED) for k in sorted(units) for p, c in units[k]]


def _fit(targets: list[tuple[str, int]], size: int, source: str | None) -> list[tuple[str, int]]:
    """The sizes to draw from a pool of `size` images: a given split's own size at most; val,
    test and train from one pool scaled down in proportion when too small (train takes the
    rest)."""
    asked = sum(n for _, n in targets)
    if len(targets) == 1:  # a split of a pre-split folder: kept whole, or subsampled
        return [(targets[0][0], min(asked, size))]
    if asked <= size:
        return targets
    scaled = [n * size // asked for _, n in targets]
    scaled[-1] += size - sum(scaled)
    log.warning(
        "%s has %d images, %d asked (%s); using %s",
        f"{source}/" if source else "the folder",
        size,
        asked,
        ", ".join(f"{t} {n}" for t, n in targets),
        ", ".join(f"{t} {n}" for (t, _), n in zip(targets, scaled, strict=True)),
    )
    return [(t, n) for (t, _), n in zip(targets, scaled, strict=True)]


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


def _some(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")
