"""Regression probe on frozen features: tumour cellularity on BreastPathQ (Chen & Krishnan 2022; Ye et al. 2024,
Tables 1, 3, 4: "MSE using linear regression and Kendall-Tau concordance").

Chen & Krishnan fit an ordinary least-squares linear regression on the frozen embedding; ``alpha`` > 0 switches to
ridge regression (useful when the training set is smaller than the feature dimension). Cellularity lies in [0, 1],
so predictions are clipped to ``clip`` = (0, 1) before scoring — a prediction outside the label range can only be
wrong, and clipping never increases the error; ``mse_unclipped`` is reported too so the effect stays visible.
Kendall's tau is scipy's ``kendalltau`` (tau-b, which handles ties in the labels).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from scipy.stats import kendalltau
from sklearn.linear_model import LinearRegression, Ridge


def regression_probe(
    train_f: np.ndarray,
    train_y: np.ndarray,
    test_f: np.ndarray,
    test_y: np.ndarray,
    *,
    alpha: Optional[float] = None,
    clip: Optional[tuple[float, float]] = (0.0, 1.0),
) -> dict[str, Any]:
    """Fit on (train_f, train_y), score test: ``mse`` (clipped predictions), ``kendall_tau``, its ``kendall_p``."""
    train_f = np.asarray(train_f, dtype=np.float64)
    test_f = np.asarray(test_f, dtype=np.float64)
    train_y = np.asarray(train_y, dtype=np.float64)
    test_y = np.asarray(test_y, dtype=np.float64)
    for name, f, y in (("train", train_f, train_y), ("test", test_f, test_y)):
        if f.ndim != 2 or f.shape[0] == 0:
            raise ValueError(f"{name}_f must be a non-empty (N, D) matrix, got shape {f.shape}")
        if y.shape != (f.shape[0],):
            raise ValueError(f"{name}_y must have shape ({f.shape[0]},), got {y.shape}")
        if not (np.isfinite(f).all() and np.isfinite(y).all()):
            raise ValueError(f"{name}_f or {name}_y contains NaN or inf")
    if train_f.shape[1] != test_f.shape[1]:
        raise ValueError(f"train_f has dimension {train_f.shape[1]} but test_f has {test_f.shape[1]}")
    if test_f.shape[0] < 2:
        raise ValueError("Kendall's tau needs at least 2 test samples")
    if alpha is not None and alpha <= 0:
        raise ValueError(f"alpha must be > 0 for ridge (or None for linear regression), got alpha={alpha}")

    model = LinearRegression() if alpha is None else Ridge(alpha=alpha)
    raw = model.fit(train_f, train_y).predict(test_f)
    pred = np.clip(raw, *clip) if clip is not None else raw
    tau = kendalltau(pred, test_y)
    return {
        "mse": float(np.mean((pred - test_y) ** 2)),
        "mse_unclipped": float(np.mean((raw - test_y) ** 2)),
        "kendall_tau": float(tau.statistic),
        "kendall_p": float(tau.pvalue),
        "predictions": pred,
        "model": "linear" if alpha is None else f"ridge(alpha={alpha})",
    }
