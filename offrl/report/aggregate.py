"""Runs -> groups of seeds -> tidy tables (curves and summary rows) that plots and HTML render."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from offrl.evaluation.findings import SETTLED_WITHIN, critic_finding, curve_trend, trend_reading
from offrl.report.runs import RunRecord
from offrl.report.stats import CURVE_RESAMPLES, DEFAULT_INTERVAL, iqm, seed_ci, stratified_bootstrap_ci

__all__ = ["Group", "ScoreUnit", "aggregate_table", "chosen_table", "curve", "group_runs", "group_trend", "run_table",
           "summary_table"]

NORMALIZED, RAW = "eval_normalized_score", "eval_return_mean"


@dataclass(frozen=True)
class ScoreUnit:
    """The score column shown for a dataset: normalized when every run has references, else raw return."""

    column: str
    label: str

    @property
    def normalized(self) -> bool:
        return self.column == NORMALIZED


@dataclass
class Group:
    """Seeds of one experiment (dataset + the config, or the ``--group-by`` value)."""

    dataset: str
    label: str
    runs: list[RunRecord]
    unit: ScoreUnit
    notes: list[str] = field(default_factory=list)
    duplicates: list[RunRecord] = field(default_factory=list)
    """Runs whose seed another run of the group already has: shown, never counted as a seed."""

    @property
    def status_text(self) -> str:
        counts = Counter(r.status for r in self.runs)
        others = [f"{n} {s}" for s, n in sorted(counts.items()) if s != "completed"]
        if self.duplicates:
            others.append(f"{len(self.duplicates)} duplicate seed{'s' if len(self.duplicates) > 1 else ''} not counted")
        return f"{len(self.runs)}" + (f" ({', '.join(others)})" if others else "")


def _keeper_order(run: RunRecord) -> tuple[int, int, str]:
    """Which run of one seed a group keeps: a completed one, then the furthest, then the newest folder."""
    return (run.status == "completed", run.steps, run.path.name)


def distinct_seeds(runs: Sequence[RunRecord], label: str, warnings: list[str]) -> tuple[list[RunRecord], list[RunRecord]]:
    """One run per seed: runs of a seed already seen (a re-run, a resumed twin, the CLI and a script with
    the same seed) are not independent samples, so a group keeps one of them and says which."""
    by_seed: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_seed.setdefault(str(run.seed), []).append(run)
    kept, dropped = [], []
    for seed, same in by_seed.items():
        same = sorted(same, key=_keeper_order, reverse=True)
        kept.append(same[0])
        dropped += same[1:]
        if len(same) > 1:
            warnings.append(
                f"{label}: seed {seed} has {len(same)} runs; counted once (kept {same[0].path.name}, "
                f"{same[0].status}, {same[0].steps} steps; not counted: {', '.join(r.path.name for r in same[1:])}): "
                "runs with the same seed are not independent samples"
            )
    return kept, dropped


def _has_refs(run: RunRecord) -> bool | None:
    """True: the run's scores can be normalized; False: it has returns but no references; None: it
    logged no evaluation yet, so it does not decide."""
    col = run.metrics.get(NORMALIZED)
    if col is not None and col.notna().any():
        return True
    ref = run.ref()
    if ref.get("min") is not None and ref.get("max") is not None:
        return True
    returns = run.metrics.get(RAW)
    if (returns is not None and returns.notna().any()) or (run.summary or {}).get("final"):
        return False
    return None


def _score_units(runs: Sequence[RunRecord], warnings: list[str]) -> dict[str, ScoreUnit]:
    units: dict[str, ScoreUnit] = {}
    for ds in sorted({r.dataset for r in runs}):
        states = [_has_refs(r) for r in runs if r.dataset == ds]
        with_refs, without = states.count(True), states.count(False)
        if with_refs and not without:
            units[ds] = ScoreUnit(NORMALIZED, "normalized score (0 = ref min, 100 = ref max)")
        else:
            if with_refs:
                warnings.append(
                    f"{ds}: {with_refs} of {with_refs + without} runs have reference scores; all shown as raw returns"
                )
            units[ds] = ScoreUnit(RAW, "return (raw: no reference scores)")
    return units


def group_runs(runs: Sequence[RunRecord], group_by: str | None, warnings: list[str]) -> list[Group]:
    """Group runs into experiments. ``group_by``: None (same dataset and config except the seed),
    ``"algo"``, ``"dataset"``, or a dotted config key (e.g. ``cql.min_q_weight``)."""
    units = _score_units(runs, warnings)
    # A config key that only some runs of a dataset and algorithm have (one added by a later offrl) says
    # nothing about how they differ: compare runs on the keys they all share.
    shared: dict[tuple[str, str], set[str]] = {}
    for run in runs:
        keys = {k for k, _ in run.identity}
        where = (run.dataset, run.algo)
        shared[where] = shared[where] & keys if where in shared else keys
    buckets: dict[tuple[Any, ...], list[RunRecord]] = {}
    for run in runs:
        if group_by in (None, "", "config"):
            common = shared[(run.dataset, run.algo)]
            key: tuple[Any, ...] = (run.dataset, tuple(kv for kv in run.identity if kv[0] in common))
        elif group_by == "algo":
            key = (run.dataset, run.algo)
        elif group_by == "dataset":
            key = (run.dataset,)
        else:
            key = (run.dataset, run.algo, repr(run.flat_config.get(group_by, "n/a")))
        buckets.setdefault(key, []).append(run)
    if group_by not in (None, "", "config", "algo", "dataset") and not any(group_by in r.flat_config for r in runs):
        from offrl.errors import UserError

        keys = sorted({k for r in runs for k in r.flat_config})[:12]
        raise UserError(f"--group-by {group_by}: no run has this config key; use algo, dataset or one of {', '.join(keys)}, ...")
    groups: list[Group] = []
    for key, members in buckets.items():
        ds = key[0]
        if group_by == "dataset":
            label = "+".join(sorted({r.algo for r in members}))
        elif group_by in (None, "", "config"):
            label = members[0].algo
            siblings = [k for k in buckets if k[0] == ds and dict(k[1]).get("algo") == dict(key[1]).get("algo")]
            if len(siblings) > 1:  # same algorithm with different settings: name what differs
                mine = dict(key[1])
                differing = sorted({k for s in siblings for k, v in s[1] if mine.get(k) != v})
                label += " (" + ", ".join(f"{k}={_short(mine.get(k, 'n/a'))}" for k in differing[:3]) + ")"
        elif group_by == "algo":
            label = members[0].algo
        else:
            label = f"{members[0].algo} {group_by}={_short(key[2])}"
        kept, dropped = distinct_seeds(members, f"{ds} {label}", warnings)
        groups.append(Group(ds, label, sorted(kept, key=lambda r: str(r.seed)), units[ds], duplicates=dropped))
    return sorted(groups, key=lambda g: (g.dataset, g.label))


def _short(v: Any) -> str:
    s = str(v).strip("'\"")
    return s if len(s) <= 24 else s[:21] + "..."


def run_evals(run: RunRecord, column: str) -> pd.DataFrame:
    """The evaluation rows of a run: ``step``, ``value``, ``phase`` (finite values only)."""
    m = run.metrics
    if column not in m.columns:
        return pd.DataFrame({"step": pd.Series(dtype=float), "value": pd.Series(dtype=float), "phase": pd.Series(dtype=object)})
    rows = m[np.isfinite(m[column].astype(float))]
    return pd.DataFrame({"step": rows["step"].to_numpy(), "value": rows[column].to_numpy(dtype=float), "phase": rows["phase"].to_numpy()})


def last_and_best(run: RunRecord, column: str) -> tuple[float, float]:
    """Last and best evaluation score of a run; from summary.json when the metrics hold none."""
    ev = run_evals(run, column)
    if len(ev):
        return float(ev["value"].iloc[-1]), float(ev["value"].max())
    key = "normalized_score" if column == NORMALIZED else "return_mean"
    s = run.summary or {}
    return _num((s.get("final") or {}).get(key)), _num((s.get("best") or {}).get(key))


#: The report shows the mean of each run's last this-many evaluations beside its last one.
RECENT = 5
_CI_COLUMNS = {NORMALIZED: ("eval_normalized_ci_low", "eval_normalized_ci_high"),
               RAW: ("eval_return_ci_low", "eval_return_ci_high")}


@dataclass(frozen=True)
class LastEval:
    """A run's last evaluation as the report reads it: the score, its episodes and their 95% interval,
    the mean of the last :data:`RECENT` evaluations, and the critic's V(s0) against the achieved return."""

    value: float
    episodes: float
    low: float
    high: float
    recent: float
    recent_n: int
    v_s0: float
    achieved: float

    @property
    def critic(self) -> str | None:
        return critic_finding(self.v_s0, self.achieved)


