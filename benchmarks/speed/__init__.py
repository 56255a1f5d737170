"""The speed benchmark (``make speed``, ``histokit speed`` from a checkout; no part of the installed package): how
fast the kit is, measured against the bare libraries it calls, on this machine.

Seven sections, each a module: model-only vs the kit's extraction (``model``), end-to-end from image files and from
the decoded-tile cache plus decode throughput (``extraction``), the kit's search vs bare FAISS and exact vs
approximate recall/speed (``search``), vectorized metric evaluation vs a per-query loop (``metrics``), batch-1 query
latency (``latency``), search time vs gallery size (``growth``), and per SSL method the training loader's throughput
against the training step's (``training``: a ratio below 1 is a starved GPU). :func:`run_bench` runs them in one
process (every ratio is taken within one run), checks the issue's targets (``targets``) and writes
``results/speed/<device-slug>.md`` + ``.csv`` (``report``).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import faiss
import torch

from histokit.device import resolve_device
from histokit import paths
from .config import BenchConfig
from .environment import bench_threads, environment
from .extraction import run_extraction_section
from .growth import run_growth_section
from .latency import run_latency_section
from .metrics import run_metrics_section
from .model import run_model_section
from .report import write_report
from .search import run_search_section
from .synthetic import make_retrieval_data
from .targets import evaluate_targets
from .training import run_training_section

__all__ = ["BenchConfig", "run_bench"]


def _stderr_log(message: str) -> None:
    print(f"histokit speed: {message}", file=sys.stderr, flush=True)


def run_bench(out_dir: Optional[str | os.PathLike] = None, device: str = "auto", quick: bool = False, *,
              config: Optional[BenchConfig] = None, log: Callable[[str], None] = _stderr_log) -> dict:
    """Run every section and write the report; returns ``{"md", "csv", "targets", "sections", "env"}``.

    ``out_dir`` defaults to ``results/speed``; ``device`` is auto | cpu | cuda | cuda:N; ``quick`` runs every
    section at smoke sizes (its report is named ``<slug>-quick``, so it never replaces a full run's);
    ``config`` overrides the sizes entirely (tests).
    """
    device = resolve_device(device)
    dev = torch.device(device)
    cfg = config or BenchConfig.for_device(dev.type, quick)
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    env = environment(device)
    threads, why = bench_threads(env["cpu_cores"], env["load_average_start"])
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    env.update(torch_threads=threads, faiss_threads=threads, threads_reason=why)
    out_dir = Path(out_dir) if out_dir is not None else paths.RESULTS_DIR / "speed"
    slug = env["slug"] if cfg.mode == "full" else f"{env['slug']}-{cfg.mode}"
    start = time.perf_counter()
    from histokit.device import configure_backends, current_backends

    saved_backends = current_backends()
    # the same cuDNN / TF32 / matmul-precision policy the stages set (histokit.device), recorded with the results
    env["backends"] = configure_backends(dev)
    sections = {}
    try:
        log(f"{device} ({env['device_name']}), {cfg.mode} mode -> {out_dir / slug}.md")
        log("1/7 model-only vs kit extraction")
        sections["model"] = run_model_section(cfg, dev, log)
        log("2/7 end-to-end extraction and decoding")
        with tempfile.TemporaryDirectory(prefix="histokit-bench-") as work:
            sections["extraction"] = run_extraction_section(cfg, dev, Path(work), log)
        n_pool = max(cfg.gallery, *cfg.growth_sizes)
        n_queries = max(cfg.eval_queries, cfg.search_queries, cfg.ann_queries, cfg.growth_queries)
        log(f"synthetic embeddings: {n_pool:,} gallery + {n_queries:,} queries x {cfg.dim}")
        pool, pool_labels, queries, q_labels = make_retrieval_data(n_pool, n_queries, dim=cfg.dim,
                                                                   n_classes=cfg.n_classes)
        gallery, g_labels = pool[:cfg.gallery], pool_labels[:cfg.gallery]
        log("3/7 search")
        sections["search"], built = run_search_section(cfg, gallery, queries, log)
        log("4/7 metric evaluation")
        sections["metrics"] = run_metrics_section(cfg, gallery, g_labels, queries, q_labels, built["flat"], log)
        log("5/7 batch-1 latency")
        sections["latency"] = run_latency_section(cfg, dev, built["flat"], gallery, log)
        log("6/7 gallery growth")
        prebuilt = {(kind, cfg.gallery): index for kind, index in built.items()}
        sections["growth"] = run_growth_section(cfg, pool, queries, prebuilt, log)
        log("7/7 training input: loader vs training step per method")
        sections["training"] = run_training_section(cfg, dev, log)
    finally:
        _restore_backends(saved_backends)
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)
    targets = evaluate_targets(sections, env, cfg)
    env["load_average_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")
    # not `paths`: a local of that name would shadow the module read above for the default folder
    written = write_report(out_dir, slug, env, cfg, sections, targets, time.perf_counter() - start)
    log(f"wrote {written['md']} and {written['csv']} in {time.perf_counter() - start:.0f} s")
    return {**written, "targets": targets, "sections": sections, "env": env}


def _restore_backends(flags: dict) -> None:
    """Put back the flags :func:`histokit.device.current_backends` read before the bench changed them."""
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.set_float32_matmul_precision(flags["float32_matmul_precision"])
    torch.backends.cuda.matmul.allow_tf32 = flags["tf32_matmul"]
    torch.backends.cudnn.allow_tf32 = flags["tf32_cudnn"]
