"""Regression probe (BreastPathQ cellularity protocol): OLS on frozen features, clipped MSE, Kendall's tau."""
import numpy as np
import pytest
from scipy.stats import kendalltau
from sklearn.linear_model import LinearRegression

from histokit.evaluation.regression import regression_probe


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
