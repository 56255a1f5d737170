"""Train/test leakage audit: near-duplicate tiles shared by a training split and a test split.

A test tile with a near-copy in the training split (the same region cut twice, overlapping tiles of one slide, a
re-encoded copy) lets a retrieval or k-NN metric reward memory instead of representation. Random tile-level splits
of slide-level data (Habijan et al.'s 80/10/10; PathMNIST's random validation set) are where this happens, so the
audit is run per dataset and per split variant and reported beside the tables.

Method: both splits' features are L2-normalised, the training features go into the kit's exact FAISS
inner-product index (:func:`histokit.retrieval.index.build_index`, inner product = cosine on unit vectors) and a
FAISS range search returns every (test, train) pair whose cosine reaches ``threshold``. The threshold depends on
the encoder (feature spaces differ in how close unrelated tiles sit), so it has no default: state it with the
result, which :func:`leakage_summary` does.

Encoder features call two tiles of the same tissue type similar even when they are different cuts; to ask "is this
the same image?" independently of any encoder, :func:`pixel_descriptors` gives zero-mean thumbnails whose cosine is
the normalised cross-correlation of the two images (robust to re-encoding and brightness changes, not to crops).

A stage writing ``results/leakage/<profile>/`` should save the summary rows (:data:`SUMMARY_COLUMNS`) as a CSV and
the pairs figure (:func:`histokit.viz.pairs.duplicate_pairs_figure`) as PNGs there; ``histokit report`` shows them.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..retrieval.features import l2_normalize
from ..retrieval.index import build_index

PAIR_COLUMNS = ("test_idx", "train_idx", "cosine")
SUMMARY_COLUMNS = ("dataset", "split", "n_train", "n_test", "threshold", "n_pairs", "n_test_with_duplicate",
                   "fraction_test_with_duplicate", "max_cosine")
# FAISS keeps inner products strictly above the radius; searching a hair below the threshold and comparing exactly
# afterwards keeps a pair that sits on the threshold.
_RANGE_SLACK = 1e-5


def _unit_rows(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) feature matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    norms = np.linalg.norm(x, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:  # a zero vector has no direction: its cosine to anything is undefined
        raise ValueError(f"{name} has all-zero rows (first: {zero[:5].tolist()}); cosine is undefined for them")
    return np.ascontiguousarray(l2_normalize(x))


def pixel_descriptors(images: Sequence[Any], size: int = 32) -> np.ndarray:
    """(N, size * size * 3) float32: each image resized to ``size`` px, each channel minus its own mean.

    ``images`` holds file paths, PIL images or (H, W, 3) arrays. Subtracting each image's own mean makes the cosine
    of two descriptors their normalised cross-correlation: blank or fatty tiles, which share a mean colour but not
    their texture, then no longer look alike.
    """
    from PIL import Image

    from ..viz.grid import load_tile

    if size < 2:
        raise ValueError(f"size must be >= 2 pixels, got size={size}")
    out = np.empty((len(images), size * size * 3), dtype=np.float32)
    for i, image in enumerate(images):
        thumb = Image.fromarray(load_tile(image)).resize((size, size), Image.BILINEAR)
        x = np.asarray(thumb, dtype=np.float32) / 255.0
        out[i] = (x - x.mean(axis=(0, 1))).ravel()
    return out


def near_duplicates(train_feats, test_feats, threshold: float) -> pd.DataFrame:
    """Every (test, train) pair with cosine similarity >= ``threshold``.

    Returns a DataFrame with columns ``test_idx`` (row of ``test_feats``), ``train_idx`` (row of ``train_feats``)
    and ``cosine``, sorted by cosine (highest first), then test and train index. Search is exact (flat index).
    """
    threshold = float(threshold)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity and must lie in [-1, 1], got threshold={threshold}")
    train = _unit_rows(train_feats, "train_feats")
    test = _unit_rows(test_feats, "test_feats")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train_feats has dimension {train.shape[1]}, test_feats has {test.shape[1]}: the two "
                         "splits must be embedded by the same encoder")
    index = build_index(train, kind="flat", metric="ip")
    lims, scores, ids = index.range_search(test, threshold - _RANGE_SLACK)
    test_idx = np.repeat(np.arange(test.shape[0], dtype=np.int64), np.diff(lims.astype(np.int64)))
    pairs = pd.DataFrame({"test_idx": test_idx, "train_idx": ids.astype(np.int64),
                          "cosine": scores.astype(np.float64)})
    pairs = pairs[pairs["cosine"] >= threshold]
    return pairs.sort_values(["cosine", "test_idx", "train_idx"], ascending=[False, True, True],
                             ignore_index=True)


def leakage_summary(pairs: pd.DataFrame, n_test: int, threshold: float, *, n_train: int | None = None,
                    dataset: str = "", split: str = "") -> dict:
    """One row of the leakage table for one dataset and split variant.

    ``fraction_test_with_duplicate`` = test items with at least one training near-duplicate / ``n_test``;
    ``n_pairs`` counts every pair (one test tile may match several training tiles); ``max_cosine`` is NaN when no
    pair reached the threshold.
    """
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs lacks column(s) {missing}; expected the output of near_duplicates {PAIR_COLUMNS}")
    if int(n_test) < 1:
        raise ValueError(f"n_test must be >= 1 (the size of the test split), got n_test={n_test}")
    if len(pairs) and (pairs["test_idx"].max() >= n_test or pairs["test_idx"].min() < 0):
        raise ValueError(f"pairs.test_idx holds {int(pairs['test_idx'].max())}, outside the test split "
                         f"(n_test={n_test})")
    if n_train is not None and len(pairs) and pairs["train_idx"].max() >= n_train:
        raise ValueError(f"pairs.train_idx holds {int(pairs['train_idx'].max())}, outside the training split "
                         f"(n_train={n_train})")
    with_dup = int(pairs["test_idx"].nunique())
    return {"dataset": dataset, "split": split, "n_train": n_train, "n_test": int(n_test),
            "threshold": float(threshold), "n_pairs": int(len(pairs)), "n_test_with_duplicate": with_dup,
            "fraction_test_with_duplicate": with_dup / int(n_test),
            "max_cosine": float(pairs["cosine"].max()) if len(pairs) else float("nan")}
