"""Section 4: mAP@10 / P@10 / nDCG@10 of N queries — the kit's ``evaluate_retrieval`` against a straightforward
per-query loop (moved here from ``benchmarks/bench_metrics.py``).

The loop is what one writes without thinking about speed: one FAISS search per query, then AP / P / nDCG walked in
Python. Searching per query is what makes it slow (FAISS runs a single query on one thread, without BLAS), so it is
timed on a random sample of queries and extrapolated linearly, which the row says. The metric arithmetic alone is
also compared on the same ranked ids (the loop over every query, not extrapolated). The loop's numbers must equal
the kit's on the sample, or the benchmark stops: a fast metric that disagrees is a bug, not a result.
"""
from __future__ import annotations

import math
import time

import faiss
import numpy as np

from histokit.retrieval.metrics import evaluate_retrieval, retrieval_scores
from .rows import Row, SectionResult
from .targets import EVAL_SPEEDUP_MIN
from .timing import median, profile_top


def loop_metrics_from_ids(ids: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray, class_counts: dict,
                          k: int) -> np.ndarray:
    """(Q, 3) array of AP@k (min(k, R) normalization), P@k, nDCG@k, one query at a time in plain Python."""
    out = np.zeros((len(ids), 3))
    for qi in range(len(ids)):
        r = int(class_counts.get(q_labels[qi], 0))
        hits, prec_sum, dcg = 0, 0.0, 0.0
        for rank, gid in enumerate(ids[qi][:k], start=1):
            if gid >= 0 and g_labels[gid] == q_labels[qi]:
                hits += 1
                prec_sum += hits / rank
                dcg += 1.0 / math.log2(rank + 1)
        idcg = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, r) + 1))
        out[qi] = (prec_sum / min(k, r) if r else 0.0, hits / k, dcg / idcg if idcg else 0.0)
    return out


def loop_metrics(index, queries: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray, class_counts: dict,
                 k: int) -> np.ndarray:
    """The per-query way end to end: search one query, walk its ranking in Python."""
    ids = np.empty((len(queries), k), dtype=np.int64)
    for qi in range(len(queries)):
        _, ids[qi] = index.search(queries[qi:qi + 1], k)
    return loop_metrics_from_ids(ids, q_labels, g_labels, class_counts, k)


