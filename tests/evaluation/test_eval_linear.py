"""Linear probe: C chosen on validation, test accuracy of that model, against a direct scikit-learn fit."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from histokit.evaluation.linear import linear_probe


def _split(seed=0, n=300, dim=12, n_classes=3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * 1.5
    y = rng.integers(0, n_classes, n)
    f = (centers[y] + rng.normal(size=(n, dim))).astype(np.float32)
    return (f[:150], y[:150]), (f[150:220], y[150:220]), (f[220:], y[220:])


def test_best_c_is_the_validation_argmax_and_test_accuracy_matches_sklearn():
    (ftr, ytr), (fva, yva), (fte, yte) = _split()
    Cs = (1e-4, 1e-2, 1.0, 100.0)
    out = linear_probe(ftr, ytr, fva, yva, fte, yte, Cs=Cs)
    assert [s["C"] for s in out["sweep"]] == sorted(Cs)
    best = max(out["sweep"], key=lambda s: (s["val_accuracy"], -s["C"]))
    assert out["best_C"] == best["C"] and out["val_accuracy"] == best["val_accuracy"]
    ref = LogisticRegression(C=out["best_C"], max_iter=1000, random_state=0).fit(ftr, ytr)
    assert out["accuracy"] == pytest.approx(np.mean(ref.predict(fte) == yte))  # a fraction in [0, 1]
    # The tiniest C collapses to (near) chance: the sweep is not a no-op.
    assert out["sweep"][0]["val_accuracy"] < out["val_accuracy"]
    assert 1.0 >= out["accuracy"] > 0.70 and all(0.0 <= s["val_accuracy"] <= 1.0 for s in out["sweep"])


def test_linear_probe_errors():
    (ftr, ytr), (fva, yva), (fte, yte) = _split()
    with pytest.raises(ValueError, match="Cs"):
        linear_probe(ftr, ytr, fva, yva, fte, yte, Cs=(0.0,))
    with pytest.raises(ValueError, match="val_f has dimension"):
        linear_probe(ftr, ytr, fva[:, :3], yva, fte, yte)
    with pytest.raises(ValueError, match="single class"):
        linear_probe(ftr, np.zeros_like(ytr), fva, yva, fte, yte)


def test_the_probe_is_described_as_what_it_is_not_as_dinos_eval_linear():
    import histokit.evaluation.linear as linear

    doc = linear.__doc__
    assert "same protocol" not in doc          # it was called "the same protocol as the paper's up to optimizer noise"
    assert "L-BFGS" in doc and "eval_linear.py" in doc and "100" in doc and "SGD" in doc
