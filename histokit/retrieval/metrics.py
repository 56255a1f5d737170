"""Retrieval metrics at a cut-off k (mAP@k, P@k, nDCG@k), vectorized over all queries, and the evaluation protocol.

Habijan et al. (EUSIPCO 2025, Sec. IV-A, Tables I-II) report mAP@10, Precision@10 and nDCG@10 on labelled sets,
without an equation or public code; a gallery item is relevant to a query when it has the query's class label.
The field uses several AP@k normalizations, so the kit implements them all and every result names its own
(docs/protocols.md, "Retrieval metric definitions"). With ``rel_i`` = 1 if the item at rank i is relevant,
``P@i`` = (relevant items in the top i) / i, ``R`` = number of relevant items in the gallery for that query:

    AP@k = (sum_{i <= k, rel_i = 1} P@i) / Z

    normalization  Z            used by
    "hits"         hits in top k torchmetrics ``retrieval_average_precision(top_k=k)``
    "R"            R             trec_eval ``map_cut``, ranx ``map@k``
    "min_k_R"      min(k, R)     kit default: reaches 1 exactly when the top k is as relevant as it can be
    "k"            k             Patho-Bench

Worked example (docs/protocols.md): relevance 1 0 1 0 0 in the top 5, R = 4, k = 5: sum of P@i over hits =
1/1 + 2/3 = 1.6667, so AP = 0.8333 (hits, Z = 2) / 0.4167 (R = 4) / 0.4167 (min(5, 4) = 4) / 0.3333 (k = 5).
nDCG@k uses binary gains, log2 discount ``1 / log2(i + 1)`` and an ideal ranking of min(k, R) relevant items:
DCG = 1 + 1/log2(4) = 1.5, IDCG = 1 + 1/log2 3 + 1/2 + 1/log2 5 = 2.5616, nDCG@5 = 0.5856 (torchmetrics and ranx
agree). A query with no relevant item (R = 0) scores 0 on every metric (torchmetrics' default ``"neg"`` action).

Units: every metric is a fraction in [0, 1] (per query and averaged; the kit's one convention, docs/api.md); tables
show them in percent.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .features import autocast_context, l2_normalize, synchronize
from .index import build_index, search
from .scale import EXACT_MAX_GALLERY, gallery_index
from .torch_search import TorchFlatIndex, describe_search

AP_NORMALIZATIONS = ("min_k_R", "hits", "R", "k")
_METRIC_PREFIXES = ("AP@", "P@", "nDCG@")


def _check_k(rel: np.ndarray, k: int) -> np.ndarray:
    rel = np.asarray(rel)
    if rel.ndim != 2:
        raise ValueError(f"relevance must be a (Q, k) matrix, got shape {rel.shape}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got k={k!r}")
    if rel.shape[1] < k:
        raise ValueError(f"relevance has {rel.shape[1]} ranked columns, fewer than k={k}")
    return rel[:, :k].astype(bool, copy=False)


def _check_n_relevant(n_relevant, rel_k: np.ndarray, needed_by: str) -> np.ndarray:
    if n_relevant is None:
        raise ValueError(f"n_relevant (R per query) is required for {needed_by}")
    r = np.asarray(n_relevant, dtype=np.int64)
    if r.shape != (rel_k.shape[0],):
        raise ValueError(f"n_relevant must have shape ({rel_k.shape[0]},), got {r.shape}")
    hits = rel_k.sum(axis=1)
    bad = np.flatnonzero(r < hits)
    if bad.size:
        q = int(bad[0])
        raise ValueError(
            f"n_relevant[{q}]={int(r[q])} is smaller than the {int(hits[q])} relevant items found in its top k: "
            "R must count every relevant gallery item (and exclude the query itself only if it was excluded)"
        )
    return r


def relevance_matrix(retrieved_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """``rel[q, i] = retrieved_labels[q, i] == query_labels[q]`` -> bool (Q, k): class-label relevance."""
    retrieved = np.asarray(retrieved_labels)
    query = np.asarray(query_labels)
    if retrieved.ndim != 2 or query.shape != (retrieved.shape[0],):
        raise ValueError(
            f"retrieved_labels must be (Q, k) and query_labels (Q,), got {retrieved.shape} and {query.shape}"
        )
    return retrieved == query[:, None]


def precision_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    """P@k = (relevant items in the top k) / k per query (torchmetrics ``retrieval_precision(top_k=k)``)."""
    rel_k = _check_k(rel, k)
    return rel_k.sum(axis=1) / float(k)


def average_precision_at_k(
    rel: np.ndarray, n_relevant: Optional[np.ndarray], k: int, normalization: str = "min_k_R"
) -> np.ndarray:
    """AP@k per query with the normalization ``Z`` named by ``normalization`` (see the module docstring table).

    ``n_relevant`` (R per query) is needed for "R" and "min_k_R" and ignored by "hits" and "k".
    """
    if normalization not in AP_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {AP_NORMALIZATIONS}, got normalization={normalization!r}")
    rel_k = _check_k(rel, k)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    hits_so_far = np.cumsum(rel_k, axis=1)
    sum_precision = (hits_so_far / ranks * rel_k).sum(axis=1)  # sum of P@i over the relevant ranks i <= k
    if normalization == "hits":
        z = hits_so_far[:, -1].astype(np.float64)
    elif normalization == "k":
        z = np.full(rel_k.shape[0], float(k))
    else:
        r = _check_n_relevant(n_relevant, rel_k, f"normalization={normalization!r}").astype(np.float64)
        z = r if normalization == "R" else np.minimum(float(k), r)
    return np.divide(sum_precision, z, out=np.zeros_like(sum_precision), where=z > 0)


def ndcg_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """nDCG@k per query: binary gains, discount 1 / log2(i + 1), ideal DCG of min(k, R) relevant items first."""
    rel_k = _check_k(rel, k)
    r = _check_n_relevant(n_relevant, rel_k, "nDCG")
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = rel_k @ discounts
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])  # ideal_cum[m] = IDCG with m relevant items
    idcg = ideal_cum[np.minimum(r, k)]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def count_relevant(gallery_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """R per query: how many gallery items share the query's label (the query itself included if in the gallery)."""
    q = np.asarray(query_labels)
    classes, counts = np.unique(np.asarray(gallery_labels), return_counts=True)
    if classes.size == 0:
        return np.zeros(q.shape, dtype=np.int64)
    pos = np.minimum(np.searchsorted(classes, q), classes.size - 1)
    return np.where(classes[pos] == q, counts[pos], 0).astype(np.int64)