def class_counts_of(labels: np.ndarray) -> dict:
    values, counts = np.unique(labels, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def kit_metric_matrix(per_query: dict, k: int) -> np.ndarray:
    return np.stack([per_query[f"AP@{k}"], per_query[f"P@{k}"], per_query[f"nDCG@{k}"]], axis=1)


def run_metrics_section(cfg, gallery, g_labels, queries, q_labels, flat_index, log=print) -> SectionResult:
    result = SectionResult()
    k, nq, ng = cfg.k, min(cfg.eval_queries, queries.shape[0]), gallery.shape[0]
    q, ql = queries[:nq], q_labels[:nq]
    counts = class_counts_of(g_labels)
    common = dict(batch_size=nq, precision="fp32", n=nq)

    log(f"  metrics: kit evaluate_retrieval, {nq:,} queries x {ng:,} items")
    t0 = time.perf_counter()
    res = evaluate_retrieval(gallery, g_labels, q, ql, k=k)
    kit_s = time.perf_counter() - t0

    sample = np.sort(np.random.default_rng(0).choice(nq, size=min(cfg.loop_sample, nq), replace=False))
    log(f"  metrics: per-query loop on {sample.size} queries")
    t0 = time.perf_counter()
    loop = loop_metrics(flat_index, q[sample], ql[sample], g_labels, counts, k)
    loop_s = (time.perf_counter() - t0) * nq / sample.size

    kit_matrix = kit_metric_matrix(res.per_query, k)
    diff = float(np.abs(loop - kit_matrix[sample]).max())
    if not np.allclose(loop, kit_matrix[sample], atol=1e-9):
        names = [f"AP@{k}", f"P@{k}", f"nDCG@{k}"]
        col = int(np.abs(loop - kit_matrix[sample]).max(axis=0).argmax())
        raise RuntimeError(f"per-query loop and evaluate_retrieval disagree on {names[col]} (max |diff| {diff:.3g})")

    # The metric arithmetic alone, on the same ranked ids, every query (nothing extrapolated).
    reps = 5
    vec_times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        retrieval_scores(g_labels, res.ids, ql, k)
        vec_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    loop_from_ids = loop_metrics_from_ids(res.ids, ql, g_labels, counts, k)
    loop_metric_s = time.perf_counter() - t0
    vec_s = median(vec_times)
    if not np.allclose(loop_from_ids, kit_matrix, atol=1e-9):
        raise RuntimeError("per-query loop metrics and retrieval_scores disagree on the same ranked ids")

    speedup = loop_s / kit_s
    m = res.means
    result.rows += [
        Row("metrics", f"kit evaluate_retrieval (normalize + index + batched search + vectorized metrics)", kit_s,
            "s", note=f"one timed run; mAP@{k} {m[f'mAP@{k}']:.4f}, P@{k} {m[f'P@{k}']:.4f}, "
                      f"nDCG@{k} {m[f'nDCG@{k}']:.4f} (synthetic data)", key="metrics/kit", **common),
        Row("metrics", "  of which its batched FAISS search", res.search_seconds, "s",
            note="RetrievalResult.search_seconds", key="metrics/kit_search", **common),
        Row("metrics", "per-query loop (search + Python metrics)", loop_s, "s",
            note=f"extrapolated from {sample.size} random queries x {nq / sample.size:.1f}",
            key="metrics/loop", **common),
        Row("metrics", "speed-up of the kit over the per-query loop, end to end", speedup, "x", speedup,
            "per-query loop time / kit time", note=f"extrapolated loop; {nq:,} x {ng:,}",
            key="metrics/speedup/end_to_end", **common),
        Row("metrics", "metrics only on the same ids: kit retrieval_scores (vectorized)", vec_s, "s",
            loop_metric_s / vec_s, "speed-up over the Python loop on every query",
            note=f"Python loop over all {nq:,} queries: {loop_metric_s:.3f} s; median of {reps}",
            key="metrics/speedup/metrics_only", **common),
        Row("metrics", "agreement: loop vs kit (AP, P, nDCG per query)", diff, "max |diff|",
            note=f"{sample.size} sampled queries end to end + all {nq:,} on the same ids; equal within 1e-9",
            key="metrics/agreement", **common),
    ]
    if speedup < EVAL_SPEEDUP_MIN:
        # Roofline: the batched search is a GEMM (compute-bound); the loop's one-query search streams the whole
        # gallery from memory per query (bandwidth-bound, one thread in FAISS). Their ratio bounds the speed-up.
        gflops = 2 * gallery.shape[1] * ng * nq / res.search_seconds / 1e9
        loop_search_s = loop_s / nq
        gbps = 4 * gallery.shape[1] * ng / loop_search_s / 1e9
        result.profiles["eval"] = [
            f"kit {kit_s:.2f} s, of which FAISS search {res.search_seconds:.2f} s "
            f"({100 * res.search_seconds / kit_s:.1f} %): the bottleneck is the batched exact search, running at "
            f"{gflops:.0f} GFLOP/s with {faiss.omp_get_max_threads()} thread(s) (compute-bound). The loop's "
            f"one-query search streams the {4 * gallery.shape[1] * ng / 1e6:.0f} MB gallery at {gbps:.1f} GB/s per "
            f"query (memory-bound, one thread whatever the setting), so the speed-up is bounded by about "
            f"2 x GFLOP/s / GB/s = {2 * gflops / gbps:.1f} here; it grows with the cores the batched search gets.\n"
            f"cProfile of evaluate_retrieval on the first "
            f"{min(nq, 1000)} queries:\n" + profile_top(
                lambda: evaluate_retrieval(gallery, g_labels, q[:1000], ql[:1000], k=k))]
    result.notes.append(
        f"{nq:,} queries against {ng:,} x {gallery.shape[1]} synthetic unit vectors, k = {k}, exact inner product "
        "on the CPU, AP normalized by min(k, R). The kit row is one run (it is the costly one); the loop is sampled "
        "and extrapolated as stated.")
    return result
