"""Regression probe on frozen features: tumour cellularity on BreastPathQ (Chen & Krishnan 2022; Ye et al. 2024,
Tables 1, 3, 4: "MSE using linear regression and Kendall-Tau concordance").

Chen & Krishnan fit an ordinary least-squares linear regression on the frozen embedding (``patch_evaluation.ipynb``:
``LinearRegression().fit``, then ``mean_squared_error`` and ``kendalltau_bpq`` of the raw predictions); ``alpha`` > 0
switches to ridge regression (useful when the training set is smaller than the feature dimension).

Every number is returned under its own name, so a table says which one it shows:

* ``mse_unclipped`` — MSE of the raw predictions (Chen & Krishnan's); ``mse`` — MSE after clipping the predictions
  to ``clip`` = (0, 1), the label range (clipping never increases the error).
* ``tau_bpq`` — :func:`kendalltau_bpq`, the reference repository's own concordance (range 0..1), of the raw
  predictions; ``kendall_tau_unclipped`` — scipy's tau-b (-1..1) of the raw predictions; ``kendall_tau`` /
  ``kendall_p`` — scipy's tau-b of the clipped predictions and its p-value.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from scipy.stats import kendalltau
from sklearn.linear_model import LinearRegression, Ridge


def pair_counts(labels: np.ndarray, predictions: np.ndarray, chunk: int = 1024) -> dict[str, int]:
    """Counts over the n (n - 1) / 2 pairs: ``concordant`` / ``discordant`` (strict order in both arrays, same /
    opposite direction), ``label_ties`` and ``prediction_ties`` (all pairs equal in that array, joint ties
    included) and ``joint_ties`` (equal in both). Equality is exact, as in scipy's ``kendalltau``."""
    x = np.asarray(labels, dtype=np.float64).ravel()
    y = np.asarray(predictions, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"labels and predictions must have the same size, got {x.size} and {y.size}")
    out = dict(concordant=0, discordant=0, label_ties=0, prediction_ties=0, joint_ties=0)
    n = x.size
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        dx = np.sign(x[None, :] - x[rows, None])           # (rows, n): order of each pair in the labels
        dy = np.sign(y[None, :] - y[rows, None])
        upper = np.arange(n)[None, :] > rows[:, None]       # each unordered pair once
        dx, dy = dx[upper], dy[upper]
        prod = dx * dy
        out["concordant"] += int((prod > 0).sum())
        out["discordant"] += int((prod < 0).sum())
        out["label_ties"] += int((dx == 0).sum())
        out["prediction_ties"] += int((dy == 0).sum())
        out["joint_ties"] += int(((dx == 0) & (dy == 0)).sum())
    return out


def kendalltau_bpq(labels: np.ndarray, predictions: np.ndarray) -> float:
    """The concordance Chen & Krishnan report as BreastPathQ "Kendall tau": ``kendalltau_bpq(val_labels, y_score)``
    with its default ``variant='d'`` (``Richarizardd/Self-Supervised-ViT-Path``, ``patch_evaluation_utils.py``, a
    modified copy of scipy's ``kendalltau``), reimplemented here from its arithmetic.

    That code computes ``con = tot - xtie - ytie + ntie`` and returns ``(con + 0.5 * ytie) / (con + dis + ytie)``,
    where ``tot`` = n (n - 1) / 2 pairs, ``xtie`` / ``ytie`` the pairs tied in the labels / in the predictions (joint
    ties included in both), ``ntie`` the joint ties and ``dis`` the discordant pairs. Its ``con`` is the number of
    pairs untied in both arrays, i.e. concordant + discordant (scipy's concordant count would also subtract ``dis``),
    so the value is ``(C + D + 0.5 T_pred) / (C + 2 D + T_pred)`` with T_pred = pairs tied in the predictions —
    not the challenge's prediction probability ``(C + 0.5 T_pred) / (C + D + T_pred)``. The result is clipped to
    [-1, 1] as there (a no-op: it lies in [0, 1]). Where the reference fails — every label or every prediction
    equal (it raises NameError on an undefined ``KendalltauResult``), empty input, NaN — this returns NaN.
    """
    x = np.asarray(labels, dtype=np.float64).ravel()
    y = np.asarray(predictions, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"labels and predictions must have the same size, got {x.size} and {y.size}")
    if x.size < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    c = pair_counts(x, y)
    tot = x.size * (x.size - 1) // 2
    if c["label_ties"] == tot or c["prediction_ties"] == tot:
        return float("nan")
    con = tot - c["label_ties"] - c["prediction_ties"] + c["joint_ties"]   # the reference's "con" (= C + D)
    tau = (con + 0.5 * c["prediction_ties"]) / (con + c["discordant"] + c["prediction_ties"])
    return float(min(1.0, max(-1.0, tau)))


def regression_probe(
    train_f: np.ndarray,
    train_y: np.ndarray,
    test_f: np.ndarray,
    test_y: np.ndarray,
    *,
    alpha: Optional[float] = None,
    clip: Optional[tuple[float, float]] = (0.0, 1.0),
) -> dict[str, Any]:
    """Fit on (train_f, train_y), score test; the returned names are listed in the module docstring."""
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
        "kendall_tau_unclipped": float(kendalltau(raw, test_y).statistic),
        "tau_bpq": kendalltau_bpq(test_y, raw),
        "predictions": pred,
        "predictions_unclipped": raw,
        "model": "linear" if alpha is None else f"ridge(alpha={alpha})",
    }