def last_eval(run: RunRecord, column: str) -> LastEval:
    """The last evaluation row of a run (metrics.csv, else summary.json's ``final``)."""
    m = run.metrics
    ev = m[np.isfinite(m[column].astype(float))] if column in m.columns else m.iloc[0:0]
    get = lambda row, key: _num(row.get(key)) if key in row else math.nan  # noqa: E731
    if len(ev):
        row = ev.iloc[-1]
        low_key, high_key = _CI_COLUMNS[column]
        tail = ev[column].astype(float).tail(RECENT)
        return LastEval(float(row[column]), get(row, "eval_episodes"), get(row, low_key), get(row, high_key),
                        float(tail.mean()), int(len(tail)), get(row, "diag_v_s0_eval"),
                        get(row, "diag_achieved_return_s0"))
    s = run.summary or {}
    final, recent, critic = s.get("final") or {}, s.get("last_evals") or {}, s.get("critic") or {}
    key = "normalized_score" if column == NORMALIZED else "return_mean"
    ci = final.get("normalized_ci95" if column == NORMALIZED else "return_ci95") or [None, None]
    return LastEval(_num(final.get(key)), _num(final.get("episodes")), _num(ci[0]), _num(ci[1]),
                    _num(recent.get(key)), int(recent.get("evaluations") or 0), _num(critic.get("v_s0")),
                    _num(critic.get("achieved_return_s0")))


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def curve(group: Group, column: str, *, smooth: int = 1, ci: bool = True, interval: str = DEFAULT_INTERVAL) -> pd.DataFrame:
    """Mean over seeds per step with a 95% CI (``interval``: bootstrap with ``CURVE_RESAMPLES`` resamples,
    seeded, or Student-t).

    Each run is smoothed first (trailing mean over ``smooth`` points). Returns columns ``step``, ``mean``,
    ``low``, ``high``, ``n`` (seeds with a value at that step).
    """
    series = []
    for i, run in enumerate(group.runs):
        ev = run_evals(run, column)
        if not len(ev):
            continue
        ev = ev.groupby("step", as_index=False)["value"].last()
        values = ev["value"].rolling(max(1, smooth), min_periods=1).mean() if smooth > 1 else ev["value"]
        series.append(pd.Series(values.to_numpy(), index=ev["step"].to_numpy(), name=i))
    if not series:
        return pd.DataFrame(columns=["step", "mean", "low", "high", "n"])
    wide = pd.concat(series, axis=1).sort_index()
    rows = []
    for step, vals in wide.iterrows():
        v = vals.to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        lo, hi = seed_ci(v, interval, reps=CURVE_RESAMPLES) if ci else (math.nan, math.nan)
        rows.append((float(step), float(v.mean()), lo, hi, int(v.size)))
    return pd.DataFrame(rows, columns=["step", "mean", "low", "high", "n"])


