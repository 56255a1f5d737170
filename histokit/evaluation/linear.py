"""Linear probing of frozen features (Ye et al. 2024, Table 1 "Linear"): a multinomial logistic regression on the
stored embeddings — a convex, L2-regularized fit, not a reimplementation of DINO's ``eval_linear.py``.

What the kit does: scikit-learn ``LogisticRegression`` (multinomial, L-BFGS, ``max_iter`` 1000) on one fixed,
un-augmented feature vector per image (the encoder's pooled embedding as stage 04 stores it), with the inverse L2
strength ``C`` swept over ``DEFAULT_CS``; ``C`` is chosen on the validation split and the test accuracy of the model
trained on the training split with that ``C`` is reported.

What DINO's ``eval_linear.py`` (Caron et al. 2021, the protocol Ye et al. cite) does instead: an ``nn.Linear`` on
frozen features — for ViT-S the [CLS] tokens of the last 4 blocks concatenated (``n_last_blocks`` 4) — recomputed
for every training view (RandomResizedCrop 224 + horizontal flip; test: Resize 256 + CenterCrop 224), trained with
SGD (momentum 0.9, no weight decay, lr 0.001 x batch / 256, batch 128 per GPU) under a cosine schedule for 100
epochs, and the best test accuracy over the epochs is reported; Ye et al. sweep its learning rate. Augmentation,
the feature (last-4-block concatenation vs the pooled embedding), the regularization (none vs L2 with C chosen on
validation) and the model selection (best epoch on the test set vs C chosen on validation) all differ, so the
numbers are comparable in kind only: the two protocols differ.

Units: accuracies are fractions in [0, 1] (fractions in code, percent only where a table renders them; docs/api.md).
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
    """Sweep ``C`` (inverse L2 strength) on the validation split; return test ``accuracy`` at ``best_C``.

    ``sweep`` lists ``{C, val_accuracy, converged}`` per value; ties in validation accuracy keep the smaller ``C``
    (the stronger regularization). The returned ``val_accuracy`` is the best one. Accuracies are fractions in
    [0, 1].
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
        val_acc = float(np.mean(model.predict(val_f) == val_y))
        sweep.append({"C": C, "val_accuracy": val_acc, "converged": converged})
        if best is None or val_acc > best["val_accuracy"]:
            best, best_model = sweep[-1], model
    test_acc = float(np.mean(best_model.predict(test_f) == test_y))
    return {
        "accuracy": test_acc,
        "best_C": best["C"],
        "val_accuracy": best["val_accuracy"],
        "sweep": sweep,
        "predictions": best_model.predict(test_f),
    }
