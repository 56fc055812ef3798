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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["CONSISTENT_WITHIN", "critic_finding", "critic_verdict", "mean_ci", "t975"]

#: |V(s0) - achieved| within this share of |achieved| reads as "consistent".
CONSISTENT_WITHIN = 0.10

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
