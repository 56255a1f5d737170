"""k-NN evaluation of frozen features: DINO's weighted vote, Chen & Krishnan's scikit-learn AUC, plain majority.

* :func:`weighted_knn` — Caron et al. 2021 (DINO) ``eval_knn.py``, used by Ye et al. (CypherViT, Tables 1-4:
  Acc@1 / Acc@3): cosine similarity on L2-normalized features, the k most similar training items vote for their
  class with weight ``exp(sim / T)``, class scores are summed, classes ranked by score. DINO splits the test set into
  exactly 100 chunks of ``N // 100`` images, which is a zero step (a crash) under 100 test images; here chunks
  have a fixed size, so any test-set size works (docs/protocols.md).
* :func:`sklearn_knn_auc` — Chen & Krishnan 2022 (``patch_evaluation.ipynb``): ``KNeighborsClassifier()`` with
  scikit-learn's defaults (k = 5, Euclidean, uniform weights), macro one-vs-rest ROC-AUC of ``predict_proba``.
* :func:`majority_knn` — the unweighted vote (every neighbour counts 1), for comparison with the weighted one.

Units: every accuracy and AUC here is a fraction in [0, 1] (the kit's one convention: fractions in code, percent
only where a table renders them; docs/api.md).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier


def _check_xy(f: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(f, dtype=np.float32)
    y = np.asarray(y)
    if f.ndim != 2:
        raise ValueError(f"{name}_f must be a (N, D) feature matrix, got shape {f.shape}")
    if y.shape != (f.shape[0],):
        raise ValueError(f"{name}_y must have shape ({f.shape[0]},) to match {name}_f, got {y.shape}")
    if f.shape[0] == 0:
        raise ValueError(f"{name}_f is empty")
    if not np.isfinite(f).all():
        raise ValueError(f"{name}_f contains NaN or inf")
    return f, y


def _check_pair(train_f, train_y, test_f, test_y, k: int):
    train_f, train_y = _check_xy(train_f, train_y, "train")
    test_f, test_y = _check_xy(test_f, test_y, "test")
    if train_f.shape[1] != test_f.shape[1]:
        raise ValueError(f"train_f has dimension {train_f.shape[1]} but test_f has {test_f.shape[1]}")
    if not 1 <= k <= train_f.shape[0]:
        raise ValueError(f"k must be in [1, n_train={train_f.shape[0]}], got k={k}")
    return train_f, train_y, test_f, test_y


def weighted_knn(
    train_f: np.ndarray,
    train_y: np.ndarray,
    test_f: np.ndarray,
    test_y: np.ndarray,
    *,
    k: int = 20,
    T: float = 0.07,
    num_classes: Optional[int] = None,
    chunk: int = 1024,
) -> dict[str, Any]:
    """DINO's weighted k-NN classifier; returns ``top1`` and ``top3`` accuracy as fractions in [0, 1], and the top-1
    ``predictions``.

    Labels are integer class ids in ``[0, num_classes)`` (default: max label + 1). Features are L2-normalized here
    (as DINO's extraction does), so the similarity is cosine. Tied class scores rank the lower class id first.
    """
    train_f, train_y, test_f, test_y = _check_pair(train_f, train_y, test_f, test_y, k)
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got T={T}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got chunk={chunk}")
    for name, y in (("train_y", train_y), ("test_y", test_y)):
        if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
            raise ValueError(f"{name} must hold non-negative integer class ids, got dtype {y.dtype}")
    n_cls = int(max(train_y.max(), test_y.max())) + 1 if num_classes is None else int(num_classes)
    if max(train_y.max(), test_y.max()) >= n_cls:
        raise ValueError(f"num_classes={n_cls} but a label {int(max(train_y.max(), test_y.max()))} occurs")

    train = torch.nn.functional.normalize(torch.from_numpy(train_f), dim=1)
    test = torch.nn.functional.normalize(torch.from_numpy(test_f), dim=1)
    train_labels = torch.from_numpy(train_y.astype(np.int64))
    ranked = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start:start + chunk] @ train.T                    # (B, N_train) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1, largest=True, sorted=True)
        weights = (top_sim / T).exp()                                # DINO: exp(sim / T)
        scores = torch.zeros(sim.shape[0], n_cls, dtype=weights.dtype)
        scores.scatter_add_(1, train_labels[top_idx], weights)       # sum the votes per class
        ranked.append(scores.argsort(dim=1, descending=True, stable=True)[:, :3])
    ranked = torch.cat(ranked).numpy()
    correct = ranked == test_y[:, None]
    return {
        "top1": float(correct[:, 0].mean()),
        "top3": float(correct[:, :3].any(axis=1).mean()),
        "predictions": ranked[:, 0].astype(np.int64),
        "k": k,
        "T": T,
    }


def sklearn_knn_auc(
    train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray, k: int = 5
) -> dict[str, Any]:
    """Chen & Krishnan's protocol: ``KNeighborsClassifier(n_neighbors=k)`` (defaults otherwise: Euclidean,
    uniform), macro one-vs-rest ROC-AUC of ``predict_proba`` and top-1 ``accuracy`` (fractions, as they report).

    Rule for classes absent from the test set: a one-vs-rest AUC needs positives and negatives, so classes with no
    (or only) test samples are left out of the macro average and listed in ``auc_skipped_classes``; with every class
    present the value equals ``roc_auc_score(..., multi_class="ovr", average="macro")``. A test label never seen in
    training has no score column and raises ValueError.
    """
    train_f, train_y, test_f, test_y = _check_pair(train_f, train_y, test_f, test_y, k)
    unseen = np.setdiff1d(np.unique(test_y), np.unique(train_y))
    if unseen.size:
        raise ValueError(f"test_y has class(es) {unseen.tolist()} absent from train_y: the classifier cannot score them")
    clf = KNeighborsClassifier(n_neighbors=k).fit(train_f, train_y)
    proba = clf.predict_proba(test_f)
    aucs, used, skipped = [], [], []
    for col, cls in enumerate(clf.classes_):
        positives = test_y == cls
        if positives.all() or not positives.any():
            skipped.append(cls.item())
            continue
        aucs.append(roc_auc_score(positives, proba[:, col]))
        used.append(cls.item())
    return {
        "auc_macro_ovr": float(np.mean(aucs)) if aucs else float("nan"),
        "accuracy": float(np.mean(clf.classes_[proba.argmax(axis=1)] == test_y)),
        "auc_per_class": dict(zip(used, map(float, aucs))),
        "auc_skipped_classes": skipped,
        "k": k,
    }


def majority_knn(
    train_f: np.ndarray,
    train_y: np.ndarray,
    test_f: np.ndarray,
    test_y: np.ndarray,
    *,
    k: int = 20,
    metric: str = "cosine",
) -> dict[str, Any]:
    """Plain majority vote of the k nearest training items (scikit-learn, uniform weights; ties -> lowest label).

    Returns ``top1`` accuracy as a fraction in [0, 1] and the ``predictions``. ``metric`` is any scikit-learn metric
    name.
    """
    train_f, train_y, test_f, test_y = _check_pair(train_f, train_y, test_f, test_y, k)
    clf = KNeighborsClassifier(n_neighbors=k, weights="uniform", metric=metric, algorithm="brute")
    pred = clf.fit(train_f, train_y).predict(test_f)
    return {"top1": float(np.mean(pred == test_y)), "predictions": pred, "k": k, "metric": metric}
