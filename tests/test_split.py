"""Tests of vitlib.split: stratified, deterministic, order-free, scaled when too small."""

from __future__ import annotations

from vitlib.split import split_items


def pool(cats=300, dogs=200):
    return [(f"cat.{i}.jpg", "cat", None) for i in range(cats)] + [
        (f"dog.{i}.jpg", "dog", None) for i in range(dogs)
    ]


def by_split(rows):
    out = {}
    for path, cls, split in rows:
        out.setdefault(split, []).append((path, cls))
    return out


def test_split_sizes_stratified_disjoint_complete():
    rows = split_items(pool(), (400, 50, 40), seed=0)
    s = by_split(rows)
    assert {k: len(v) for k, v in s.items()} == {"train": 400, "val": 50, "test": 40, "unused": 10}
    for name, n in (("train", 400), ("val", 50), ("test", 40)):
        cats = sum(c == "cat" for _, c in s[name])
        assert abs(cats - 0.6 * n) <= 1  # the pool's 3:2
    paths = [p for p, _, _ in rows]
    assert len(paths) == len(set(paths)) == 500  # no overlap, nothing dropped


def test_split_is_deterministic_order_free_and_seeded():
    files = pool()
    a = split_items(files, (400, 50, 40), seed=0)
    assert split_items(list(reversed(files)), (400, 50, 40), seed=0) == a
    b = split_items(files, (400, 50, 40), seed=1)
    assert by_split(a)["val"] != by_split(b)["val"]
    # val and test are drawn before train: a smaller train leaves them as they were.
    c = split_items(files, (100, 50, 40), seed=0)
    assert by_split(c)["val"] == by_split(a)["val"] and by_split(c)["test"] == by_split(a)["test"]


def test_split_of_a_pool_too_small_is_scaled_down():
    s = by_split(split_items(pool(60, 40), (480, 160, 160), seed=0))
    assert {k: len(v) for k, v in s.items()} == {"train": 60, "val": 20, "test": 20}
