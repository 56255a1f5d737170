"""Kimia Path24(C) patch-to-scan accuracies η_p, η_w, η_tot — two definitions, both used in the literature.

**Standard** (Babaie et al., CVPR-W 2017, "Classification and retrieval of digital pathology scans: a new dataset";
Shafiei et al. 2021 for Path24C), the definition Nuñez-Fernández et al. (Sensors 2025) write in Sec. 4.1.1:
every test patch queries the *training* patches; its retrieval is correct when the top-1 training patch comes from
the same scan. With R the correct test patches, Γ_s the test patches of scan s and n_tot the number of test patches::

    η_p = Σ_s |R ∩ Γ_s| / n_tot          η_w = (1/|S|) Σ_s |R ∩ Γ_s| / |Γ_s|          η_tot = η_p · η_w

**Public-code variant** (camilo-nunez/ffnir ``ntbk_02_extract-features-kimia.ipynb``, which produced the LGFFEM
tables) — see :func:`eta_public_code`.

All values are returned as fractions in [0, 1] (η_tot = η_p · η_w; the kit's one convention, docs/api.md), with
the counts behind η_p (``n_correct`` = Σ_s |R ∩ Γ_s|, ``n_queries`` = n_tot). The paper's tables are in percent
(99.40 · 99.47 / 100 -> 98.87): the table layer (``histokit.evaluation.protocols.kimia_eta.eta_percent``) converts, from the counts
for η_p.
"""
from __future__ import annotations

import re
from pathlib import PurePath
from typing import Optional, Sequence

import faiss
import numpy as np


def _as_features(x, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _as_labels(x, n: int, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} must be 1-D with one scan id per feature row ({n}), got shape {arr.shape}")
    return arr


def _flat_index(feats: np.ndarray, metric: str) -> tuple[faiss.Index, np.ndarray]:
    if metric == "l2":  # the paper: FAISS Euclidean index
        return faiss.IndexFlatL2(feats.shape[1]), feats
    if metric == "cosine":
        normed = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        return faiss.IndexFlatIP(feats.shape[1]), np.ascontiguousarray(normed, dtype=np.float32)
    raise ValueError(f"metric must be 'l2' or 'cosine', got metric={metric!r}")


def _etas(hits_per_scan: np.ndarray, size_per_scan: np.ndarray) -> dict[str, float]:
    n_correct, n_queries = float(hits_per_scan.sum()), float(size_per_scan.sum())
    eta_p = n_correct / n_queries
    eta_w = float(np.mean(hits_per_scan / size_per_scan))
    return {"eta_p": eta_p, "eta_w": eta_w, "eta_tot": eta_p * eta_w, "n_correct": n_correct, "n_queries": n_queries}


def eta_standard(train_feats, train_scans: Sequence, test_feats, test_scans: Sequence, *,
                 metric: str = "l2") -> dict[str, float]:
    """Kimia standard η_p, η_w, η_tot (fractions): each test patch's top-1 neighbour among the *training* patches.

    ``metric``: ``"l2"`` (FAISS ``IndexFlatL2``, the paper's) or ``"cosine"``. Exact search. Scans are the test
    set's distinct ``test_scans`` (24 for Kimia Path24C).
    """
    train = _as_features(train_feats, "train_feats")
    test = _as_features(test_feats, "test_feats")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train_feats and test_feats differ in dimension: {train.shape[1]} vs {test.shape[1]}")
    train_y = _as_labels(train_scans, len(train), "train_scans")
    test_y = _as_labels(test_scans, len(test), "test_scans")
    index, base = _flat_index(train, metric)
    _, queries = _flat_index(test, metric)
    index.add(base)
    _, nn_idx = index.search(queries, 1)
    correct = train_y[nn_idx[:, 0]] == test_y
    scans = np.unique(test_y)
    hits = np.array([correct[test_y == s].sum() for s in scans], dtype=np.float64)
    sizes = np.array([(test_y == s).sum() for s in scans], dtype=np.float64)
    return _etas(hits, sizes)


def natural_key(text) -> tuple:
    """Natural sort key, as ``natsort.natsorted``'s default: runs of digits compare as integers, the rest as text
    (``s0_2.jpg`` < ``s0_10.jpg``, where plain string order puts ``s0_10.jpg`` first). The parts alternate text,
    number, text ..., so any two keys compare."""
    parts = re.split(r"(\d+)", str(text))
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def eta_public_code(test_feats, test_scans: Sequence, *, test_paths: Optional[Sequence[str]] = None,
                    metric: str = "l2") -> dict[str, float]:
    """η_p, η_w, η_tot (fractions) exactly as the ffnir notebook computes them (which is *not* the Kimia standard).

    The notebook's procedure (``ntbk_02_extract-features-kimia.ipynb``, ``kimia_metrics_from_checkpoint``),
    reproduced step by step:

    1. The test patches are ordered scan by scan (s0, s1, ..., s23, scan ids in natural order), within a scan by the
       natural order of their paths (``natsorted(Path(f's{i}').rglob('*.jpg'), key=str)``), and *only the test
       patches* are indexed (``IndexFlatL2``) and searched against themselves with full depth (each query's own
       patch is its rank-0 result).
    2. For scan s occupying rows ``[lo_s, hi_s)`` of that order, only the *first* patch of the scan (row ``lo_s``)
       is used as a query, and its top ``hi_s`` results are kept — the search depth is the cumulative patch count up
       to and including scan s, so it grows with the scan index (scan 0: |Γ_0| results; scan 23: all 1,325).
    3. ``|R ∩ Γ_s|`` is the number of scan-s patch *file names* (``path.name``) among the file names of those
       ``hi_s`` results (a set intersection; the query itself counts, and another scan's patch that shares a file
       name with a scan-s patch counts too). η_p = Σ_s |R ∩ Γ_s| / n_tot, η_w = mean_s |R ∩ Γ_s| / |Γ_s|,
       η_tot = η_p · η_w.

    ``test_paths``: each patch's path (or file name). Without it the within-scan order is the given one and a patch
    is identified by its row. The notebook divides η_w by 24, here by the number of scans (24 for Kimia Path24C).
    """
    feats = _as_features(test_feats, "test_feats")
    scans_y = _as_labels(test_scans, len(feats), "test_scans")
    paths = None if test_paths is None else [str(p) for p in _as_labels(test_paths, len(feats), "test_paths")]
    scans = sorted(np.unique(scans_y).tolist(), key=lambda s: natural_key(s))
    # Step 1: scan by scan; within a scan by natural path order (stable: the given order without paths).
    order = []
    for s in scans:
        rows = np.flatnonzero(scans_y == s).tolist()
        order += rows if paths is None else sorted(rows, key=lambda r: natural_key(paths[r]))
    order = np.asarray(order, dtype=np.int64)
    feats, scans_y = feats[order], scans_y[order]
    ident = order if paths is None else np.asarray([PurePath(paths[r]).name for r in order], dtype=object)
    index, base = _flat_index(feats, metric)
    index.add(base)
    sizes = np.array([(scans_y == s).sum() for s in scans])
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    queries = base[bounds[:-1]]  # step 2: first patch of each scan
    _, ranks = index.search(queries, len(feats))
    hits = np.empty(len(scans), dtype=np.float64)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        retrieved = set(ident[ranks[i, :hi]].tolist())  # depth hi_s grows with the scan index
        hits[i] = len(retrieved & set(ident[lo:hi].tolist()))  # step 3
    return _etas(hits, sizes.astype(np.float64))
