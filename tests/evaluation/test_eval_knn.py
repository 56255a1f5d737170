"""k-NN protocols: DINO's weighted vote vs independent formulations (numpy loop, scikit-learn), on a test set of 37
(DINO's own chunking crashes under 100), Chen & Krishnan's AUC, majority vote."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from histokit.evaluation.knn import majority_knn, sklearn_knn_auc, weighted_knn


def _data(n_train=120, n_test=37, dim=16, n_classes=5, seed=0, noise=1.5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim))
    ytr = rng.integers(0, n_classes, n_train)
    yte = rng.integers(0, n_classes, n_test)
    ftr = (centers[ytr] + noise * rng.normal(size=(n_train, dim))).astype(np.float32)
    fte = (centers[yte] + noise * rng.normal(size=(n_test, dim))).astype(np.float32)
    return ftr, ytr, fte, yte


def _slow_weighted_knn(ftr, ytr, fte, k, T, n_classes):
    """Per-test-image loop of DINO's rule, written from the paper's description."""
    ftr = ftr / np.linalg.norm(ftr, axis=1, keepdims=True)
    fte = fte / np.linalg.norm(fte, axis=1, keepdims=True)
    ranked = []
    for q in fte:
        sims = ftr @ q
        nn = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(n_classes)
        for j in nn:
            votes[ytr[j]] += np.exp(sims[j] / T)
        ranked.append(np.argsort(-votes, kind="stable"))
    return np.array(ranked)


@pytest.mark.parametrize("k, chunk", [(20, 1024), (10, 5), (1, 37)])
def test_weighted_knn_matches_slow_loop_on_37_test_images(k, chunk):
    ftr, ytr, fte, yte = _data()
    out = weighted_knn(ftr, ytr, fte, yte, k=k, T=0.07, chunk=chunk)
    ranked = _slow_weighted_knn(ftr, ytr, fte, k, 0.07, 5)
    np.testing.assert_array_equal(out["predictions"], ranked[:, 0])
    assert out["top1"] == pytest.approx(np.mean(ranked[:, 0] == yte))  # a fraction in [0, 1]
    assert out["top3"] == pytest.approx(np.mean((ranked[:, :3] == yte[:, None]).any(1)))
    assert 1.0 >= out["top3"] >= out["top1"] > 1 / 5  # better than chance on separable clusters


def test_weighted_knn_matches_sklearn_with_exp_weights():
    ftr, ytr, fte, yte = _data(seed=1)
    T = 0.07
    clf = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute",
                               weights=lambda d: np.exp((1.0 - d) / T))  # cosine distance = 1 - sim
    sk_pred = clf.fit(ftr, ytr).predict(fte)
    np.testing.assert_array_equal(weighted_knn(ftr, ytr, fte, yte, k=20, T=T)["predictions"], sk_pred)


def test_weighted_knn_single_test_image_and_errors():
    ftr, ytr, fte, yte = _data()
    assert weighted_knn(ftr, ytr, fte[:1], yte[:1], k=5)["predictions"].shape == (1,)
    with pytest.raises(ValueError, match="k must be in"):
        weighted_knn(ftr[:3], ytr[:3], fte, yte, k=20)
    with pytest.raises(ValueError, match="test_y"):
        weighted_knn(ftr, ytr, fte, yte[:-1])
    with pytest.raises(ValueError, match="num_classes"):
        weighted_knn(ftr, ytr, fte, yte, num_classes=2)
    with pytest.raises(ValueError, match="T"):
        weighted_knn(ftr, ytr, fte, yte, T=0)


def test_sklearn_knn_auc_equals_sklearn_macro_ovr():
    ftr, ytr, fte, yte = _data(n_test=200, seed=2)
    out = sklearn_knn_auc(ftr, ytr, fte, yte)
    clf = KNeighborsClassifier().fit(ftr, ytr)
    proba = clf.predict_proba(fte)
    assert out["auc_macro_ovr"] == pytest.approx(roc_auc_score(yte, proba, multi_class="ovr", average="macro"))
    assert out["accuracy"] == pytest.approx(np.mean(clf.predict(fte) == yte))
    assert out["auc_skipped_classes"] == [] and out["k"] == 5


def test_sklearn_knn_auc_skips_classes_absent_from_test():
    ftr, ytr, fte, yte = _data(n_test=200, seed=3)
    keep = yte != 4
    out = sklearn_knn_auc(ftr, ytr, fte[keep], yte[keep])
    assert out["auc_skipped_classes"] == [4] and sorted(out["auc_per_class"]) == [0, 1, 2, 3]
    assert out["auc_macro_ovr"] == pytest.approx(np.mean(list(out["auc_per_class"].values())))
    with pytest.raises(ValueError, match=r"class\(es\) \[4\] absent from train_y"):
        sklearn_knn_auc(ftr[ytr != 4], ytr[ytr != 4], fte, yte)


def test_majority_knn_against_manual_vote():
    ftr, ytr, fte, yte = _data(seed=4)
    out = majority_knn(ftr, ytr, fte, yte, k=7)
    ftr_n = ftr / np.linalg.norm(ftr, axis=1, keepdims=True)
    fte_n = fte / np.linalg.norm(fte, axis=1, keepdims=True)
    nn = np.argsort(-(fte_n @ ftr_n.T), axis=1)[:, :7]
    manual = np.array([np.bincount(ytr[row], minlength=5).argmax() for row in nn])
    np.testing.assert_array_equal(out["predictions"], manual)
    assert out["top1"] == pytest.approx(np.mean(manual == yte))
