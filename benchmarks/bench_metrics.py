"""Benchmark: mAP@10 / P@10 / nDCG@10 for 10,000 queries against a 100,000 x 384 gallery on the CPU.

Not a test. Compares three ways to get the same numbers:

1. bare FAISS: one batched exact inner-product search of all queries (``IndexFlatIP.search``), nothing else;
2. the kit: ``histokit.retrieval.metrics.evaluate_retrieval`` end to end (L2 normalization, index build, the same
   batched search, vectorized metrics), plus the vectorized metrics on their own;
3. a straightforward per-query loop: one FAISS search per query, then AP / P / nDCG in Python. It is timed on a
   random subsample of queries and extrapolated linearly to all of them (stated in the table).

The gallery is synthetic (9 Gaussian class clusters, CRC-like 384-d embeddings): only the timings matter, and the
loop's metrics are checked equal to the kit's on the subsample. Run: ``python benchmarks/bench_metrics.py``.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import time

import faiss
import numpy as np

from histokit.retrieval.features import l2_normalize
from histokit.retrieval.index import build_index, search
from histokit.retrieval.metrics import evaluate_retrieval, retrieval_scores


def make_data(n_gallery: int, n_queries: int, dim: int, n_classes: int, seed: int):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)).astype(np.float32)
    g_labels = rng.integers(0, n_classes, n_gallery)
    q_labels = rng.integers(0, n_classes, n_queries)
    noise = 4.0  # overlapping clusters: metrics well inside (0, 1)
    gallery = centers[g_labels] + noise * rng.standard_normal((n_gallery, dim), dtype=np.float32)
    queries = centers[q_labels] + noise * rng.standard_normal((n_queries, dim), dtype=np.float32)
    return gallery, g_labels, queries, q_labels


def loop_metrics(index, queries, q_labels, g_labels, class_counts, k):
    """The per-query way: search one query, walk its ranking in Python."""
    out = np.zeros((len(queries), 3))
    for qi in range(len(queries)):
        _, ids = index.search(queries[qi:qi + 1], k)
        r = int(class_counts.get(q_labels[qi], 0))
        hits, prec_sum, dcg = 0, 0.0, 0.0
        for rank, gid in enumerate(ids[0], start=1):
            if g_labels[gid] == q_labels[qi]:
                hits += 1
                prec_sum += hits / rank
                dcg += 1.0 / math.log2(rank + 1)
        idcg = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, r) + 1))
        out[qi] = (prec_sum / min(k, r) if r else 0.0, hits / k, dcg / idcg if idcg else 0.0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gallery", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--loop-sample", type=int, default=200, help="queries timed in the per-query loop")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    gallery, g_labels, queries, q_labels = make_data(a.gallery, a.queries, a.dim, 9, a.seed)
    gallery, queries = l2_normalize(gallery), l2_normalize(queries)
    rows = []

    t = time.perf_counter()
    index = build_index(gallery)
    build_s = time.perf_counter() - t

    t = time.perf_counter()
    _, ids = search(index, queries, a.k)
    search_s = time.perf_counter() - t
    rows.append(("bare FAISS search (IndexFlatIP, batched)", search_s, "measured"))

    t = time.perf_counter()
    per_query = retrieval_scores(g_labels, ids, q_labels, a.k)
    metrics_s = time.perf_counter() - t
    rows.append(("kit vectorized metrics only (given ids)", metrics_s, "measured"))

    t = time.perf_counter()
    res = evaluate_retrieval(gallery, g_labels, queries, q_labels, k=a.k)
    kit_s = time.perf_counter() - t
    rows.append(("kit evaluate_retrieval (normalize + build + search + metrics)", kit_s, "measured"))
    rows.append(("  of which its FAISS search", res.search_seconds, "measured (RetrievalResult.search_seconds)"))

    sample = np.random.default_rng(a.seed).choice(a.queries, size=min(a.loop_sample, a.queries), replace=False)
    labels, counts = np.unique(g_labels, return_counts=True)
    t = time.perf_counter()
    loop = loop_metrics(index, queries[sample], q_labels[sample], g_labels, dict(zip(labels, counts)), a.k)
    loop_s = (time.perf_counter() - t) * a.queries / len(sample)
    rows.append(("per-query loop (search + Python metrics)", loop_s,
                 f"extrapolated from {len(sample)} queries x {a.queries / len(sample):.1f}"))

    kit_sample = np.stack([per_query[f"AP@{a.k}"], per_query[f"P@{a.k}"], per_query[f"nDCG@{a.k}"]], 1)[sample]
    if not np.allclose(loop, kit_sample):
        raise SystemExit("per-query loop and vectorized metrics disagree")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{a.queries:,} queries vs {a.gallery:,} x {a.dim} gallery, k = {a.k}, exact inner product, CPU "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
          f"FAISS {faiss.__version__} with {faiss.omp_get_max_threads()} OpenMP threads, load average {load:.1f}); "
          f"index build (add) {1000 * build_s:.0f} ms\n")
    print("| path | seconds | ms / query | note |")
    print("|---|---:|---:|---|")
    for name, sec, note in rows:
        print(f"| {name} | {sec:.3f} | {1000 * sec / a.queries:.4f} | {note} |")
    m = res.means
    print(f"\nmetrics (synthetic data, min(k,R) AP): mAP@{a.k} {m[f'mAP@{a.k}']:.4f}, P@{a.k} {m[f'P@{a.k}']:.4f}, "
          f"nDCG@{a.k} {m[f'nDCG@{a.k}']:.4f}; loop == vectorized on the {len(sample)}-query sample")


if __name__ == "__main__":
    main()
