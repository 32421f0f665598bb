"""Tests of vitlib.dedup: the copies a test makes itself (a mirror, JPEG re-encodes, resizes, a
PNG) group with their original and unrelated pictures do not; `<name>-flip` groups by name; the
multi-index search finds exactly what a brute-force comparison of every pair finds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from vitlib import dedup
from vitlib.dedup import CANDIDATE_BITS, MATCH_BITS, group_images, hash_image, near_copy_pairs


def picture(seed: int, size: int = 128) -> Image.Image:
    """A photo-like picture: smooth colour blobs (bicubic from 6x6 noise) and a few discs."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
    img = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(8, 30))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.integers(0, 256, 3).tolist()))
    return img


def shrunk(img: Image.Image, factor: int) -> Image.Image:
    small = img.resize((img.width // factor, img.height // factor), Image.Resampling.BILINEAR)
    return small.resize(img.size, Image.Resampling.BICUBIC)


COPIES = {  # name -> how the copy is made from the original
    "mirror.jpg": lambda img, path: ImageOps.mirror(img).save(path, quality=95),
    "q90.jpg": lambda img, path: img.save(path, quality=90),
    "q15.jpg": lambda img, path: img.save(path, quality=15),
    "half.jpg": lambda img, path: shrunk(img, 2).save(path, quality=90),
    "quarter.jpg": lambda img, path: shrunk(img, 4).save(path, quality=90),
    "copy.png": lambda img, path: img.save(path),
    "mirror-q15.jpg": lambda img, path: ImageOps.mirror(shrunk(img, 2)).save(path, quality=15),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A folder of one original, its copies and six unrelated pictures, with their hashes."""
    folder = tmp_path_factory.mktemp("copies")
    original = picture(1)
    original.save(folder / "original.jpg", quality=95)
    for name, make in COPIES.items():
        make(original, folder / name)
    for seed in range(2, 8):
        picture(seed).save(folder / f"other{seed}.jpg", quality=90)
    return folder, {p.name: hash_image(p) for p in sorted(folder.iterdir())}


def test_hash_is_the_64_and_256_bit_phash_of_the_image_and_its_mirror(made):
    folder, hashes = made
    h = hashes["original.jpg"]
    assert len(h) == 160 and int(h, 16) >= 0
    # The mirror's hash is the original's mirror hash (the two swap), up to JPEG noise.
    m = hashes["mirror.jpg"]
    assert bits(h[:16], m[16:32]) <= 2 and bits(h[16:32], m[:16]) <= 2
    assert bits(h[32:96], m[96:160]) <= 8
    assert hash_image(folder / "original.jpg") == h  # deterministic


@pytest.mark.parametrize("name", sorted(COPIES))
def test_every_copy_the_test_makes_groups_with_its_original(made, name):
    folder, hashes = made
    paths = ["original.jpg", name, *(f"other{s}.jpg" for s in range(2, 8))]
    groups = group_images(paths, [hashes[p] for p in paths])
    assert groups[name] == groups["original.jpg"]
    assert sum(g == groups[name] for g in groups.values()) == 2  # and nothing else


def test_all_copies_form_one_group_named_by_its_first_path_unrelated_ones_alone(made):
    _, hashes = made
    paths = sorted(hashes)
    groups = group_images(paths, [hashes[p] for p in paths])
    family = sorted(["original.jpg", *COPIES])
    assert {groups[p] for p in family} == {family[0]}  # "copy.png": the first sorted path
    assert all(groups[f"other{s}.jpg"] == f"other{s}.jpg" for s in range(2, 8))
    assert near_copy_pairs([hashes[f"other{s}.jpg"] for s in range(2, 8)]) == []


def test_a_flip_name_beside_its_original_groups_even_when_the_pixels_differ(tmp_path):
    paths = ["a/cat.1.jpg", "a/cat.1-flip.jpg", "b/cat.2-flip.jpg", "a/cat.2.jpg",
             "a/dog.3-flip.png", "a/dog.3.jpg"]  # fmt: skip
    for seed, path in enumerate(paths):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        picture(10 + seed).save(tmp_path / path)
    hashes = [hash_image(tmp_path / p) for p in paths]
    assert near_copy_pairs(hashes) == []  # six different pictures
    groups = group_images(paths, hashes)
    assert groups["a/cat.1.jpg"] == groups["a/cat.1-flip.jpg"] == "a/cat.1-flip.jpg"
    # Only beside its original: in another folder, or of another type, it is another photo.
    assert groups["b/cat.2-flip.jpg"] == "b/cat.2-flip.jpg"
    assert groups["a/cat.2.jpg"] == "a/cat.2.jpg"
    assert groups["a/dog.3-flip.png"] != groups["a/dog.3.jpg"]


def test_an_image_without_a_hash_groups_by_its_name_only(made):
    _, hashes = made
    h = hashes["original.jpg"]
    paths = ["x.jpg", "x-flip.jpg", "y.jpg", "z.jpg"]
    groups = group_images(paths, [h, None, None, h])
    assert groups == {"x.jpg": "x-flip.jpg", "x-flip.jpg": "x-flip.jpg", "y.jpg": "y.jpg",
                      "z.jpg": "x-flip.jpg"}  # fmt: skip
    assert group_images([], []) == {} and near_copy_pairs([h]) == []


# --------------------------------------------------------------------------------------------
# The search against brute force, on hashes built with chosen Hamming distances
# --------------------------------------------------------------------------------------------


def bits(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def brute_force(hashes: list[str]) -> list[tuple[int, int]]:
    """Every pair that matches as dedup's docstring says: 64-bit hashes within CANDIDATE_BITS
    and 256-bit ones within MATCH_BITS, upright or with one of the two mirrored."""

    def close(h: str, f: str, h2: str, f2: str) -> bool:
        return bits(h, h2) <= CANDIDATE_BITS and bits(f, f2) <= MATCH_BITS

    found = []
    for i, a in enumerate(hashes):
        for j in range(i + 1, len(hashes)):
            b = hashes[j]
            if (
                close(a[:16], a[32:96], b[:16], b[32:96])
                or close(a[:16], a[32:96], b[16:32], b[96:])
                or close(a[16:32], a[96:], b[:16], b[32:96])
            ):
                found.append((i, j))
    return found


def flipped(value: int, width: int, n: int, rng: np.random.Generator, spread: bool = False) -> int:
    """`value` with `n` of its `width` bits flipped: at random, or (`spread`) evenly round the
    first 64 from a random offset, so that cutting them into n equal pieces leaves none
    unflipped: what the multi-index search must survive with its CANDIDATE_BITS + 1 pieces."""
    if spread:
        offset = int(rng.integers(64))
        where = [(offset + k * 64 // n) % 64 for k in range(n)]
    else:
        where = rng.choice(width, n, replace=False).tolist()
    for k in where:
        value ^= 1 << k
    return value


def hex_of(*parts: tuple[int, int]) -> str:
    return "".join(f"{v:0{w // 4}x}" for v, w in parts)


def made_up_hashes(seed: int = 0) -> list[str]:
    """A few hundred hashes: random ones, and near ones at distances just inside and just
    outside CANDIDATE_BITS / MATCH_BITS, upright and mirrored, in both index orders."""
    rng = np.random.default_rng(seed)

    def rand(width: int) -> int:
        return int.from_bytes(rng.bytes(width // 8), "big")

    out = []
    for _ in range(40):
        h, m, f, fm = rand(64), rand(64), rand(256), rand(256)
        out.append(hex_of((h, 64), (m, 64), (f, 256), (fm, 256)))
        for dh in (CANDIDATE_BITS - 1, CANDIDATE_BITS, CANDIDATE_BITS + 1):
            for df in (MATCH_BITS - 4, MATCH_BITS, MATCH_BITS + 1):
                spread = bool(rng.integers(2)) and dh <= CANDIDATE_BITS
                near_h, near_f = flipped(h, 64, dh, rng, spread), flipped(f, 256, df, rng)
                if rng.integers(2):  # an upright near-copy
                    parts = [(near_h, 64), (rand(64), 64), (near_f, 256), (rand(256), 256)]
                else:  # a mirrored one: its hash near our mirror's, or its mirror near ours
                    near_m, near_fm = flipped(m, 64, dh, rng), flipped(fm, 256, df, rng)
                    parts = (
                        [(near_m, 64), (rand(64), 64), (near_fm, 256), (rand(256), 256)]
                        if rng.integers(2)
                        else [(rand(64), 64), (near_h, 64), (rand(256), 256), (near_f, 256)]
                    )
                out.append(hex_of(*parts))
    order = rng.permutation(len(out))  # near ones before and after their original
    return [out[i] for i in order]


def test_near_copy_pairs_equals_brute_force_on_made_up_hashes():
    for seed in (0, 1):
        hashes = made_up_hashes(seed)
        assert len(hashes) == 400
        expected = brute_force(hashes)
        assert near_copy_pairs(hashes) == expected
        # Both sides of each threshold are there: the test could tell a shifted threshold.
        within = {bits(hashes[i][:16], hashes[j][:16]) for i, j in expected}
        assert CANDIDATE_BITS in within and len(expected) > 40


def test_the_thresholds_are_inclusive_and_the_mirror_counts_both_ways():
    rng = np.random.default_rng(3)
    h, m, f, fm = (int.from_bytes(rng.bytes(n), "big") for n in (8, 8, 32, 32))
    a = hex_of((h, 64), (m, 64), (f, 256), (fm, 256))
    far_h, far_f = flipped(h, 64, 32, rng), flipped(f, 256, 128, rng)

    def pair(dh: int, df: int, mirrored: bool = False, first: bool = True) -> list:
        """near_copy_pairs of `a` and a `b` whose hash is `dh` / `df` bits from a's (or from
        its mirror's), b's mirror far from both."""
        near_h = flipped(m if mirrored else h, 64, dh, rng)
        near_f = flipped(fm if mirrored else f, 256, df, rng)
        b = hex_of((near_h, 64), (far_h, 64), (near_f, 256), (far_f, 256))
        return near_copy_pairs([a, b] if first else [b, a])

    assert pair(CANDIDATE_BITS, MATCH_BITS) == [(0, 1)]
    assert pair(CANDIDATE_BITS + 1, 0) == [] and pair(0, MATCH_BITS + 1) == []
    for first in (True, False):  # b's hash is near a's mirror: found whichever comes first
        assert pair(CANDIDATE_BITS, MATCH_BITS, mirrored=True, first=first) == [(0, 1)]
        assert pair(CANDIDATE_BITS + 1, 0, mirrored=True, first=first) == []


def test_candidates_are_found_across_piece_boundaries_at_scale():
    """Many hashes sharing pieces (a crowded bucket) and a near pair among them."""
    rng = np.random.default_rng(4)
    base = int.from_bytes(rng.bytes(8), "big")
    hashes = []
    for _ in range(600):  # all share the low 7 bits: one bucket of 600 for the first piece
        h = (int.from_bytes(rng.bytes(8), "big") & ~0x7F) | (base & 0x7F)
        hashes.append(hex_of((h, 64), (h, 64), (0, 256), (0, 256)))
    hashes.append(hex_of((flipped(int(hashes[123][:16], 16), 64, CANDIDATE_BITS, rng, True), 64),
                         (0, 64), (0, 256), (0, 256)))  # fmt: skip
    assert near_copy_pairs(hashes) == brute_force(hashes)
    assert (123, 600) in near_copy_pairs(hashes)


def test_the_popcount_fallback_agrees_with_numpy(monkeypatch):
    x = np.random.default_rng(5).integers(0, 2**63, (7, 4), dtype=np.uint64) * np.uint64(2)
    expected = np.vectorize(lambda v: int(v).bit_count())(x)
    assert (dedup._popcount_table(x) == expected).all()
    hashes = made_up_hashes(2)
    monkeypatch.setattr(dedup, "_popcount", dedup._popcount_table)
    assert near_copy_pairs(hashes) == brute_force(hashes)
