"""Stage-level protocol helpers: the k sweep of DINO's k-NN on small test sets, the official-split mapping,
the kit's Macenko stand-in for CRC "w/ norm", and regression targets kept as floats."""
from types import SimpleNamespace

import numpy as np
import pytest

from histokit.data.datasets import PatchDataset, Sample, load_dataset
from histokit.retrieval.features import FeatureSet
from histokit.stages import open_stage
from histokit.stages.common import load_recipe_dataset, official_train_val_test
from histokit.stages.eval_classification import knn_with_k_sweep


def _blobs(n, seed, d=8, classes=3):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centers = np.eye(d)[:classes] * 4
    return FeatureSet(centers[labels] + rng.normal(size=(n, d)), labels, np.arange(n))


def test_knn_sweep_on_a_test_set_under_100_images_uses_only_feasible_k():
    parts = {"train": _blobs(60, 0), "val": _blobs(12, 1), "test": _blobs(9, 2)}
    out = knn_with_k_sweep(parts)
    assert out["k_candidates"] == [10, 20], "k above the training size is not tried"
    assert out["k"] in (10, 20) and out["top1"] == pytest.approx(100.0)
    assert out["correct"].shape == (9,)


def test_knn_sweep_chooses_k_on_validation_not_test():
    parts = {"train": _blobs(60, 0), "val": _blobs(12, 1), "test": _blobs(9, 2)}
    flipped = dict(parts, test=FeatureSet(parts["test"].features, (parts["test"].labels + 1) % 3,
                                          parts["test"].indices))
    assert knn_with_k_sweep(flipped)["k"] == knn_with_k_sweep(parts)["k"]
    assert knn_with_k_sweep(flipped)["top1"] == pytest.approx(0.0)


def test_regression_targets_stay_float_in_feature_sets():
    fs = FeatureSet(np.zeros((3, 2)), np.array([0.1, 0.5, 0.9]), np.arange(3))
    assert fs.labels.dtype == np.float64 and fs.labels[1] == 0.5


def _ds(splits, labels):
    samples = [Sample(path=f"x{i}.png", label=int(l), split=s) for i, (s, l) in enumerate(zip(splits, labels))]
    return PatchDataset(samples, ["a", "b"])


def test_official_split_mapping_folds_and_train_val_only():
    ctx = SimpleNamespace(seed=0)
    folds = _ds(["fold1"] * 20 + ["fold2"] * 20 + ["fold3"] * 10, [0, 1] * 25)
    split = official_train_val_test(ctx, "PanNuke", folds)
    assert sorted(split["test"]) == list(range(40, 50)), "the last fold is the test set"
    assert len(split["train"]) + len(split["val"]) == 40 and not set(split["train"]) & set(split["val"])
    bpq = _ds(["train"] * 30 + ["val"] * 6, [0, 1] * 18)
    split = official_train_val_test(ctx, "BreastPathQ", bpq)
    assert sorted(split["test"]) == list(range(30, 36)), "BreastPathQ's official validation set is the test set"


def test_macenko_stand_in_changes_tiles_but_keeps_labels(tmp_path):
    ctx = open_stage("chen2022", "smoke", run_dir=str(tmp_path))
    raw = load_recipe_dataset(ctx, "CRC-NONORM")
    normed = load_recipe_dataset(ctx, "CRC-NORM")
    assert np.array_equal(raw.labels, normed.labels) and raw.paths == normed.paths
    tumour = int(np.flatnonzero(raw.labels == raw.classes.index("TUMOR"))[0])
    a = np.asarray(raw[tumour][0], dtype=np.float64)
    b = np.asarray(normed[tumour][0], dtype=np.float64)
    assert a.shape == b.shape and np.abs(a - b).mean() > 1.0, "normalization must change a stained tile"
    assert np.array_equal(np.asarray(normed[tumour][0]), b), "normalized tiles are cached, identical on re-read"
    assert any("Macenko" in n for n in ctx.notes()["all"])
