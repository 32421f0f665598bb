"""Tests of vitlib.split: stratified, deterministic, order-free, scaled when too small, and
near-copy groups kept whole and away from the splits they would leak into."""

from __future__ import annotations

from collections import Counter

import numpy as np

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


# --------------------------------------------------------------------------------------------
# Near-copy groups: whole in one split, never beside a copy in a given split
# --------------------------------------------------------------------------------------------


def grouped_pool(seed=0, cats=300, dogs=200, biggest=4):
    """pool() with random groups of 1 to `biggest` images of one class (a photo and its
    copies), keyed by their first path as vitlib.dedup does."""
    rng = np.random.default_rng(seed)
    files, groups = pool(cats, dogs), {}
    for cls in ("cat", "dog"):
        paths = [p for p, c, _ in files if c == cls]
        i = 0
        while i < len(paths):
            members = paths[i : i + int(rng.integers(1, biggest + 1))]
            groups.update({p: min(members) for p in members})
            i += len(members)
    return files, groups


def splits_of(rows, groups):
    out = {}
    for path, _, split in rows:
        out.setdefault(groups.get(path, path), set()).add(split)
    return out


def test_each_group_lands_whole_in_one_split_with_sizes_and_classes_kept():
    files, groups = grouped_pool()
    assert max(Counter(groups.values()).values()) == 4 and len(set(groups.values())) < 300
    rows = split_items(files, (400, 50, 40), seed=0, groups=groups)
    assert all(len(s) == 1 for s in splits_of(rows, groups).values())
    s = by_split(rows)
    assert sorted(p for p, _, _ in rows) == sorted(p for p, _, _ in files)
    for name, n in (("train", 400), ("val", 50), ("test", 40)):
        got = len(s[name])
        assert n - 4 < got <= n  # short by less than a group
        cats = sum(c == "cat" for _, c in s[name])
        assert abs(cats - 0.6 * n) <= 4  # the pool's 3:2, within a group
    assert len(s["unused"]) == 500 - sum(len(s[k]) for k in ("train", "val", "test"))


def test_a_pool_group_with_an_image_of_a_given_split_goes_unused():
    files = pool(60, 40)
    given = [(f"test/cat.{i}.jpg", "cat", "test") for i in range(10)]
    given += [(f"val/dog.{i}.jpg", "dog", "val") for i in range(10)]
    # cat.0 and cat.1 copy test photos, dog.5 and its mirror copy a val photo.
    groups = {"cat.0.jpg": "test/cat.0.jpg", "cat.1.jpg": "test/cat.3.jpg",
              "dog.5.jpg": "dog.5-flip.jpg", "dog.5-flip.jpg": "dog.5-flip.jpg",
              "val/dog.7.jpg": "dog.5-flip.jpg"}  # fmt: skip
    files.append(("dog.5-flip.jpg", "dog", None))
    for seed in range(5):
        rows = split_items([*files, *given], (50, 10, 10), seed=seed, groups=groups)
        split = {p: s for p, _, s in rows}
        assert [split[p] for p in ("cat.0.jpg", "cat.1.jpg", "dog.5.jpg", "dog.5-flip.jpg")] == [
            "unused"
        ] * 4
        assert split["val/dog.7.jpg"] == "val" and split["test/cat.3.jpg"] == "test"
        # The given splits are kept as they are; train comes from the rest of the pool.
        assert sum(s == "test" for s in split.values()) == 10
        assert sum(s == "train" for s in split.values()) == 50


def test_train_only_groups_land_in_train_or_unused_only():
    files, groups = grouped_pool(seed=1)
    keys = sorted(set(groups.values()))
    train_only = set(keys[::3])  # a third of the groups copy a labelled-subset photo
    where = {}
    for seed in range(4):
        rows = split_items(files, (150, 60, 60), seed=seed, groups=groups, train_only=train_only)
        for key, splits in splits_of(rows, groups).items():
            assert len(splits) == 1
            if key in train_only:
                assert splits <= {"train", "unused"}, key
                where.setdefault(splits.pop(), 0)
        s = by_split(rows)
        assert all(n - 4 < len(s[k]) <= n for k, n in (("train", 150), ("val", 60), ("test", 60)))
    assert set(where) == {"train", "unused"}  # they are used, where they cannot leak


def test_groups_split_the_same_whatever_the_listing_order():
    files, groups = grouped_pool(seed=2)
    a = split_items(files, (300, 50, 50), seed=7, groups=groups, train_only={"cat.0.jpg"})
    rng = np.random.default_rng(0)
    shuffled = [files[i] for i in rng.permutation(len(files))]
    regrouped = dict(sorted(groups.items(), reverse=True))
    b = split_items(shuffled, (300, 50, 50), seed=7, groups=regrouped, train_only=["cat.0.jpg"])
    assert a == b
    c = split_items(files, (300, 50, 50), seed=8, groups=groups, train_only={"cat.0.jpg"})
    assert by_split(c)["val"] != by_split(a)["val"]


def test_a_group_of_mixed_labels_is_kept_whole():
    """The Kaggle placeholder as one cat and three dogs: one group, on one side. It is drawn
    only where its cat still fits the cat quota, which in practice is when the splits take
    the whole pool (train takes the rest); else it is left unused."""
    files = pool(40, 40)
    placeholder = ["cat.0.jpg", "dog.0.jpg", "dog.1.jpg", "dog.2.jpg"]
    groups = {p: "cat.0.jpg" for p in placeholder}
    for sizes in ((40, 10, 10), (60, 10, 10)):
        for seed in range(6):
            rows = split_items(files, sizes, seed=seed, groups=groups)
            split = {p: s for p, _, s in rows}
            assert len({split[p] for p in placeholder}) == 1
            s = by_split(rows)
            assert [len(s[k]) for k in ("train", "val", "test")] == list(sizes)
            if sum(sizes) == len(files):
                assert split["cat.0.jpg"] in ("train", "val", "test")