def retrieval_scores(
    gallery_labels: np.ndarray,
    ids: np.ndarray,
    query_labels: np.ndarray,
    k: int = 10,
    *,
    n_relevant: Optional[np.ndarray] = None,
    ap_normalization: str = "min_k_R",
) -> dict[str, np.ndarray]:
    """Per-query ``AP@k``, ``P@k``, ``nDCG@k`` (plus ``hits@k`` and ``n_relevant``) from ranked gallery ``ids``.

    ``ids`` (Q, >= k) are gallery row ids, best first (FAISS's ``-1`` padding counts as not relevant).
    ``n_relevant`` defaults to the count of the query's label among ``gallery_labels`` — pass it explicitly (as
    :func:`evaluate_retrieval` does) when the query's own image was excluded from the ranking.
    """
    gallery_labels = np.asarray(gallery_labels)
    ids = np.asarray(ids, dtype=np.int64)
    query_labels = np.asarray(query_labels)
    if ids.ndim != 2 or ids.shape[0] != query_labels.shape[0]:
        raise ValueError(f"ids must be (Q, k) with Q = len(query_labels) = {query_labels.shape[0]}, got {ids.shape}")
    if ids.size and ids.max() >= gallery_labels.shape[0]:
        raise ValueError(f"ids refer to gallery row {int(ids.max())}, but gallery_labels has {gallery_labels.shape[0]}")
    ids_k = ids[:, :k]
    valid = ids_k >= 0
    rel = relevance_matrix(gallery_labels[np.where(valid, ids_k, 0)], query_labels) & valid
    if n_relevant is None:
        n_relevant = count_relevant(gallery_labels, query_labels)
    n_relevant = np.asarray(n_relevant, dtype=np.int64)
    return {
        f"AP@{k}": average_precision_at_k(rel, n_relevant, k, ap_normalization),
        f"P@{k}": precision_at_k(rel, k),
        f"nDCG@{k}": ndcg_at_k(rel, n_relevant, k),
        f"hits@{k}": rel[:, :k].sum(axis=1),
        "n_relevant": n_relevant,
    }


