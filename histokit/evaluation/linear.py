"""Linear probing of frozen features (Ye et al. 2024, Table 1 "Linear"; Caron et al. 2021, DINO ``eval_linear.py``).

Both papers train a linear classifier on frozen features and sweep the *learning rate* of SGD, keeping the best
setting. For a linear softmax classifier the problem is convex, so the learning rate only decides how close SGD
gets to the optimum; what actually changes the solution is the regularization. The kit therefore fits the exact
optimum with scikit-learn's ``LogisticRegression`` (multinomial, L-BFGS) and sweeps the inverse L2 strength ``C``
instead, choosing ``C`` on the validation split and reporting test accuracy of the model trained on the training
split with that ``C``. This is the same protocol as the paper's up to optimizer noise, not a smaller one.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-3, 4, 8))


def _check_xy(f, y, name: str, dim: int | None = None):
    f = np.asarray(f, dtype=np.float32)
    y = np.asarray(y)
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"{name}_f must be a non-empty (N, D) matrix, got shape {f.shape}")
    if y.shape != (f.shape[0],):
        raise ValueError(f"{name}_y must have shape ({f.shape[0]},), got {y.shape}")
    if dim is not None and f.shape[1] != dim:
        raise ValueError(f"{name}_f has dimension {f.shape[1]}, train_f has {dim}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name}_f contains NaN or inf")
    return f, y


def linear_probe(
    train_f: np.ndarray,
    train_y: np.ndarray,
    val_f: np.ndarray,
    val_y: np.ndarray,
    test_f: np.ndarray,
    test_y: np.ndarray,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    max_iter: int = 1000,
) -> dict[str, Any]:
    """Sweep ``C`` (inverse L2 strength) on the validation split; return test ``accuracy`` (%) at ``best_C``.

    ``sweep`` lists ``{C, val_accuracy, converged}`` per value; ties in validation accuracy keep the smaller ``C``
    (the stronger regularization). The returned ``val_accuracy`` is the best one, in %.
    """
    train_f, train_y = _check_xy(train_f, train_y, "train")
    val_f, val_y = _check_xy(val_f, val_y, "val", train_f.shape[1])
    test_f, test_y = _check_xy(test_f, test_y, "test", train_f.shape[1])
    Cs = [float(c) for c in Cs]
    if not Cs or min(Cs) <= 0:
        raise ValueError(f"Cs must be a non-empty sequence of positive numbers, got Cs={Cs}")
    if np.unique(train_y).size < 2:
        raise ValueError("train_y has a single class: a linear probe needs at least two")

    sweep, best, best_model = [], None, None
    for C in sorted(Cs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = LogisticRegression(C=C, max_iter=max_iter, random_state=seed).fit(train_f, train_y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        val_acc = 100.0 * float(np.mean(model.predict(val_f) == val_y))
        sweep.append({"C": C, "val_accuracy": val_acc, "converged": converged})
        if best is None or val_acc > best["val_accuracy"]:
            best, best_model = sweep[-1], model
    test_acc = 100.0 * float(np.mean(best_model.predict(test_f) == test_y))
    return {
        "accuracy": test_acc,
        "best_C": best["C"],
        "val_accuracy": best["val_accuracy"],
        "sweep": sweep,
        "predictions": best_model.predict(test_f),
    }