def online_switch(group: Group) -> float | None:
    """First gradient step logged in the online phase (offline-to-online runs), else None."""
    steps = [r.metrics.loc[r.metrics["phase"] == "online", "step"].min() for r in group.runs if len(r.metrics)]
    steps = [s for s in steps if s == s]  # drop NaN (no online rows)
    return float(min(steps)) if steps else None


def _fmt_ci(values: np.ndarray, interval: str = DEFAULT_INTERVAL) -> dict[str, float]:
    """Mean, 95% CI over seeds (``interval``), IQM and ``n`` (seeds with a value); one seed has no interval."""
    v = values[np.isfinite(values)]
    if not v.size:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "iqm": math.nan, "n": 0}
    lo, hi = seed_ci(v, interval)
    return {"mean": float(v.mean()), "low": lo, "high": hi, "iqm": float(iqm(v)), "n": int(v.size)}


def group_trend(group: Group, interval: str = DEFAULT_INTERVAL) -> dict[str, Any]:
    """The score's trend over the last third of the runs (:func:`~offrl.evaluation.findings.curve_trend` per
    run): the mean over seeds with a 95% CI over them (``interval``), or one seed's own Student-t interval, and its
    reading against the tolerance (5 normalized points, or 5% of the range the group's raw returns cover)."""
    trends, values = [], []
    for run in group.runs:
        ev = run_evals(run, group.unit.column)
        values.append(ev["value"].to_numpy(dtype=float))
        trends.append(curve_trend(ev["step"].to_numpy(dtype=float), ev["value"].to_numpy(dtype=float)))
    scored = [t for t in trends if math.isfinite(t[0])]
    if len(scored) > 1:
        changes = np.array([t[0] for t in scored])
        mean, (low, high) = float(changes.mean()), seed_ci(changes, interval)
    else:
        mean, low, high = scored[0][:3] if scored else (math.nan, math.nan, math.nan)
    seen = np.concatenate(values) if values else np.array([])
    span = 100.0 if group.unit.normalized else (float(seen.max() - seen.min()) if seen.size else math.nan)
    tolerance = SETTLED_WITHIN * span
    return {"trend_mean": mean, "trend_low": low, "trend_high": high, "trend_n": len(scored),
            "trend_tolerance": tolerance, "trend_reading": trend_reading(mean, low, high, tolerance)}