def summarize(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over queries of the metric arrays; ``AP@k`` becomes ``mAP@k`` (Habijan et al.'s column names)."""
    means = {}
    for key, values in per_query.items():
        if key.startswith(_METRIC_PREFIXES):
            name = "m" + key if key.startswith("AP@") else key
            means[name] = float(np.mean(values)) if len(values) else float("nan")
    return means


@dataclass
class RetrievalResult:
    per_query: dict[str, np.ndarray]
    means: dict[str, float]
    search_seconds: float
    ap_normalization: str
    k: int = 10
    ids: Optional[np.ndarray] = field(default=None, repr=False)      # (Q, k) ranked gallery rows, for galleries
    scores: Optional[np.ndarray] = field(default=None, repr=False)   # (Q, k) cosine similarities
    # None: searched exactly; else the approximate index's recall vs exact (scale.GalleryIndex.approximate), which a
    # table must carry as a note (scale.approximate_note) and its sidecar as a field
    approximate: Optional[dict[str, Any]] = None


def evaluate_retrieval(
    gallery_feats: np.ndarray,
    gallery_labels: np.ndarray,
    query_feats: np.ndarray,
    query_labels: np.ndarray,
    *,
    k: int = 10,
    same_set: bool = False,
    index_kind: str = "flat",
    ap_normalization: str = "min_k_R",
    device: str = "cpu",
    exact_max: Optional[int] = None,
) -> RetrievalResult:
    """Index the gallery, search every query by cosine similarity (Habijan et al. Eq. 1), score the top ``k``.

    Features are L2-normalized here (idempotent for extracted features). ``same_set=True``: the queries are the
    gallery itself (leave-one-out); each query's own image is never a hit, and ``R`` is the number of *other*
    gallery items with its label. ``search_seconds`` times the search of all queries (batched), excluding the index
    build; ``device`` is the run's: on CUDA the index searches on the GPU (:func:`build_index`). The metrics
    (``means``, ``per_query``) are fractions in [0, 1].

    ``exact_max`` (default ``scale.EXACT_MAX_GALLERY``, 1,000,000): a larger gallery (``index_kind="flat"``) is
    searched with an IVF index (:func:`histokit.retrieval.scale.gallery_index`) whose recall@k against exact search
    on a sample of the queries is returned in ``approximate``.
    """
    if ap_normalization not in AP_NORMALIZATIONS:
        raise ValueError(f"ap_normalization must be one of {AP_NORMALIZATIONS}, got {ap_normalization!r}")
    gallery_labels = np.asarray(gallery_labels)
    query_labels = np.asarray(query_labels)
    g = l2_normalize(np.asarray(gallery_feats, dtype=np.float32))
    q = l2_normalize(np.asarray(query_feats, dtype=np.float32))
    if g.shape[0] != gallery_labels.shape[0]:
        raise ValueError(f"gallery_feats has {g.shape[0]} rows but gallery_labels has {gallery_labels.shape[0]}")
    if q.shape[0] != query_labels.shape[0]:
        raise ValueError(f"query_feats has {q.shape[0]} rows but query_labels has {query_labels.shape[0]}")
    if same_set and (q.shape != g.shape or not np.array_equal(query_labels, gallery_labels)):
        raise ValueError("same_set=True needs the queries to be the gallery (same features and labels, same order)")

    approximate = None
    if index_kind == "flat":
        built = gallery_index(g, metric="ip", device=device, k=k, queries=q,
                              exact_max=EXACT_MAX_GALLERY if exact_max is None else exact_max)
        index, approximate = built.index, built.approximate
    else:
        index = build_index(g, kind=index_kind, metric="ip", device=device)
    t0 = time.perf_counter()
    scores, ids = search(index, q, k, exclude_self=same_set)
    search_seconds = time.perf_counter() - t0

    n_relevant = count_relevant(gallery_labels, query_labels) - (1 if same_set else 0)
    per_query = retrieval_scores(
        gallery_labels, ids, query_labels, k, n_relevant=n_relevant, ap_normalization=ap_normalization
    )
    return RetrievalResult(
        per_query=per_query, means=summarize(per_query), search_seconds=search_seconds,
        ap_normalization=ap_normalization, k=k, ids=ids, scores=scores, approximate=approximate,
    )


def retrieval_latency_ms(
    encoder: nn.Module,
    index,
    image_size: int | tuple[int, int],
    device: str | torch.device = "cpu",
    repeats: int = 20,
    *,
    k: int = 10,
    warmup: int = 3,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Retrieval latency per query as the kit defines it: batch-1 query feature extraction (forward + L2
    normalization on an in-memory tensor, no file decoding) + the top-``k`` search, CUDA synchronized before
    every clock read. Returns the median ``latency_ms`` and its two parts (``extraction_ms``, ``search_ms``), p90,
    and the conditions, with where each part ran (``extraction_device``; ``search_device``, ``search_backend``).
    Habijan et al.'s "retrieval latency" (Table I) is compared against ``latency_ms``. A torch index on the
    encoder's device takes the query without a host round trip; a FAISS index takes it as a host array.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available")
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    x = torch.randn(1, 3, h, w, device=device)
    was_training = encoder.training
    encoder.eval().to(device)
    on_device = isinstance(index, TorchFlatIndex) and index.device.type == device.type
    total, extract, searched = [], [], []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            synchronize(device)
            t0 = time.perf_counter()
            with autocast_context(device, precision):
                emb = encoder(x)
            query = l2_normalize(emb.float())
            if not on_device:
                query = query.cpu().numpy()  # .cpu() synchronizes the copy
            synchronize(device)
            t1 = time.perf_counter()
            if on_device:
                index.search_torch(query, k)[1].cpu()  # the ids reach the host, as FAISS's do
            else:
                search(index, query, k)
            t2 = time.perf_counter()
            if i >= warmup:
                extract.append(1000.0 * (t1 - t0))
                searched.append(1000.0 * (t2 - t1))
                total.append(1000.0 * (t2 - t0))
    encoder.train(was_training)
    return {
        "latency_ms": float(np.median(total)),
        "latency_ms_p90": float(np.percentile(total, 90)),
        "extraction_ms": float(np.median(extract)),
        "search_ms": float(np.median(searched)),
        "k": k,
        "gallery_size": int(index.ntotal),
        "device": str(device),
        "extraction_device": str(device),
        **describe_search(index),
        "batch_size": 1,
        "precision": precision,
        "image_size": [h, w],
        "repeats": repeats,
        "decode_included": False,
        "note": "batch-1 query: in-memory tensor -> encoder -> L2 -> top-k search; no image decoding",
    }
