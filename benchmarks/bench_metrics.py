"""Moved: this metric benchmark is now section 4 of ``make speed`` (``benchmarks/speed/metrics.py``).

This script runs only that section — the kit's ``evaluate_retrieval`` against a per-query loop (one FAISS search per
query + AP / P / nDCG in Python, sampled and extrapolated), equal results checked — at the sizes given, and prints
its rows. Run: ``python benchmarks/bench_metrics.py [--gallery 100000 --queries 10000]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.speed beside this script
from benchmarks.speed.config import BenchConfig  # noqa: E402
from benchmarks.speed.metrics import run_metrics_section  # noqa: E402
from histokit.tables import format_cell as fmt  # noqa: E402
from benchmarks.speed.synthetic import make_retrieval_data  # noqa: E402
from histokit.retrieval.index import build_index  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gallery", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--loop-sample", type=int, default=200, help="queries timed in the per-query loop")
    a = p.parse_args()
    cfg = BenchConfig(mode="full", gallery=a.gallery, eval_queries=a.queries, dim=a.dim, loop_sample=a.loop_sample)
    gallery, g_labels, queries, q_labels = make_retrieval_data(a.gallery, a.queries, dim=a.dim)
    result = run_metrics_section(cfg, gallery, g_labels, queries, q_labels, build_index(gallery))
    print(*result.notes, sep="\n")
    for r in result.rows:
        ratio = f" (x{fmt(r.ratio)} {r.ratio_to})" if r.ratio is not None else ""
        print(f"{r.measurement}: {fmt(r.value)} {r.unit}{ratio}  [{r.note}]")


if __name__ == "__main__":
    main()