def summary_table(groups: Sequence[Group], interval: str = DEFAULT_INTERVAL) -> pd.DataFrame:
    """One row per dataset × group: last and best (mean, IQM, 95% CI over seeds), the mean of the last
    evaluations, the last third's trend (:func:`group_trend`), seeds, steps, updates/s, and the behaviour
    policy's mean return from the dataset. ``interval``: how the intervals over seeds are made
    (:data:`offrl.report.stats.INTERVALS`)."""
    rows = []
    for g in groups:
        lb = np.array([last_and_best(r, g.unit.column) for r in g.runs], dtype=float).reshape(-1, 2)
        last, best = _fmt_ci(lb[:, 0], interval), _fmt_ci(lb[:, 1], interval)
        behaviour = np.nanmean([r.behaviour_return for r in g.runs]) if any(
            np.isfinite(r.behaviour_return) for r in g.runs) else math.nan
        ref = next((r.ref() for r in g.runs if r.ref().get("min") is not None), {})
        behaviour_norm = math.nan
        if g.unit.normalized and ref and np.isfinite(behaviour) and ref["max"] != ref["min"]:
            behaviour_norm = 100.0 * (behaviour - float(ref["min"])) / (float(ref["max"]) - float(ref["min"]))
        ups = [r.updates_per_s for r in g.runs if np.isfinite(r.updates_per_s)]
        finals = [last_eval(r, g.unit.column) for r in g.runs]
        recent = _fmt_ci(np.array([f.recent for f in finals], dtype=float), interval)
        episodes = [f.episodes for f in finals if np.isfinite(f.episodes)]
        one = finals[0] if len(finals) == 1 else None
        rows.append({
            "dataset": g.dataset, "group": g.label, "unit": g.unit.column, "seeds": g.status_text,
            "n_seeds": len(g.runs), "steps": int(np.median([r.steps for r in g.runs])),
            "updates_per_s": float(np.mean(ups)) if ups else math.nan,
            **{f"last_{k}": v for k, v in last.items()}, **{f"best_{k}": v for k, v in best.items()},
            **{f"recent_{k}": v for k, v in recent.items()},
            "recent_evals": max((f.recent_n for f in finals), default=0),
            **group_trend(g, interval),
            "last_episodes": float(np.median(episodes)) if episodes else math.nan,
            # one seed: the interval over its final evaluation's episodes is the only noise figure there is
            "last_episode_low": one.low if one else math.nan, "last_episode_high": one.high if one else math.nan,
            "critic": critic_finding(_nanmean([f.v_s0 for f in finals]), _nanmean([f.achieved for f in finals])),
            "behaviour_return": behaviour, "behaviour_normalized": behaviour_norm,
            "ref_source": ref.get("source") if ref else None,
        })
    return pd.DataFrame(rows)


