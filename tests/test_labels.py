"""Labelled subsets: nested, stratified, deterministic; the bench's own folders used as they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import CFG32, photo

from vitlib.config import DataConfig
from vitlib.data import load_splits
from vitlib.errors import DataError
from vitlib.labels import labelled_sets, nested_subsets, stratified_order, take

LABELS = np.array([0] * 60 + [1] * 30 + [2] * 10)  # shares 0.6 / 0.3 / 0.1


def test_every_prefix_of_the_order_holds_each_class_in_its_share():
    order = stratified_order(LABELS, seed=3)
    assert sorted(order.tolist()) == list(range(100))  # a permutation
    for m in range(1, 101):
        counts = np.bincount(LABELS[order[:m]], minlength=3)
        assert np.all(np.abs(counts - m * np.array([0.6, 0.3, 0.1])) <= 1), (m, counts)


def test_subsets_are_nested_deterministic_and_drawn_from_the_seed():
    subsets = nested_subsets(LABELS, (10, 40, 0), seed=0)
    assert set(subsets[10]) < set(subsets[40]) < set(subsets[0]) == set(range(100))
    assert np.bincount(LABELS[subsets[10]]).tolist() == [6, 3, 1]
    again = nested_subsets(LABELS, (40,), seed=0)[40]
    assert np.array_equal(again, subsets[40])
    assert not np.array_equal(nested_subsets(LABELS, (40,), seed=1)[40], subsets[40])


def test_a_subset_larger_than_the_training_split_is_a_clear_error():
    with pytest.raises(DataError, match="training split has 100"):
        nested_subsets(LABELS, (101,), seed=0)


def bench_folder(root: Path) -> Path:
    """The cats-dogs-bench layout in small: a pool and nested labelled sets 4/ and 8/."""
    for i in range(30):
        photo(root / "pre-train" / f"cat.{i}.jpg", (200, 60, 40))
        photo(root / "pre-train" / f"dog.{i}.jpg", (40, 60, 200))
    for size in (4, 8):
        for i in range(size // 2):
            for label, colour in (("cat", (210, 70, 50)), ("dog", (50, 70, 210))):
                photo(root / str(size) / f"{label}.{size}{i:03d}.jpg", colour)
    return root


def test_the_bench_layouts_labelled_folders_are_used_and_other_counts_drawn(tmp_path):
    root = bench_folder(tmp_path / "bench")
    data_cfg = DataConfig(source="folder", root=str(root), split_sizes=(40, 10, 10),
                          cache_dir=str(tmp_path / "cache"))  # fmt: skip
    splits = load_splits(data_cfg, CFG32, progress=False)
    sets = labelled_sets(data_cfg, splits, (4, 8, 6, 0), seed=0, progress=False)
    for size in (4, 8):
        assert {Path(p).parent.name for p in sets[size].paths} == {str(size)}
        assert sets[size].images.shape == (size, 32, 32, 3)
        names = [Path(p).name.split(".")[0] for p in sets[size].paths]
        assert [splits["train"].classes[k] for k in sets[size].labels] == names
    assert set(sets[6].paths) <= set(splits["train"].paths) and len(sets[6]) == 6
    assert np.bincount(sets[6].labels).tolist() == [3, 3]
    assert sets[0] is splits["train"]


def test_take_keeps_images_labels_and_settings():
    from training import FakeImages

    ds = FakeImages(10, seed=0, augment=True)
    sub = take(ds, np.array([7, 2]))
    assert np.array_equal(sub.images, ds.images[[7, 2]]) and sub.labels.tolist() == [1, 0]
    assert sub.paths == [ds.paths[7], ds.paths[2]] and sub.augment and sub.mean == ds.mean
