"""Aggregate statistics over seeds: mean, interquartile mean and percentile-bootstrap confidence intervals.

Follows rliable (Agarwal et al., 2021, "Deep RL at the Edge of the Statistical Precipice"): the IQM is
the 25%-trimmed mean (``scipy.stats.trim_mean(x, 0.25)``: ``int(0.25 n)`` values cut from each end), and
the stratified bootstrap resamples runs with replacement *within* each task (here: dataset), so every
resample keeps the same number of seeds per dataset. All resampling is seeded, so a report is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from offrl.evaluation.findings import mean_ci, t975

__all__ = [
    "interval_name",
    "CURVE_RESAMPLES",
    "DEFAULT_INTERVAL",
    "INTERVALS",
    "TABLE_RESAMPLES",
    "bootstrap_ci",
    "difference_ci",
    "seed_ci",
    "iqm",
    "mean",
    "stratified_bootstrap_ci",
    "welch_ci",
]

#: How an interval over seeds is made: ``bootstrap`` (percentile, rliable's) or ``t`` (Student-t; Welch's for a
#: difference), which holds its coverage over few seeds where the bootstrap's is too narrow
#: (benchmarks/ci_coverage.py, docs/reports.md).
INTERVALS = ("bootstrap", "t")
#: Intervals over seeds in every report (``offrl report``, ``--seeds``, sweeps, ``benchmarks/suite.py``): Student-t,
#: which keeps its coverage over a few seeds (``benchmarks/ci_coverage.py``).
DEFAULT_INTERVAL = "t"


def interval_name(interval: str) -> str:
    """How a report names an interval kind of :data:`INTERVALS`: ``Student-t`` or ``bootstrap``."""
    return "Student-t" if interval == "t" else "bootstrap"

TABLE_RESAMPLES = 10_000  # per table cell: a few seeds, so this is cheap and the CI ends are stable
CURVE_RESAMPLES = 1_000  # per evaluation step of a learning curve (hundreds of steps)

Statistic = Callable[..., np.ndarray]  # f(x, axis=-1) -> reduced array


def mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Arithmetic mean along ``axis``."""
    return np.mean(x, axis=axis)


def iqm(x: np.ndarray | Sequence[float], axis: int = -1) -> np.ndarray | float:
    """Interquartile mean: the mean of the middle 50% after cutting ``int(0.25 n)`` values at each end."""
    a = np.sort(np.asarray(x, dtype=np.float64), axis=axis)
    n = a.shape[axis]
    cut = int(0.25 * n)
    kept = np.take(a, np.arange(cut, n - cut), axis=axis)
    out = np.mean(kept, axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def stratified_bootstrap_ci(
    strata: Sequence[np.ndarray | Sequence[float]],
    statistic: Statistic = mean,
    *,
    reps: int = TABLE_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over all samples, resampling within each stratum.

    ``strata``: one array of per-seed values per task. Returns ``(low, high)``; NaN values are dropped;
    with a single sample in total the interval collapses to that value, with none it is ``(nan, nan)``.
    """
    arrays = [np.asarray(s, dtype=np.float64).reshape(-1) for s in strata]
    arrays = [a[np.isfinite(a)] for a in arrays]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    # (reps, n_i) indices per stratum, concatenated into (reps, N) resampled score sets
    resampled = np.concatenate([a[rng.integers(0, a.size, size=(reps, a.size))] for a in arrays], axis=1)
    stats = np.asarray(statistic(resampled, axis=-1), dtype=np.float64)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return (float(low), float(high))


def bootstrap_ci(
    samples: np.ndarray | Sequence[float],
    statistic: Statistic = mean,
    *,
    reps: int = TABLE_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI over one group of samples (e.g. the seeds of one dataset × algorithm)."""
    return stratified_bootstrap_ci([samples], statistic, reps=reps, confidence=confidence, seed=seed)


def _two_groups(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float]
                ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float] | None]:
    """Two groups' finite values, and the answer when there is no interval to make: all NaN when a group is
    empty, the difference of the means with NaN ends when one has a single value; else None."""
    x, y = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (a, b))
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not (x.size and y.size):
        return x, y, (float("nan"),) * 3
    if x.size < 2 or y.size < 2:
        return x, y, (float(x.mean() - y.mean()), float("nan"), float("nan"))
    return x, y, None


def difference_ci(
    a: np.ndarray | Sequence[float],
    b: np.ndarray | Sequence[float],
    *,
    reps: int = TABLE_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), low, high)``: percentile bootstrap CI of the difference of two groups' means,
    each group's seeds resampled on their own (they are independent experiments). NaN values are dropped;
    the interval is NaN when a group has fewer than two values, everything when one has none."""
    x, y, early = _two_groups(a, b)
    if early is not None:
        return early
    point = float(x.mean() - y.mean())
    rng = np.random.default_rng(seed)
    diffs = x[rng.integers(0, x.size, (reps, x.size))].mean(1) - y[rng.integers(0, y.size, (reps, y.size))].mean(1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(diffs, [tail, 100.0 - tail])
    return point, float(low), float(high)


def seed_ci(values: np.ndarray | Sequence[float], interval: str = DEFAULT_INTERVAL, *,
            reps: int = TABLE_RESAMPLES) -> tuple[float, float]:
    """95% interval of the mean over seeds by ``interval`` (:data:`INTERVALS`); NaN with fewer than two."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return (float("nan"), float("nan"))
    if interval == "t":
        return mean_ci(v)[1:]
    return bootstrap_ci(v, reps=reps)


def welch_ci(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float]) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), low, high)``: Welch's 95% interval of a difference of two independent means (t with
    the Welch-Satterthwaite degrees of freedom, rounded down); NaN ends when a group has fewer than two values."""
    x, y, early = _two_groups(a, b)
    if early is not None:
        return early
    point = float(x.mean() - y.mean())
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    if vx + vy == 0:
        return point, point, point
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = t975(max(1, int(df))) * float(np.sqrt(vx + vy))
    return point, point - half, point + half
