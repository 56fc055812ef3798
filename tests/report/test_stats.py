"""Statistics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from offrl.report.stats import bootstrap_ci, iqm, stratified_bootstrap_ci


def test_iqm_is_the_25_percent_trimmed_mean():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # cut 2 each end: mean(3, 4, 5, 6)
    assert iqm([100, 0, 10, 0]) == pytest.approx(5.0)  # sorted 0 0 10 100, cut 1 each end: mean(0, 10)
    assert iqm([1, 2, 30]) == pytest.approx(11.0)  # int(0.75) = 0: nothing cut with 3 seeds
    assert iqm([5.0]) == pytest.approx(5.0)
    # along an axis, as the bootstrap uses it
    assert iqm(np.array([[1, 2, 3, 4, 5, 6, 7, 8], [8, 8, 8, 8, 0, 0, 0, 0]]), axis=-1) == pytest.approx([4.5, 4.0])


def test_bootstrap_ci_of_known_samples():
    # Means of 3 draws from {0, 3, 6}: P(mean = 0) = P(mean = 6) = 1/27 > 2.5%, so the exact 95%
    # percentile interval is [0, 6].
    assert bootstrap_ci([0.0, 3.0, 6.0]) == pytest.approx((0.0, 6.0))
    # Means of 2 draws from {0, 10}: 0, 5, 10 with 1/4, 1/2, 1/4 -> [0, 10]
    assert bootstrap_ci([0.0, 10.0]) == pytest.approx((0.0, 10.0))
    # A larger sample: the bootstrap CI of the mean is close to mean ± 1.96 * sd / sqrt(n)
    x = np.random.default_rng(1).normal(50.0, 10.0, size=400)
    lo, hi = bootstrap_ci(x)
    half = 1.96 * x.std() / np.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.15) and hi == pytest.approx(x.mean() + half, abs=0.15)
    assert bootstrap_ci([7.0, 7.0, 7.0]) == (7.0, 7.0)


def test_bootstrap_is_seeded_and_ignores_nan():
    x = [1.0, 4.0, 2.0, 8.0, 5.0]
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci([*x, float("nan")], seed=3) == bootstrap_ci(x, seed=3)
    assert all(np.isnan(bootstrap_ci([float("nan")])))


def test_stratified_bootstrap_keeps_seed_counts_per_dataset():
    # Stratified: every resample holds exactly one value of the first dataset and two of the second,
    # so the mean is always 20/3; resampling the pooled values would give a wide interval.
    assert stratified_bootstrap_ci([[0.0], [10.0, 10.0]]) == pytest.approx((20 / 3, 20 / 3))
    lo, hi = bootstrap_ci([0.0, 10.0, 10.0])
    assert lo == pytest.approx(0.0) and hi == pytest.approx(10.0)
    # IQM as the statistic, over two datasets of 4 seeds each (8 values: cut 2 at each end)
    strata = [[0.0, 0.0, 0.0, 0.0], [10.0, 10.0, 10.0, 10.0]]
    assert stratified_bootstrap_ci(strata, iqm) == pytest.approx((5.0, 5.0))


def test_intervals_over_seeds_by_method() -> None:
    from offrl.evaluation.findings import mean_ci
    from offrl.report.stats import seed_ci

    x = [61.0, 64.5, 58.2, 70.1, 66.3]
    assert seed_ci(x, "t") == pytest.approx(mean_ci(x)[1:])  # mean ± t(0.975, 4) s / sqrt(5)
    assert seed_ci(x, "bootstrap") == bootstrap_ci(x)
    lo_t, hi_t = seed_ci(x, "t")
    lo_b, hi_b = seed_ci(x, "bootstrap")
    assert hi_t - lo_t > hi_b - lo_b  # over 5 seeds the bootstrap's interval is the narrower (too narrow)
    assert all(np.isnan(seed_ci([3.0], "t"))) and all(np.isnan(seed_ci([3.0, np.nan], "bootstrap")))


def test_welch_interval_of_a_difference() -> None:
    from offrl.evaluation.findings import t975
    from offrl.report.stats import welch_ci

    a, b = np.array([10.0, 12.0, 11.0, 13.0]), np.array([5.0, 9.0, 4.0, 8.0, 6.0, 7.0])
    va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 6
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 5)  # Welch-Satterthwaite
    half = t975(int(df)) * np.sqrt(va + vb)
    assert welch_ci(a, b) == pytest.approx((5.0, 5.0 - half, 5.0 + half))
    stats = pytest.importorskip("scipy.stats")
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)  # scipy keeps df fractional
    assert welch_ci(a, b)[1] == pytest.approx(ci.low, rel=0.03) and welch_ci(a, b)[2] == pytest.approx(ci.high, rel=0.03)
    assert welch_ci([1.0, 1.0], [0.0, 0.0]) == (1.0, 1.0, 1.0) and np.isnan(welch_ci([1.0], [0.0, 2.0])[1])
