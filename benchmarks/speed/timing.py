"""Timing the benchmark's way: warm-up, then interleaved repeats (drift in machine load hits every path alike),
median; CUDA synchronized before every clock read; cProfile top entries for a stage that missed its target."""
from __future__ import annotations

import cProfile
import math
import pstats
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from histokit.retrieval.features import synchronize


class Timings(dict):
    """name -> seconds per call, one entry per repeat; ``passes`` = calls averaged into each entry."""

    passes: int = 1


def timed_runs(fns: dict[str, Callable[[], object]], *, warmup: int, repeats: int,
               device: str | torch.device = "cpu", min_seconds: float = 0.0) -> Timings:
    """Seconds per call of each function: ``warmup`` untimed rounds, then ``repeats`` rounds, each running every
    function once in a rotated order. ``min_seconds``: each timed sample repeats a call until it lasts about that
    long (the pass count is set from the first function's last warm-up call and is the same for all), so a fast
    model is not timed at the scale of the scheduler's time slices; times stay per call."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device)
    names = list(fns)
    one_call = 0.0
    for _ in range(warmup):
        for i, name in enumerate(names):
            synchronize(device)
            t0 = time.perf_counter()
            fns[name]()
            synchronize(device)
            if i == 0:
                one_call = time.perf_counter() - t0
    passes = max(1, math.ceil(min_seconds / one_call)) if min_seconds > 0 and one_call > 0 else 1
    times = Timings({name: [] for name in names})
    times.passes = passes
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(passes):
                fns[name]()
            synchronize(device)
            times[name].append((time.perf_counter() - t0) / passes)
    return times


def median(values: list[float]) -> float:
    return float(np.median(values))


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over repeats of numerator_i / denominator_i: each pair ran back to back, so load that drifts between
    repeats cancels within a pair (steadier than a ratio of medians on a shared machine)."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"paired_ratio needs two equally long, non-empty timing lists, got {len(numerator)} and "
                         f"{len(denominator)}")
    return float(np.median(np.asarray(numerator) / np.asarray(denominator)))


def paired_ratio_iqr(numerator: list[float], denominator: list[float]) -> tuple[float, float]:
    """25th and 75th percentiles of the per-pair ratios: how far this run's noise moves a paired ratio."""
    r = np.asarray(numerator) / np.asarray(denominator)
    return float(np.percentile(r, 25)), float(np.percentile(r, 75))


def spread(values: list[float]) -> float:
    """(max - min) / median of repeated timings: how much the machine's load moved them."""
    m = median(values)
    return float((max(values) - min(values)) / m) if m > 0 else float("nan")


def _short(filename: str) -> str:
    parts = Path(filename).parts
    for anchor in ("site-packages", "histokit"):
        if anchor in parts:
            i = parts.index(anchor)
            return "/".join(parts[i + 1 if anchor == "site-packages" else i:])
    return filename


def profile_top(fn: Callable[[], object], n: int = 12, calls: int = 1) -> str:
    """Run ``fn`` ``calls`` times under cProfile; the ``n`` entries with the largest cumulative time, as text
    (milliseconds per call of ``fn``, so a microsecond-scale stage still shows its split)."""
    prof = cProfile.Profile()
    prof.runcall(lambda: [fn() for _ in range(calls)])
    stats = pstats.Stats(prof).stats
    top = sorted(stats.items(), key=lambda kv: kv[1][3], reverse=True)[:n]
    lines = [f"{'cum ms/call':>12} {'own ms/call':>12} {'calls':>8}  function ({calls} call(s) profiled)"]
    for (filename, line, func), (_, ncalls, own, cum, _) in top:
        where = "built-in" if filename == "~" else f"{_short(filename)}:{line}"
        lines.append(f"{1000 * cum / calls:12.4f} {1000 * own / calls:12.4f} {ncalls:8d}  {func} ({where})")
    return "\n".join(lines)