def chosen_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, the summary row (config) with the highest mean last evaluation over its seeds, plus
    ``candidates`` (configs compared) and ``unit_label``. This selects on the evaluation itself: the
    score is optimistic (selection on the test set); the report says so next to the table."""
    columns = [*summary.columns, "candidates", "unit_label"]
    if summary.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for _, part in summary.groupby("dataset", sort=True):
        scored = part[np.isfinite(part["last_mean"].astype(float))]
        if scored.empty:
            continue
        best = scored.loc[scored["last_mean"].astype(float).idxmax()].to_dict()
        best["candidates"] = len(part)
        best["unit_label"] = "normalized score" if best["unit"] == NORMALIZED else "return"
        rows.append(best)
    return pd.DataFrame(rows, columns=columns)


def aggregate_table(groups: Sequence[Group]) -> pd.DataFrame:
    """Across datasets with reference scores, per algorithm label: IQM and mean of the last normalized
    score with a stratified (by dataset) bootstrap 95% CI, rliable-style."""
    by_label: dict[str, list[np.ndarray]] = {}
    for g in groups:
        if not g.unit.normalized:
            continue
        last = np.array([last_and_best(r, g.unit.column)[0] for r in g.runs], dtype=float)
        by_label.setdefault(g.label, []).append(last[np.isfinite(last)])
    rows = []
    for label, strata in sorted(by_label.items()):
        flat = np.concatenate(strata) if strata else np.array([])
        if not flat.size:
            continue
        one = flat.size < 2  # one run has no interval (never [x, x])
        iqm_lo, iqm_hi = (math.nan, math.nan) if one else stratified_bootstrap_ci(strata, iqm)
        mean_lo, mean_hi = (math.nan, math.nan) if one else stratified_bootstrap_ci(strata)
        rows.append({
            "group": label, "datasets": len(strata), "runs": int(flat.size),
            "iqm": float(iqm(flat)), "iqm_low": iqm_lo, "iqm_high": iqm_hi,
            "mean": float(flat.mean()), "mean_low": mean_lo, "mean_high": mean_hi,
        })
    return pd.DataFrame(rows)


def run_table(groups: Sequence[Group]) -> pd.DataFrame:
    """Every run: where it is, its status, how far it got, its last and best score."""
    rows = []
    for g in groups:
        for r in [*g.runs, *g.duplicates]:
            last, best = last_and_best(r, g.unit.column)
            final = last_eval(r, g.unit.column)
            rows.append({
                "dataset": g.dataset, "group": g.label, "seed": r.seed, "status": r.status, "steps": r.steps,
                "last": last, "best": best, "unit": g.unit.column, "path": str(r.path), "warnings": len(r.warnings),
                "counted": all(r is not d for d in g.duplicates),
                "episodes": final.episodes, "last_low": final.low, "last_high": final.high,
                "recent": final.recent, "recent_evals": final.recent_n, "critic": final.critic,
            })
    return pd.DataFrame(rows)
