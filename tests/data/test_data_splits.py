"""make_split (sizes, stratification, group isolation, tiny classes), official / stored splits, label fractions."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from histokit.data import (SplitMismatchError, class_balanced_fraction, load_dataset, load_or_make_split,
                           make_split)


@pytest.fixture(scope="module")
def tiny_labels():
    return load_dataset("kather2016_tiny").labels


def _is_partition(parts, n):
    joined = np.concatenate(list(parts.values()))
    return len(joined) == n and set(joined.tolist()) == set(range(n))


def test_sizes_and_stratification_on_bundled_tiles(tiny_labels):
    parts = make_split(tiny_labels, fractions=(0.8, 0.1, 0.1), seed=0)
    assert list(parts) == ["train", "val", "test"] and _is_partition(parts, 100)
    assert {k: len(v) for k, v in parts.items()} == {"train": 80, "val": 10, "test": 10}
    train_counts = np.bincount(tiny_labels[parts["train"]], minlength=8)
    expected = np.bincount(tiny_labels) * 0.8
    assert np.all(np.abs(train_counts - expected) <= 1.5)  # stratified: each class ~80 % in train


def test_seeded_and_reproducible(tiny_labels):
    a, b, c = (make_split(tiny_labels, seed=s) for s in (3, 3, 4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_group_aware_split_has_no_leakage(tiny_labels):
    groups = [f"slide{i // 4}" for i in range(100)]  # 25 slides of 4 tiles
    parts = make_split(tiny_labels, groups, fractions=(0.8, 0.1, 0.1), seed=1)
    assert _is_partition(parts, 100)
    seen = {k: {groups[i] for i in v} for k, v in parts.items()}
    assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])
    assert all(len(v) > 0 for v in parts.values())
    assert 60 <= len(parts["train"]) <= 90


def test_few_groups_still_disjoint():
    labels = np.array([0, 0, 1, 1, 0, 1])
    groups = ["a", "a", "b", "b", "c", "c"]
    parts = make_split(labels, groups, seed=0)
    assert sorted(len({groups[i] for i in v}) for v in parts.values()) == [1, 1, 1]
    with pytest.raises(ValueError, match="2 group"):
        make_split(labels[:4], groups[:4])


def test_grouped_split_with_every_class_smaller_than_the_folds_uses_fewer_folds():
    """6 groups of 2 tiles, 4 tiles a class: 1 / 0.15 would ask for 6 folds, more than any class has members
    (StratifiedGroupKFold refuses that); the split uses fewer, larger folds and stays a group-disjoint partition."""
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2])
    groups = [f"slide{i // 2}" for i in range(12)]
    parts = make_split(labels, groups, fractions=(0.7, 0.15, 0.15), seed=0)
    assert _is_partition(parts, 12)
    assert all(len(v) for v in parts.values())
    seen = {k: {groups[i] for i in v} for k, v in parts.items()}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])


def test_tiny_classes_do_not_crash():
    labels = np.array([0] * 10 + [1] * 2 + [2])  # a 2-sample and a 1-sample class
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = make_split(labels, fractions=(0.6, 0.2, 0.2), seed=0)
    assert _is_partition(parts, 13)
    assert 12 in parts["train"]  # the single-sample class stays in train (documented fallback)


@pytest.mark.bad_input
def test_two_way_split_and_bad_fractions(tiny_labels):
    parts = make_split(tiny_labels, fractions=(0.7, 0.3))
    assert list(parts) == ["train", "test"] and len(parts["test"]) == 30
    for bad in [(0.5, 0.2), (0.8, 0.1, 0.05, 0.05), (0, 0.5, 0.5), (1.2, -0.2)]:
        with pytest.raises(ValueError, match="fractions"):
            make_split(tiny_labels, fractions=bad)


@pytest.mark.bad_input
def test_load_or_make_split_reuses_and_refuses(tmp_path, tiny_labels):
    path = tmp_path / "split.json"
    first = load_or_make_split(path, tiny_labels, fractions=(0.8, 0.1, 0.1), seed=0)
    stored = json.loads(path.read_text())
    assert stored["params"]["n"] == 100 and stored["params"]["seed"] == 0
    again = load_or_make_split(path, tiny_labels, fractions=(0.8, 0.1, 0.1), seed=0)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    with pytest.raises(SplitMismatchError, match=r"split\.json.*seed=0.*seed=1"):
        load_or_make_split(path, tiny_labels, seed=1)
    with pytest.raises(SplitMismatchError, match="n=100"):
        load_or_make_split(path, tiny_labels[:90])
    with pytest.raises(SplitMismatchError, match="fractions"):
        load_or_make_split(path, tiny_labels, fractions=(0.5, 0.5))
    shuffled = tiny_labels[::-1].copy()  # same size, other dataset
    with pytest.raises(SplitMismatchError, match="labels_sha256"):
        load_or_make_split(path, shuffled)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_class_balanced_fraction(tiny_labels, fraction):
    idx = class_balanced_fraction(tiny_labels, fraction, seed=0)
    counts = np.bincount(tiny_labels[idx], minlength=8)
    full = np.bincount(tiny_labels)
    assert (counts >= 1).all() and (counts <= full).all()
    assert np.array_equal(counts, np.maximum(1, np.round(fraction * full)).astype(int))
    assert len(set(idx.tolist())) == len(idx)
    assert np.array_equal(idx, class_balanced_fraction(tiny_labels, fraction, seed=0))


@pytest.mark.bad_input
def test_class_balanced_fraction_rejects_bad_fraction(tiny_labels):
    with pytest.raises(ValueError, match="fraction"):
        class_balanced_fraction(tiny_labels, 0.0)
