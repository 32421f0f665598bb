"""Labelled training sets of a given size, for label-efficiency curves.

The cats-dogs-bench ships its own nested labelled sets (`1000/`, `500/`, `250/`, `100/`, half
cats and half dogs); any other folder gets nested, stratified subsets of its train split, drawn
once from the seed:

    order = stratified_order(labels, seed=0)          # every prefix is stratified
    subsets = nested_subsets(labels, (100, 250), seed=0)  # subsets[100] is inside subsets[250]
    sets = labelled_sets(cfg.data, datasets, (100, 1000, 0), seed=cfg.seed)  # 0: all of train

One order of the train split serves every size: a size-n subset is its first n items, so smaller
subsets lie inside larger ones (as the bench's), and each class keeps its share at every size
(within one image).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vitlib.config import DataConfig
from vitlib.data import ImageDataset, preprocess
from vitlib.errors import DataError
from vitlib.images import load_image, parallel_map
from vitlib.manifest import build_manifest

__all__ = ["ALL", "labelled_sets", "nested_subsets", "stratified_order", "take"]

ALL = 0  # a label count meaning every labelled training image


def stratified_order(labels: Sequence[int] | np.ndarray, *, seed: int = 0) -> np.ndarray:
    """An order of the positions 0..n-1 whose every prefix holds each class in its share.

    Each class is shuffled (from `seed`), its j-th of n_c items gets the key (j + 1/2) / n_c, and
    all items are sorted by key (ties by class): any prefix of length m then holds within one of
    m * n_c / n items of class c. Deterministic: the same labels and seed give the same order.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"expected a 1-d array of labels, got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    keys, items, classes = [], [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        keys.append((np.arange(len(members)) + 0.5) / len(members))
        items.append(members)
        classes.append(np.full(len(members), c))
    if not items:
        return np.zeros(0, dtype=np.int64)
    key, item, cls = np.concatenate(keys), np.concatenate(items), np.concatenate(classes)
    return item[np.lexsort((cls, key))].astype(np.int64)


def nested_subsets(
    labels: Sequence[int] | np.ndarray, sizes: Sequence[int], *, seed: int = 0
) -> dict[int, np.ndarray]:
    """{size: positions (size,)} of nested stratified subsets (`stratified_order`'s prefixes);
    size 0 (ALL) is every position. A size above the number of labels is a DataError."""
    order = stratified_order(labels, seed=seed)
    out = {}
    for size in sizes:
        if size < 0 or size > len(order):
            raise DataError(
                f"a labelled subset of {size} images was asked for, but the training split has "
                f"{len(order)}; choose pretrain.label_counts from 1 to {len(order)} (0 = all)"
            )
        out[size] = np.sort(order[: size or len(order)])
    return out


def take(dataset: ImageDataset, idx: np.ndarray, *, split: str | None = None) -> ImageDataset:
    """The items `idx` of `dataset` as a dataset of their own (images copied, settings kept)."""
    idx = np.asarray(idx, dtype=np.int64)
    return ImageDataset(
        np.asarray(dataset.images[idx]),
        dataset.labels[idx],
        [dataset.paths[i] for i in idx],
        classes=dataset.classes,
        mean=dataset.mean,
        std=dataset.std,
        boxes=None if dataset.boxes is None else dataset.boxes[idx],
        augment=dataset.augment,
        split=split or dataset.split,
        info=dataset.info,
    )


def labelled_sets(
    data_cfg: DataConfig,
    datasets: Mapping[str, ImageDataset],
    counts: Sequence[int],
    *,
    seed: int = 0,
    progress: bool = True,
) -> dict[int, ImageDataset]:
    """{count: training set of `count` labelled images} (0 = datasets["train"] itself).

    In the bench layout a count with a labelled folder of its name (100, 250, 500, 1000) is that
    folder, decoded with the train split's preprocessing; other counts are nested stratified
    subsets of datasets["train"] (`nested_subsets`, from `seed`)."""
    train = datasets["train"]
    bench = _bench_subsets(data_cfg, seed, progress) if data_cfg.source == "folder" else None
    drawn = [n for n in counts if n and not (bench and str(n) in bench.subset_names)]
    subsets = nested_subsets(train.labels, drawn, seed=seed)
    out = {}
    for n in counts:
        if n == ALL:
            out[n] = train
        elif n in subsets:
            out[n] = take(train, subsets[n], split=f"train-{n}")
        else:
            out[n] = _decode_subset(bench, str(n), train, progress=progress)
    return out


def _bench_subsets(data_cfg: DataConfig, seed: int, progress: bool) -> Any:
    """The folder's manifest if it has labelled subsets (the bench layout), else None."""
    manifest = build_manifest(
        data_cfg.root, split_sizes=data_cfg.split_sizes, seed=seed,
        cache_dir=data_cfg.cache_dir, progress=progress, workers=data_cfg.num_workers,
    )  # fmt: skip
    return manifest if manifest.subset_names else None


def _decode_subset(
    manifest: Any, name: str, train: ImageDataset, *, progress: bool
) -> ImageDataset:
    """A bench labelled folder as a training set, preprocessed as the train split's cache."""
    paths, labels = manifest.subset(name)
    if tuple(manifest.classes) != tuple(train.classes):
        raise DataError(f"the subset {name}/ has classes {manifest.classes}, the train split "
                        f"{train.classes}")  # fmt: skip
    size = train.images.shape[1]
    cfg = {"input_size": (3, size, size), "crop_pct": 1.0, "interpolation": "bicubic",
           **train.info.get("preprocessing", {})}  # fmt: skip
    images = parallel_map(
        lambda p: preprocess(load_image(manifest.root / p), cfg), paths,
        desc=f"decoding {name}/", progress=progress, workers=0,
    )  # fmt: skip
    return ImageDataset(
        np.stack(list(images)).astype(np.uint8),
        labels,
        [str(manifest.root / p) for p in paths],
        classes=train.classes,
        mean=train.mean,
        std=train.std,
        augment=train.augment,
        split=f"train-{name}",
        info=train.info,
    )
