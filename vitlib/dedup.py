"""Near-copies: a perceptual hash of each image and of its mirror, and the groups of images that
are copies of one another, so that a split can keep each group on one side.

Web photo pools hold exact and near duplicates (one photo posted twice, re-encoded, resized);
the published cats-dogs-bench also ships a left-right mirrored copy of every pool image as
`<name>-flip.jpg`. A split with one copy in train and another in test scores memory.

- Hash (`hash_image`): pHash (imagehash.phash; Zauner 2010), the sign against their median of
  the lowest DCT coefficients of a grey thumbnail, at 64 bits (8x8 of 32x32) and 256 bits
  (16x16 of 64x64), of the upright image and of its mirror: 160 hex digits per image.
- Match: two images are near-copies when, with one of them mirrored or not, their 64-bit hashes
  differ in at most CANDIDATE_BITS bits and their 256-bit ones in at most MATCH_BITS. On the
  23,000-photo cats-dogs-bench pool every pair within 4 of 64 bits was a true copy (looked at)
  and within 18 of 256; unrelated pairs within 10 of 64 bits were all 80 or more of 256 apart.
  A JPEG re-encode at quality 10, a resize to 1/4 and back and a mirror stay within 4 of 64 and
  26 of 256 bits; a 4-pixel crop does not (it is a different picture to a hash).
- Search (`near_copy_pairs`): multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012): cut
  the 64 bits into CANDIDATE_BITS + 1 pieces; two hashes within CANDIDATE_BITS bits agree
  exactly on at least one piece (pigeonhole), so only images sharing a piece are compared.
- Groups (`group_images`): union-find over the matches, plus `<name>-flip.<ext>` with
  `<name>.<ext>` in the same folder; a group is named by its first path in sorted order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps

from vitlib.images import load_image

__all__ = ["CANDIDATE_BITS", "MATCH_BITS", "group_images", "hash_image", "near_copy_pairs"]

log = logging.getLogger(__name__)

CANDIDATE_BITS = 8  # of 64: wide, so that heavy re-encodes are still compared ...
MATCH_BITS = 40  # of 256: ... and the finer hash decides (true copies <= 26, others >= 80)
FLIP_SUFFIX = "-flip"  # cats-dogs-bench's name for a mirrored copy: cat.1-flip.jpg of cat.1.jpg
_THUMB = 64  # px: the 256-bit hash's thumbnail; the 64-bit one is of its 32 px reduction
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hash_image(path: str | Path) -> str:
    """The near-copy signature of an image file: 160 hex digits, the 64-bit pHash of the
    upright image and of its left-right mirror, then the 256-bit pHash of each."""
    with Image.open(path) as f:
        f.draft("L", (_THUMB, _THUMB))  # JPEG: decode at 1/2 to 1/8 scale, not below 64 px
        grey = load_image(f).convert("L").resize((_THUMB, _THUMB), Image.Resampling.LANCZOS)
    pair = (grey, ImageOps.mirror(grey))
    bits = [imagehash.phash(img, hash_size=n).hash for n in (8, 16) for img in pair]
    return "".join(np.packbits(b.ravel()).tobytes().hex() for b in bits)  # = str(ImageHash)


def near_copy_pairs(hashes: Sequence[str]) -> list[tuple[int, int]]:
    """[(i, j), i < j] of the hashes (from `hash_image`) that match, mirrored or not."""
    if len(hashes) < 2:
        return []
    words = np.array([[int(h[k : k + 16], 16) for k in range(0, 160, 16)] for h in hashes],
                     dtype=np.uint64)  # fmt: skip
    short = words[:, :2]  # (n, 2): 64-bit hash, of the mirror
    fine = (words[:, 2:6], words[:, 6:10])  # (n, 4) each: 256-bit hash, of the mirror
    found = _candidates(short[:, 0], short[:, 1])
    if not len(found):
        return []
    a, b = found[:, 0], found[:, 1]
    same = (_popcount(short[a, 0] ^ short[b, 0]) <= CANDIDATE_BITS) & (
        _popcount(fine[0][a] ^ fine[0][b]).sum(1) <= MATCH_BITS
    )
    mirrored = [  # a against b's mirror, and a's mirror against b: the same for real photos,
        (_popcount(short[x, 0] ^ short[y, 1]) <= CANDIDATE_BITS)  # not for every hash
        & (_popcount(fine[0][x] ^ fine[1][y]).sum(1) <= MATCH_BITS)
        for x, y in ((a, b), (b, a))
    ]
    return [(int(i), int(j)) for i, j in found[same | mirrored[0] | mirrored[1]]]


def _candidates(h: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(k, 2) int pairs i < j whose 64-bit hashes `h` (n,) are within CANDIDATE_BITS of each
    other, or h[i] of the mirror's m[j]."""
    n = len(h)
    keys = np.concatenate([h, m])  # (2n,): every hash, then every mirror's
    owner = np.concatenate([np.arange(n), np.arange(n)])
    bounds = np.linspace(0, 64, CANDIDATE_BITS + 2).astype(int)  # CANDIDATE_BITS + 1 pieces
    found = [np.zeros((0, 2), dtype=np.int64)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        piece = (keys >> np.uint64(lo)) & np.uint64((1 << int(hi - lo)) - 1)
        order = np.argsort(piece, kind="stable")
        starts = np.flatnonzero(np.r_[True, piece[order][1:] != piece[order][:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(order)], strict=True):
            members = order[s:e]
            hashes = members[members < n]  # hashes against hashes and mirrors, not m with m
            for c in range(0, len(hashes) if e - s > 1 else 0, 512):  # (512, e - s) at most
                left = hashes[c : c + 512]
                close = _popcount(keys[left][:, None] ^ keys[members][None, :]) <= CANDIDATE_BITS
                i, j = np.nonzero(close)
                a, b = owner[left][i], owner[members][j]
                keep = a != b
                found.append(np.stack([np.minimum(a, b)[keep], np.maximum(a, b)[keep]], axis=1))
    return np.unique(np.concatenate(found), axis=0)


def _popcount_table(x: np.ndarray) -> np.ndarray:
    """The number of set bits of each uint64 in `x`, in its shape (numpy < 2.0)."""
    return _POPCOUNT[np.ascontiguousarray(x).view(np.uint8)].reshape(*x.shape, 8).sum(-1)


_popcount = getattr(np, "bitwise_count", _popcount_table)  # numpy >= 2.0: 10x faster


def group_images(paths: Sequence[str], hashes: Sequence[str | None]) -> dict[str, str]:
    """{path: group}: the first path (sorted) of the images it is a near-copy of, by hash
    (`near_copy_pairs`) or by name (`<name>-flip.<ext>` beside `<name>.<ext>`); its own path
    for an image with none. A hash of None (an image that could not be hashed) groups by name
    only."""
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    index = {p: i for i, p in enumerate(paths)}
    hashed = [i for i, h in enumerate(hashes) if h]
    pairs = [(hashed[a], hashed[b]) for a, b in near_copy_pairs([hashes[i] for i in hashed])]
    for p, i in index.items():
        stem, ext = os.path.splitext(p)
        j = index.get(stem[: -len(FLIP_SUFFIX)] + ext) if stem.endswith(FLIP_SUFFIX) else None
        if j is not None:
            pairs.append((i, j))
    for i, j in pairs:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[str]] = {}
    for i, p in enumerate(paths):
        members.setdefault(root(i), []).append(p)
    return {p: min(group) for group in members.values() for p in group}
