"""Stage-level protocol helpers: the k sweep of DINO's k-NN on small test sets, the official-split mapping,
the kit's Macenko stand-in for CRC "w/ norm", and regression targets kept as floats."""
from types import SimpleNamespace

import numpy as np
import pytest

from histokit.data.datasets import PatchDataset, Sample, load_dataset
from histokit.retrieval.features import FeatureSet
from histokit.stages import open_stage
from histokit.stages.common import load_recipe_dataset
from histokit.stages.data import write_indexes
from histokit.stages.data_index import official_train_val_test
from histokit.evaluation.protocols.probes import knn_with_k_sweep


def _blobs(n, seed, d=8, classes=3):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centers = np.eye(d)[:classes] * 4
    return FeatureSet(centers[labels] + rng.normal(size=(n, d)), labels, np.arange(n))


def test_knn_sweep_on_a_test_set_under_100_images_uses_only_feasible_k():
    parts = {"train": _blobs(60, 0), "val": _blobs(12, 1), "test": _blobs(9, 2)}
    out = knn_with_k_sweep(parts)
    assert out["k_candidates"] == [10, 20], "k above the training size is not tried"
    assert out["k"] in (10, 20) and out["top1"] == pytest.approx(1.0)  # a fraction: percent only in the records
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
    write_indexes(ctx)  # stage 01: fits Macenko once and writes the normalized tiles
    raw = load_recipe_dataset(ctx, "CRC-NONORM")
    normed = load_recipe_dataset(ctx, "CRC-NORM")
    assert np.array_equal(raw.labels, normed.labels) and raw.paths == normed.paths
    tumour = int(np.flatnonzero(raw.labels == raw.classes.index("TUMOR"))[0])
    a = np.asarray(raw[tumour][0], dtype=np.float64)
    b = np.asarray(normed[tumour][0], dtype=np.float64)
    assert a.shape == b.shape and np.abs(a - b).mean() > 1.0, "normalization must change a stained tile"
    assert np.array_equal(np.asarray(normed[tumour][0]), b), "normalized tiles are cached, identical on re-read"
    assert any("Macenko" in n for n in ctx.notes()["all"])


# --- Chen & Krishnan (issue 16): the reference's probes on raw embeddings of every training tile ----------------


