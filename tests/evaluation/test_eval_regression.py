"""Regression probe (BreastPathQ cellularity protocol): OLS on frozen features, clipped and raw MSE, scipy tau-b and
the reference repository's kendalltau_bpq (hand-computed on arrays with ties)."""
import numpy as np
import pytest
from scipy.stats import kendalltau
from sklearn.linear_model import LinearRegression

from histokit.evaluation.regression import kendalltau_bpq, pair_counts, regression_probe


def _data(seed=0, n=200, dim=8):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    f = rng.normal(size=(n, dim))
    y = np.clip(1 / (1 + np.exp(-(f @ w))) + 0.05 * rng.normal(size=n), 0, 1)  # cellularity-like in [0, 1]
    return f[:150], y[:150], f[150:], y[150:]


def test_matches_direct_linear_regression_with_clipping():
    ftr, ytr, fte, yte = _data()
    out = regression_probe(ftr, ytr, fte, yte)
    raw = LinearRegression().fit(ftr, ytr).predict(fte)
    clipped = np.clip(raw, 0, 1)
    assert (raw < 0).any() or (raw > 1).any()  # the clipping path is exercised
    assert out["mse"] == pytest.approx(np.mean((clipped - yte) ** 2))
    assert out["mse_unclipped"] == pytest.approx(np.mean((raw - yte) ** 2))
    assert out["mse"] <= out["mse_unclipped"]
    assert out["kendall_tau"] == pytest.approx(kendalltau(clipped, yte).statistic)
    assert 0.5 < out["kendall_tau"] <= 1 and out["model"] == "linear"


def test_ridge_and_errors():
    ftr, ytr, fte, yte = _data(1)
    assert regression_probe(ftr, ytr, fte, yte, alpha=1.0)["model"] == "ridge(alpha=1.0)"
    with pytest.raises(ValueError, match="alpha"):
        regression_probe(ftr, ytr, fte, yte, alpha=0)
    with pytest.raises(ValueError, match="test_y"):
        regression_probe(ftr, ytr, fte, yte[:-1])
    with pytest.raises(ValueError, match="dimension"):
        regression_probe(ftr, ytr, fte[:, :3], yte)


# Six tiles: labels (cellularity) with two tied pairs and one pair tied in both; predictions with one more tie.
# Pairs (15): concordant 10, discordant 1 ((1, 3)), tied in labels 3 ((0, 1), (2, 3), (4, 5)), tied in predictions
# 2 ((1, 2), (4, 5)), tied in both 1 ((4, 5)).
LABELS = np.array([0.0, 0.0, 0.5, 0.5, 1.0, 1.0])
PREDS = np.array([0.1, 0.3, 0.3, 0.2, 0.9, 0.9])


def test_pair_counts_by_hand():
    assert pair_counts(LABELS, PREDS) == dict(concordant=10, discordant=1, label_ties=3, prediction_ties=2,
                                              joint_ties=1)


def test_kendalltau_bpq_is_the_reference_variant_d_not_tau_b():
    # reference: con = tot - xtie - ytie + ntie = 15 - 3 - 2 + 1 = 11 (= C + D); (11 + 0.5 * 2) / (11 + 1 + 2)
    assert kendalltau_bpq(LABELS, PREDS) == pytest.approx(12 / 14)
    # scipy's tau-b on the same arrays: (C - D) / sqrt((tot - xtie) (tot - ytie)) = 9 / sqrt(12 * 13)
    assert kendalltau(PREDS, LABELS).statistic == pytest.approx(9 / np.sqrt(156))
    assert kendalltau_bpq(LABELS, PREDS) != pytest.approx(kendalltau(PREDS, LABELS).statistic)
    # the argument order matters: the 0.5 credit goes to ties of the *predictions* (second argument)
    # swapped: ytie = 3, con = 11: (11 + 1.5) / (11 + 1 + 3)
    assert kendalltau_bpq(PREDS, LABELS) == pytest.approx(12.5 / 15)
    # five tiles, no joint tie: C = 6, D = 1, label ties 2, prediction ties 1 -> (7 + 0.5) / (7 + 1 + 1)
    assert kendalltau_bpq([0, 0, 0.5, 0.5, 1], [0.1, 0.3, 0.3, 0.2, 0.9]) == pytest.approx(7.5 / 9)


def test_kendalltau_bpq_degenerate_inputs_are_nan():
    assert np.isnan(kendalltau_bpq([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]))   # the reference raises NameError here
    assert np.isnan(kendalltau_bpq([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]))
    assert np.isnan(kendalltau_bpq([0.1, np.nan], [0.5, 0.2]))
    assert kendalltau_bpq([0.1, 0.2, 0.3], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert kendalltau_bpq([0.1, 0.2, 0.3], [3.0, 2.0, 1.0]) == pytest.approx(3 / 6)  # (C + D) / (C + 2D), C = 0


def test_probe_reports_reference_tau_and_mse_on_raw_predictions():
    ftr, ytr, fte, yte = _data(2)
    out = regression_probe(ftr, ytr, fte, yte)
    raw = LinearRegression().fit(ftr, ytr).predict(fte)
    assert out["tau_bpq"] == pytest.approx(kendalltau_bpq(yte, raw))
    assert out["kendall_tau_unclipped"] == pytest.approx(kendalltau(raw, yte).statistic)
    assert out["mse_unclipped"] == pytest.approx(np.mean((raw - yte) ** 2))
    assert 0 <= out["tau_bpq"] <= 1
