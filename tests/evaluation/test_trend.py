"""Has a learning curve settled: the last third's trend, its Student-t 95% interval and the reading in words."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offrl.evaluation.findings import curve_trend, t975, trend_reading


def test_a_straight_line_has_its_rise_over_the_last_third_and_no_doubt_about_it() -> None:
    steps = np.arange(1, 21) * 1000.0  # the last third: steps 14,000 .. 20,000
    change, low, high, n = curve_trend(steps, 3.0 + steps / 1000.0)
    assert n == 7 and change == pytest.approx(6.0) and low == pytest.approx(6.0) and high == pytest.approx(6.0)
    assert trend_reading(change, low, high, 5.0) == "still rising"
    assert trend_reading(*curve_trend(steps, np.full(20, 42.0))[:3], 5.0) == "settled"


def test_interval_is_the_least_squares_slopes_student_t_interval() -> None:
    rng = np.random.default_rng(3)
    steps = np.arange(0, 9001, 500.0)  # the last third starts at 6,000: 7 evaluations
    values = 40 + 0.002 * steps + rng.normal(0, 3.0, steps.size)
    change, low, high, n = curve_trend(steps, values)
    x, y = steps[steps >= 6000], values[steps >= 6000]
    design = np.stack([np.ones_like(x), x], 1)  # y = a + b x, solved and its covariance written out another way
    coef, residual, *_ = np.linalg.lstsq(design, y, rcond=None)
    cov = np.linalg.inv(design.T @ design) * float(residual[0]) / (x.size - 2)
    span, half = x[-1] - x[0], t975(x.size - 2) * math.sqrt(cov[1, 1])
    assert n == 7 and change == pytest.approx(coef[1] * span)
    assert (low, high) == pytest.approx(((coef[1] - half) * span, (coef[1] + half) * span))
    scipy_stats = pytest.importorskip("scipy.stats")
    fit = scipy_stats.linregress(x, y)
    assert half == pytest.approx(scipy_stats.t.ppf(0.975, x.size - 2) * fit.stderr, rel=1e-4)


def test_order_missing_values_and_too_few_evaluations() -> None:
    steps, values = np.array([3000.0, 1000.0, 2000.0, 4000.0]), np.array([5.0, 1.0, np.nan, 9.0])
    # sorted, the NaN dropped: 1000, 3000, 4000; the last third from 2,667 on holds 3000 and 4000
    change, low, high, n = curve_trend(steps, values)
    assert (n, change) == (2, pytest.approx(4.0)) and math.isnan(low) and math.isnan(high)
    assert trend_reading(change, low, high, 5.0) == "too few evaluations"  # two of them: no interval
    for few in ([1000.0], []):
        change, low, high, n = curve_trend(few, [1.0] * len(few))
        assert n == len(few) and math.isnan(change) and trend_reading(change, low, high, 5.0) == "too few evaluations"


@pytest.mark.parametrize(("interval", "reading"), [
    ((-4.0, 4.5), "settled"),
    ((0.5, 9.0), "still rising"),
    ((-12.0, -0.1), "still falling"),
    ((-3.0, 9.0), "unclear"),       # includes 0 but reaches past the tolerance: more seeds or evaluations
    ((6.0, 7.0), "still rising"),
])
def test_reading(interval: tuple[float, float], reading: str) -> None:
    low, high = interval
    assert trend_reading((low + high) / 2, low, high, 5.0) == reading