def _raw_blobs(n, seed, d=6, classes=3, offset=0):
    """Class blobs whose rows have very different norms, so L2 normalization changes the neighbours."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    feats = (np.eye(d)[:classes][labels] * 2 + rng.normal(size=(n, d))) * rng.uniform(0.2, 5.0, size=(n, 1))
    return FeatureSet(feats, labels, np.arange(offset, offset + n))


def _flat(transform):
    inner = getattr(transform, "transforms", None)
    return [t for x in inner for t in _flat(x)] if inner is not None else [transform]


def _chen_ctx(monkeypatch, parts):
    from histokit.papers import get_recipe
    from histokit.stages import index

    monkeypatch.setattr(index, "feature_parts", lambda ctx, model, dataset: parts)
    recipe = get_recipe("chen2022", "full")
    return SimpleNamespace(recipe=recipe, seed=0), recipe.evaluations[0]


def test_chen2022_knn_auc_is_sklearn_defaults_on_raw_features_of_all_training_tiles(monkeypatch):
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import KNeighborsClassifier

    from histokit.retrieval.features import l2_normalize
    train, val, test = _raw_blobs(40, 0), _raw_blobs(8, 1, offset=40), _raw_blobs(30, 2)
    ctx, spec = _chen_ctx(monkeypatch, {"train": train, "val": val, "test": test})
    recs = spec.measures(ctx, "DINO ViT-S/16 (TCGA)", "CRC-NORM", spec.columns["CRC-NORM"])
    assert [r["metric"] for r in recs] == ["crc_norm_knn_auc"]

    def auc(tr_f, tr_y, te_f):
        proba = KNeighborsClassifier().fit(tr_f, tr_y).predict_proba(te_f)
        return roc_auc_score(test.labels, proba, multi_class="ovr", average="macro")

    all_f, all_y = np.concatenate([train.features, val.features]), np.concatenate([train.labels, val.labels])
    expected = auc(all_f, all_y, test.features)
    assert recs[0]["value"] == pytest.approx(expected)
    # the old protocol (train split only; L2-normalized features) gives other values on these tiles
    assert expected != pytest.approx(auc(train.features, train.labels, test.features))
    assert expected != pytest.approx(auc(l2_normalize(all_f), all_y, l2_normalize(test.features)))


def test_chen2022_breastpathq_columns_are_the_reference_metrics_with_kit_extras_named(monkeypatch):
    from scipy.stats import kendalltau
    from sklearn.linear_model import LinearRegression

    from histokit.evaluation.regression import kendalltau_bpq
    rng = np.random.default_rng(3)
    w = rng.normal(size=5)

    def part(n, offset):
        f = rng.normal(size=(n, 5))
        y = np.round(np.clip(0.5 + 0.3 * (f @ w) / 3 + 0.1 * rng.normal(size=n), 0, 1), 1)  # tied labels, as BPQ
        return FeatureSet(f, y.astype(np.float64), np.arange(offset, offset + n))

    train, val, test = part(30, 0), part(6, 30), part(25, 36)
    ctx, spec = _chen_ctx(monkeypatch, {"train": train, "val": val, "test": test})
    recs = spec.measures(ctx, "DINO ViT-S/16 (TCGA)", "BreastPathQ", spec.columns["BreastPathQ"])
    got = {r["metric"]: r["value"] for r in recs}
    raw = LinearRegression().fit(np.concatenate([train.features, val.features]),
                                 np.concatenate([train.labels, val.labels])).predict(test.features)
    assert (raw < 0).any() or (raw > 1).any(), "clipping must matter for this check"
    assert got["breastpathq_mse"] == pytest.approx(np.mean((raw - test.labels) ** 2))
    assert got["breastpathq_mse_clipped"] == pytest.approx(np.mean((np.clip(raw, 0, 1) - test.labels) ** 2))
    assert got["breastpathq_mse"] != pytest.approx(got["breastpathq_mse_clipped"])
    assert got["breastpathq_tau"] == pytest.approx(kendalltau_bpq(test.labels, raw))
    assert got["breastpathq_tau_b"] == pytest.approx(kendalltau(raw, test.labels).statistic)
    assert got["breastpathq_tau"] != pytest.approx(got["breastpathq_tau_b"])


def test_chen2022_extraction_uses_the_weights_normalization_native_sizes_and_raw_features(tmp_path, monkeypatch):
    from histokit.models.backbones import create_encoder
    from histokit.papers import get_recipe
    from histokit.stages import common
    from histokit.stages.index import extraction_settings, extraction_targets

    half, imagenet = [0.5] * 3, [0.485, 0.456, 0.406]
    # full profile, official checkpoints given: the SimCLR row reads 0.5 / 0.5 from its registry entry (its model
    # row leaves the ImageNet default); BreastPathQ at its native 512 px; raw (not L2-normalized) features

    full = SimpleNamespace(recipe=get_recipe("chen2022", "full"), run_dir=tmp_path,
                           checkpoints={"chen2022_simclr_resnet50_tcga_brca": "simclr.pt",
                                        "chen2022_dino_vits16_tcga_brca": "dino.pt"},
                           path=lambda *parts: tmp_path.joinpath(*parts))
    simclr = extraction_settings(full, "SimCLR ResNet-50 (TCGA)", "CRC-NORM")
    assert simclr == {"image_size": 224, "mean": half, "std": half, "l2_normalized": False}
    assert extraction_settings(full, "DINO ViT-S/16 (TCGA)", "BreastPathQ")["image_size"] == 512
    imnet = extraction_settings(full, "ImageNet ResNet-50", "BreastPathQ")
    assert imnet["mean"] == imagenet and imnet["image_size"] == 512

    # the transform the smoke stage builds for the SimCLR row, with and without the official checkpoint
    monkeypatch.setattr(common, "resolve_weights",
                        lambda ctx, *a, **k: (create_encoder("resnet_test", img_size=64), "stub"))
    imagenet_std = [0.229, 0.224, 0.225]
    (tmp_path / "w.pt").write_bytes(b"stub")  # a given checkpoint exists (its sha256 goes into the sidecar)
    for given, mean, std in (({"chen2022_simclr_resnet50_tcga_brca": str(tmp_path / "w.pt")}, half, half),
                             ({}, imagenet, imagenet_std)):   # no checkpoint: the kit-trained stand-in, row's own
        ctx = open_stage("chen2022", "smoke", run_dir=str(tmp_path / f"run{len(given)}"), device="cpu",
                         checkpoints=given)
        write_indexes(ctx)
        model, record, targets = extraction_targets(ctx, "SimCLR ResNet-50 (TCGA)", "CRC-NONORM")
        normalize = [t for t in _flat(targets[0][1].transform) if type(t).__name__ == "Normalize"][0]
        assert list(normalize.mean) == mean and list(normalize.std) == std
        assert list(model.mean) == mean and record["mean"] == mean and record["l2_normalized"] is False


def test_feature_files_of_other_extraction_settings_are_redone(tmp_path):
    import json

    from histokit.papers import get_recipe
    from histokit.stages.index import _current, feature_identity

    npz = tmp_path / "crc-nonorm.npz"
    npz.write_bytes(b"x")
    ctx = SimpleNamespace(recipe=get_recipe("chen2022", "full"), paper="chen2022", profile="full", label="full",
                          run_dir=tmp_path)
    model = "DINO ViT-S/16 (TCGA)"
    own = {"sha256": "0", **feature_identity(ctx, model, "CRC-NONORM")}
    now = {"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "l2_normalized": False}
    npz.with_suffix(".json").write_text(json.dumps({"sha256": "0", **now}))  # nothing says what the file is:
    assert not _current(ctx, npz, model, now)                                # extracted again
    npz.with_suffix(".json").write_text(json.dumps(own))        # written before the settings were kept:
    assert not _current(ctx, npz, model, now)                   # it holds L2-normalized features
    assert _current(ctx, npz, model, {**now, "l2_normalized": True})
    npz.with_suffix(".json").write_text(json.dumps({**own, **now}))
    assert _current(ctx, npz, model, now)
    assert not _current(ctx, npz, model, {**now, "image_size": 512})
