"""Section 6: how search time grows with gallery size (10^3 ... 10^6), exact and approximate.

Exact = the kit's IndexFlatIP; IVF = IndexIVFFlat with nlist = sqrt(N), trained on 39 x nlist sampled vectors
(``search.build_ivf_sampled``; training on all 10^6 would cost minutes on a CPU), nprobe fixed; HNSW (M 32,
efSearch 64) only up to the configured size, since its build grows fastest. Searches go through the kit's
``search``; few queries per size, batched, so 10^6 stays affordable on a CPU.
"""
from __future__ import annotations

import math
import time

import faiss
import numpy as np

from histokit.retrieval.index import build_index, recall_at_k
from .rows import Row, SectionResult
from .search import build_ivf_sampled, timed_search


def _time(index, queries, k, repeats=3):
    # warm-up only below 10^5 items: a large index costs more than a cold start distorts
    return timed_search(index, queries, k, repeats, warmup=index.ntotal < 100_000)


def _slope(sizes, times) -> float:
    """Exponent b of time ~ N^b, least squares on log-log over the sizes >= 10^4 (below, fixed costs dominate)."""
    pts = [(math.log(n), math.log(t)) for n, t in zip(sizes, times) if n >= 10_000 and t > 0]
    if len(pts) < 2:
        return float("nan")
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def run_growth_section(cfg, pool: np.ndarray, queries: np.ndarray, prebuilt: dict, log=print) -> SectionResult:
    """``pool`` holds at least max(growth_sizes) vectors; ``prebuilt`` maps (kind, N) -> an index over pool[:N]."""
    result = SectionResult()
    k, nq = cfg.k, cfg.growth_queries
    q = np.ascontiguousarray(queries[:nq])
    series = {"exact": [], "ivf": [], "hnsw": []}
    for n in cfg.growth_sizes:
        log(f"  growth: {n:,} items")
        g = pool[:n]
        common = dict(batch_size=nq, precision="fp32", n=n)
        t0 = time.perf_counter()
        flat = prebuilt[("flat", n)] if ("flat", n) in prebuilt else build_index(g)
        build = time.perf_counter() - t0
        s, exact = _time(flat, q, k)
        series["exact"].append((n, s))
        result.rows.append(Row("growth", f"exact IndexFlatIP, {n:,} items", 1000 * s / nq, "ms/query", 1.0,
                               "recall@10", note=f"{nq} queries batched; build {build:.2f} s",
                               key=f"growth/exact/{n}", **common))
        del flat
        t0 = time.perf_counter()
        ivf = prebuilt[("ivf", n)] if ("ivf", n) in prebuilt else build_ivf_sampled(g, cfg.growth_nprobe)
        build = time.perf_counter() - t0
        s, ids = _time(ivf, q, k)
        series["ivf"].append((n, s))
        result.rows.append(Row("growth", f"IVF-Flat nlist {ivf.nlist}, nprobe {ivf.nprobe}, {n:,} items",
                               1000 * s / nq, "ms/query", recall_at_k(ids, exact, k), "recall@10",
                               note=f"{nq} queries batched; build {build:.2f} s"
                                    f"{' (reused from section 3)' if ('ivf', n) in prebuilt else ''}",
                               key=f"growth/ivf/{n}", **common))
        del ivf
        if n <= cfg.growth_hnsw_max:
            t0 = time.perf_counter()
            key = ("hnsw", n)
            hnsw = prebuilt[key] if key in prebuilt else build_index(g, kind="hnsw", hnsw_m=cfg.hnsw_m)
            build = time.perf_counter() - t0
            faiss.downcast_index(hnsw).hnsw.efSearch = 64
            s, ids = _time(hnsw, q, k)
            series["hnsw"].append((n, s))
            reused = " (reused from section 3)" if key in prebuilt else ""
            result.rows.append(Row("growth", f"HNSW M {cfg.hnsw_m}, efSearch 64, {n:,} items", 1000 * s / nq,
                                   "ms/query", recall_at_k(ids, exact, k), "recall@10",
                                   note=f"{nq} queries batched; build {build:.2f} s{reused}",
                                   key=f"growth/hnsw/{n}", **common))
    for kind, pts in series.items():
        b = _slope(*zip(*pts)) if len(pts) >= 2 else float("nan")
        if math.isfinite(b):
            result.rows.append(Row("growth", f"{kind}: growth exponent b in time ~ N^b", b, "exponent",
                                   batch_size=nq, precision="fp32", n=pts[-1][0],
                                   note=f"log-log fit over sizes >= 10^4 ({len(pts)} sizes run)",
                                   key=f"growth/slope/{kind}"))
    sizes = ", ".join(f"{n:,}" for n in cfg.growth_sizes)
    result.notes.append(
        f"Gallery sizes {sizes}; {nq} queries per size (few, so exact search at 10^6 stays affordable on a CPU), "
        f"k = {k}; ratio column = recall@10 against exact search at the same size. HNSW up to "
        f"{cfg.growth_hnsw_max:,} items (its build time grows fastest).")
    return result
