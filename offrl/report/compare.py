"""Experiment against experiment on each dataset: what a change of setting did, with its noise.

For every dataset with two or more groups, each group's seed mean minus the baseline group's, for the last
evaluation and for the mean of the last 5 evaluations (steadier than one), with Welch's 95% interval
(:func:`offrl.report.stats.welch_ci`; or a percentile bootstrap that resamples each group's seeds on their own,
:func:`offrl.report.stats.difference_ci`), and the reading:
``higher`` / ``lower`` only when the interval excludes 0. The baseline is the group whose label contains
``baseline`` (``offrl report --baseline``), else the first group of the dataset in label order. Groups that
trained different budgets (runs still going, or other ``--steps``) are compared as they stand, and the reading
says so instead of ranking them. ``curves`` says whether both groups' curves settled over the last third
(:func:`offrl.report.aggregate.group_trend`): where one did not, the difference is one at this budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from offrl.errors import UserError
from offrl.report.aggregate import Group, group_trend, last_and_best, last_eval
from offrl.report.stats import DEFAULT_INTERVAL, difference_ci, welch_ci

__all__ = ["curves_reading", "difference_table", "reading"]

COLUMNS = ["dataset", "group", "baseline", "unit", "n", "n_baseline", "steps", "steps_baseline",
           "last_diff", "last_low", "last_high", "last_reading",
           "recent_diff", "recent_low", "recent_high", "recent_reading", "curves"]


#: ``curves`` when both groups' curves settled over the last third.
SETTLED = "settled"


def reading(low: float, high: float) -> str:
    """``higher`` / ``lower`` when the 95% interval excludes 0, else ``no difference shown``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no interval: one seed"
    return "higher" if low > 0 else "lower" if high < 0 else "no difference shown"


def curves_reading(trends: dict[str, str]) -> str:
    """``settled`` when every group's last-third trend reads settled, else which did not and how
    (``not settled over the last third (cql still rising, d3rlpy-cql unclear)``): a difference between curves
    still moving is a difference at this budget, not where the methods end."""
    moving = [f"{label} {said}" for label, said in trends.items() if said != SETTLED]  # trend_reading's word
    return SETTLED if not moving else f"not settled over the last third ({', '.join(moving)})"


def _steps(group: Group) -> int:
    """The group's budget as its runs stand: the median of the steps each reached."""
    return int(np.median([r.steps for r in group.runs])) if group.runs else 0


def _values(group: Group) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's last evaluation and the mean of its last evaluations."""
    last = np.array([last_and_best(r, group.unit.column)[0] for r in group.runs], dtype=float)
    recent = np.array([last_eval(r, group.unit.column).recent for r in group.runs], dtype=float)
    return last, recent


def _baseline(part: Sequence[Group], baseline: str | None) -> Group | None:
    if baseline is None:
        return part[0]
    exact = [g for g in part if g.label == baseline]
    found = exact or [g for g in part if baseline in g.label]
    if len(found) > 1:
        raise UserError(f"--baseline {baseline!r}: {len(found)} experiments on {part[0].dataset} match it "
                        f"({'; '.join(g.label for g in found)}); give more of the label")
    return found[0] if found else None


def difference_table(groups: Sequence[Group], baseline: str | None = None, interval: str = DEFAULT_INTERVAL) -> pd.DataFrame:
    """One row per group against its dataset's baseline (see the module docstring); empty when no dataset
    has two groups. A ``baseline`` no group's label contains is one error line naming the labels.
    ``interval``: ``bootstrap`` (each side's seeds resampled on their own) or ``t`` (Welch's interval)."""
    diff_ci = welch_ci if interval == "t" else difference_ci
    by_dataset: dict[str, list[Group]] = {}
    for g in sorted(groups, key=lambda g: (g.dataset, g.label)):
        by_dataset.setdefault(g.dataset, []).append(g)
    rows: list[dict[str, Any]] = []
    matched = False
    for part in by_dataset.values():
        base = _baseline(part, baseline)
        matched = matched or base is not None
        if base is None or len(part) < 2:
            continue
        base_last, base_recent = _values(base)
        base_trend = group_trend(base, interval)["trend_reading"]
        for g in part:
            if g is base:
                continue
            last, recent = _values(g)
            steps, base_steps = _steps(g), _steps(base)
            row: dict[str, Any] = {"dataset": g.dataset, "group": g.label, "baseline": base.label,
                                   "unit": g.unit.column, "n": len(g.runs), "n_baseline": len(base.runs),
                                   "steps": steps, "steps_baseline": base_steps,
                                   "curves": curves_reading({g.label: group_trend(g, interval)["trend_reading"],
                                                             base.label: base_trend})}
            for key, mine, theirs in (("last", last, base_last), ("recent", recent, base_recent)):
                diff, low, high = diff_ci(mine, theirs)
                if not math.isfinite(diff):
                    said = "no score to compare"  # a side with no finite evaluation (diverged, never evaluated)
                elif steps != base_steps:
                    said = f"different budgets: {steps:,} vs {base_steps:,} steps"
                else:
                    said = reading(low, high)
                row.update({f"{key}_diff": diff, f"{key}_low": low, f"{key}_high": high, f"{key}_reading": said})
            rows.append(row)
    if baseline is not None and not matched:
        labels = sorted({g.label for g in groups})
        raise UserError(f"--baseline {baseline!r}: no experiment's label contains it; the labels are: "
                        + "; ".join(labels))
    return pd.DataFrame(rows, columns=COLUMNS)
