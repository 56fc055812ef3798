"""Numbers a person reads, with their noise and in words: the 95% interval of a mean over evaluation
episodes, and what the critic's V(s0) says against the return the policy really achieved.

Plain numpy (no torch): the reports and the CLI's score lines use it without importing a network.

- :func:`mean_ci`: Student-t 95% interval of the mean over episodes, ``mean ± t(0.975, n-1) · s / √n``
  (``s`` with ``n - 1``). One episode has no interval (NaN). Episodes are independent draws of the start
  state (episode ``i`` is seeded ``seed + i``), so this is the interval of the policy's expected return
  over start states, not of the training run (seeds are the report's job).
- :func:`critic_finding`: ``over-estimates`` / ``under-estimates`` / ``consistent`` with the gap in
  return units and as a share of the achieved discounted return; consistent within
  :data:`CONSISTENT_WITHIN` (10%) of its magnitude.
- :func:`curve_trend` and :func:`trend_reading`: has a learning curve settled? The trend over the last third
  of the run (the least-squares line through every evaluation from two thirds of the last evaluated step
  on, its slope times the steps it spans) with the Student-t 95% interval of that slope; settled when the
  interval lies within :data:`SETTLED_WITHIN` (5%) of the score's span (5 normalized points), still rising
  or falling when it excludes 0 otherwise (docs/reports.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["CONSISTENT_WITHIN", "SETTLED_WITHIN", "critic_finding", "critic_verdict", "curve_trend", "mean_ci", "t975",
           "trend_reading"]

#: |V(s0) - achieved| within this share of |achieved| reads as "consistent".
CONSISTENT_WITHIN = 0.10
#: A curve has settled when its last third's trend lies within this share of the score's span: of the
#: random-to-expert range for normalized scores (5 points), of the range the curve covers for raw returns.
SETTLED_WITHIN = 0.05

# t(0.975, df) for df = 1..30 (any statistics table); beyond 30 the Cornish-Fisher expansion below is
# within 1e-4 of it.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (two-sided 95%)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t 95% interval of the mean of the finite ``values``; NaN ends
    with fewer than two values."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if not v.size:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size < 2:
        return mean, math.nan, math.nan
    half = t975(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return mean, mean - half, mean + half


def critic_verdict(v_s0: float, achieved: float) -> str | None:
    """``over``, ``under`` or ``consistent``; None when either number is missing."""
    if not (math.isfinite(v_s0) and math.isfinite(achieved)):
        return None
    gap = v_s0 - achieved
    if abs(gap) <= CONSISTENT_WITHIN * max(abs(achieved), 1e-8):
        return "consistent"
    return "over" if gap > 0 else "under"


def critic_finding(v_s0: float | None, achieved: float | None) -> str | None:
    """The critic's value of the evaluation start states against the discounted return achieved from them,
    in words: ``under-estimates by 89.1 (V(s0) 9.9 vs achieved 99.0, 90% below)``. None without both."""
    v = math.nan if v_s0 is None else float(v_s0)
    a = math.nan if achieved is None else float(achieved)
    verdict = critic_verdict(v, a)
    if verdict is None:
        return None
    gap = v - a
    share = abs(gap) / abs(a) if a != 0 else math.inf
    pct = f"{100 * share:.0f}%" if math.isfinite(share) else "achieved 0"
    numbers = f"V(s0) {v:.1f} vs achieved {a:.1f}"
    if verdict == "consistent":
        return f"consistent: {numbers} (within {100 * CONSISTENT_WITHIN:.0f}%, off by {abs(gap):.1f})"
    side = "above" if gap > 0 else "below"
    return f"{verdict}-estimates by {abs(gap):.1f} ({numbers}, {pct} {side})"


def curve_trend(steps: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray
                ) -> tuple[float, float, float, int]:
    """``(change, low, high, n)``: the trend of a learning curve over the last third of its run.

    The least-squares line through the ``n`` evaluations at or after two thirds of the last evaluated step,
    its slope times the steps those evaluations span (with two of them, their difference), and the Student-t
    95% interval of that slope from the line's residuals scaled the same way. ``change`` is NaN with fewer
    than two evaluations there; the interval's ends are NaN with fewer than three."""
    s = np.asarray(steps, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    keep = np.isfinite(s) & np.isfinite(v)
    s, v = s[keep], v[keep]
    if not s.size:
        return math.nan, math.nan, math.nan, 0
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    start = int(np.searchsorted(s, s[-1] * 2 / 3))
    s, v = s[start:], v[start:]
    n = int(s.size)
    span = float(s[-1] - s[0])
    if n < 2 or span <= 0:
        return math.nan, math.nan, math.nan, n
    sxx = float(((s - s.mean()) ** 2).sum())
    slope = float(((s - s.mean()) * (v - v.mean())).sum()) / sxx
    if n < 3:
        return slope * span, math.nan, math.nan, n
    residuals = v - (v.mean() + slope * (s - s.mean()))
    half = t975(n - 2) * math.sqrt(float((residuals**2).sum()) / (n - 2) / sxx)
    return slope * span, (slope - half) * span, (slope + half) * span, n


def trend_reading(change: float, low: float, high: float, tolerance: float) -> str:
    """``settled`` (the interval within +-``tolerance``), ``still rising`` / ``still falling`` (it excludes
    0 otherwise), ``unclear`` (too wide to tell: more evaluations or seeds), ``too few evaluations`` (no
    interval: fewer than three evaluations in the last third, and one seed)."""
    if not all(math.isfinite(x) for x in (change, low, high, tolerance)):
        return "too few evaluations"
    if -tolerance <= low and high <= tolerance:
        return "settled"
    if low > 0:
        return "still rising"
    if high < 0:
        return "still falling"
    return "unclear"
