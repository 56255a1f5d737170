"""Statistics: mean ± sample std, Welch / paired t-test p-values, percentile bootstrap CI of a mean."""
import numpy as np
import pytest
from scipy import stats

from histokit.evaluation.stats import bootstrap_ci, mean_std, ttest


def test_mean_std_uses_sample_std():
    m, s = mean_std([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(np.sqrt(5 / 3))
    with pytest.raises(ValueError, match="at least 2"):
        mean_std([1.0])


def test_ttest_is_welch_by_default_and_paired_on_request():
    a = [90.1, 90.5, 89.8, 90.9, 90.3]
    b = [88.0, 89.9, 87.1, 91.0, 88.5]  # unequal variances: Welch and Student differ
    p = ttest(a, b)
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert p != pytest.approx(stats.ttest_ind(a, b, equal_var=True).pvalue)
    assert ttest(a, b, paired=True) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    # Hand check of Welch's statistic: t = (ma - mb) / sqrt(va/na + vb/nb).
    t = (np.mean(a) - np.mean(b)) / np.sqrt(np.var(a, ddof=1) / 5 + np.var(b, ddof=1) / 5)
    assert stats.ttest_ind(a, b, equal_var=False).statistic == pytest.approx(t)
    with pytest.raises(ValueError, match="equal lengths"):
        ttest(a, b[:4], paired=True)


def test_bootstrap_ci_brackets_the_mean_and_is_reproducible():
    rng = np.random.default_rng(0)
    ap = rng.beta(2, 1, size=500)  # skewed per-query AP in [0, 1]
    low, high = bootstrap_ci(ap, n_boot=1000, seed=0)
    assert low < ap.mean() < high
    # Normal-theory half-width 1.96 * s / sqrt(n) is a close independent estimate of the width.
    half = 1.96 * ap.std(ddof=1) / np.sqrt(ap.size)
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_ci(ap, n_boot=1000, seed=0) == (low, high)
    assert bootstrap_ci(ap, n_boot=1000, seed=1) != (low, high)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(ap, alpha=1.5)
