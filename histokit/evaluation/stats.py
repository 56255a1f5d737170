"""Statistics for reported numbers: mean ± std over re-splits, t-tests, bootstrap confidence intervals.

Ye et al. 2024 (Table 3) re-split the data five times, report mean ± standard deviation and a t-test p-value per
comparison without saying which t-test; the kit uses Welch's unequal-variance two-sample test (``scipy.stats.
ttest_ind(equal_var=False)``) by default, which does not assume the two backbones' accuracies vary equally, and
offers the paired test (``scipy.stats.ttest_rel``) for runs that share their splits.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats


def _as_1d(values, name: str, min_len: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size < min_len:
        raise ValueError(f"{name} needs at least {min_len} values, got {v.size}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or inf")
    return v


def mean_std(values: Sequence[float], ddof: int = 1) -> tuple[float, float]:
    """(mean, sample standard deviation with ``ddof=1``) — the "mean ± std" of Ye et al. Table 3."""
    v = _as_1d(values, "values", ddof + 1)
    return float(v.mean()), float(v.std(ddof=ddof))


def ttest(a: Sequence[float], b: Sequence[float], *, paired: bool = False) -> float:
    """Two-sided p-value: Welch's t-test (``ttest_ind(equal_var=False)``), or ``ttest_rel`` if ``paired``."""
    a = _as_1d(a, "a", 2)
    b = _as_1d(b, "b", 2)
    if paired:
        if a.shape != b.shape:
            raise ValueError(f"a paired t-test needs equal lengths, got {a.size} and {b.size}")
        return float(stats.ttest_rel(a, b).pvalue)
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def bootstrap_ci(
    per_query: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` of the mean of ``per_query`` (e.g. per-query AP@10 -> a mAP@10 CI).

    ``scipy.stats.bootstrap`` resamples queries with replacement ``n_boot`` times; the interval covers
    ``1 - alpha``. The percentile method keeps the interval defined for skewed, bounded per-query scores.
    """
    v = _as_1d(per_query, "per_query", 2)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got alpha={alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got n_boot={n_boot}")
    res = stats.bootstrap(
        (v,), np.mean, n_resamples=n_boot, confidence_level=1 - alpha, method="percentile",
        rng=np.random.default_rng(seed), vectorized=True, batch=max(1, min(n_boot, 10_000_000 // v.size)),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
