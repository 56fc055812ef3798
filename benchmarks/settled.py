"""Did the curves settle, and which library ends higher? Two Markdown tables over a suite's runs.

1. Per dataset x algorithm: the last evaluation; the mean of each run's last 5 evaluations; the change of the normalized score
   from the evaluation at two thirds of the run to the last; and the trend over the last third: the slope of a
   least-squares line through every evaluation from two thirds on, times the steps it spans (equal to the
   change when there are two). Student-t 95% CIs over seeds. A curve is called settled when the
   trend's CI lies within +-5 normalized points: a line through all of the last third's evaluations, not two
   single evaluations, each a few noisy episodes.
2. Where an offrl algorithm and its d3rlpy row (``d3rlpy-<algo>``) both have runs on a dataset: offrl's mean
   minus d3rlpy's, of the last evaluation and of the mean of the last 5, with Welch's 95% CI (or, with
   ``--interval bootstrap``, one from resampling each library's seeds on their own), and the reading:
   "offrl higher" or "d3rlpy higher" only when the CI excludes 0. A last row pools the datasets (each
   dataset's difference weighs the same).

Only completed runs count (a run still training, or stopped, is left out and counted on stderr).

``--last-episodes K`` scores every run's last evaluation on its episodes 0..K-1 only, so that runs whose last
evaluations ran different episode counts (offrl's ``eval.final_episodes`` against an older peer's
``eval.episodes``) compare like for like; that score replaces the last evaluation's in every column. Per run it
comes from the first K of the summary's ``final.episode_returns`` (offrl runs and the d3rlpy peer keep them), else from a
last evaluation of exactly K episodes, else from the ``offrl_last_<K>_episodes.csv`` beside the runs folder
(``benchmarks/collect_runs.py --last-episodes K`` writes it); a run with none of these is left out.

Every interval over seeds is Student-t (Welch's for the differences); ``--interval bootstrap`` gives rliable's percentile
bootstrap instead, which is too narrow over a few seeds (``benchmarks/ci_coverage.py``).

    python benchmarks/settled.py RUNS_DIR [RUNS_DIR ...] [--last-episodes K] [--interval bootstrap|t]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _ci(values: np.ndarray, rng: np.random.Generator, interval: str = "t") -> tuple[float, float, float]:
    if len(values) < 2:
        return float(values.mean()), float("nan"), float("nan")
    if interval == "t":  # Student-t: holds its coverage over few seeds (benchmarks/ci_coverage.py)
        from offrl.evaluation.findings import mean_ci

        return mean_ci(values)
    boot = rng.choice(values, (10_000, len(values))).mean(1)
    return float(values.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def _trend(steps: np.ndarray, score: np.ndarray) -> float:
    """The last third's trend (offrl's :func:`~offrl.evaluation.findings.curve_trend`: the least-squares
    slope through the evaluations from two thirds of the run on, times the steps they span); 0 for one."""
    from offrl.evaluation.findings import curve_trend

    change = curve_trend(steps, score)[0]
    return 0.0 if np.isnan(change) else change


def _difference(pairs: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator,
                interval: str = "t") -> tuple[float, float, float]:
    """Mean over datasets of (offrl's seed mean - d3rlpy's seed mean), with Welch's interval (the variance of
    the mean of the differences and its Welch-Satterthwaite degrees of freedom over every group), or with
    ``interval="bootstrap"`` a percentile-bootstrap CI that resamples each library's seeds within each
    dataset; CI bounds are nan when a side has a single seed."""
    point = float(np.mean([a.mean() - b.mean() for a, b in pairs]))
    if any(len(a) < 2 or len(b) < 2 for a, b in pairs):
        return point, float("nan"), float("nan")
    if interval == "t":
        from offrl.evaluation.findings import t975

        parts = [(x.var(ddof=1) / x.size / len(pairs) ** 2, x.size - 1) for a, b in pairs for x in (a, b)]
        var = sum(v for v, _ in parts)
        if var == 0:
            return point, point, point
        df = var**2 / sum(v**2 / d for v, d in parts)
        half = t975(max(1, int(df))) * float(np.sqrt(var))
        return point, point - half, point + half
    boot = np.mean([rng.choice(a, (10_000, len(a))).mean(1) - rng.choice(b, (10_000, len(b))).mean(1)
                    for a, b in pairs], axis=0)
    return point, float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def _reading(lo: float, hi: float) -> str:
    return "offrl higher" if lo > 0 else "d3rlpy higher" if hi < 0 else "no difference shown"


def _cell(value: float, low: float, high: float, signed: bool = False) -> str:
    """``12.3 [10.1, 14.4]``; with one seed (no interval) ``12.3 (1 seed)``, never ``[nan, nan]``."""
    f = "{:+.1f}" if signed else "{:.1f}"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{f.format(value)} (1 seed)"
    return f"{f.format(value)} [{f.format(low)}, {f.format(high)}]"


def _diff_cell(d: float, lo: float, hi: float) -> str:
    """``+4.4 [-1.0, +8.5] (no difference shown)``, or ``+4.4 (no CI: one seed)``."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{d:+.1f} (no CI: one seed)"
    return f"{_cell(d, lo, hi, signed=True)} ({_reading(lo, hi)})"


def _versus(df: pd.DataFrame, rng: np.random.Generator, interval: str = "t") -> list[str]:
    """Table 2: offrl's rows against their d3rlpy counterparts, per dataset and pooled."""
    lines, pooled = [], {}
    for (ds, algo), mine in df[~df["algo"].str.startswith("d3rlpy-")].groupby(["dataset", "algo"]):
        peer = df[(df["dataset"] == ds) & (df["algo"] == f"d3rlpy-{algo}")]
        if peer.empty:
            continue
        cells = []
        for key in ("last", "last5"):
            pair = (mine[key].to_numpy(), peer[key].to_numpy())
            pooled.setdefault((algo, key), []).append(pair)
            d, lo, hi = _difference([pair], rng, interval)
            cells.append(_diff_cell(d, lo, hi))
        lines.append(f"| {ds} | {algo} | {len(mine)} / {len(peer)} | {cells[0]} | {cells[1]} |")
    for algo in sorted({algo for algo, _ in pooled}):
        cells = []
        for key in ("last", "last5"):
            d, lo, hi = _difference(pooled[(algo, key)], rng, interval)
            cells.append(_diff_cell(d, lo, hi))
        n = len(pooled[(algo, "last")])
        lines.append(f"| across {n} dataset{'s' * (n != 1)} | {algo} | | {cells[0]} | {cells[1]} |")
    if not lines:
        return []
    how = ("Welch's 95% CI" if interval == "t" else "95% CI from resampling each library's seeds")
    return ["", f"offrl minus d3rlpy (normalized points; mean over seeds, {how}; across datasets: the mean of the "
            "per-dataset differences):", "",
            "| dataset | algorithm | seeds (offrl / d3rlpy) | last evaluation | mean of last 5 evaluations |",
            "|---|---|---|---|---|", *lines]


def _summary(run: Path) -> dict[str, Any]:
    from offrl.errors import UserError
    from offrl.runs.rundir import read_summary

    try:
        return read_summary(run)
    except UserError:  # a damaged summary: not a completed run
        return {}


def _scored_tables(run: Path, k: int) -> dict[tuple[str, str, int, int], float]:
    """``offrl_last_<k>_episodes.csv`` beside this run's runs folder, keyed (dataset, algo, seed, step)."""
    path = run.parents[2].parent / f"offrl_last_{k}_episodes.csv"
    if not path.is_file():
        return {}
    df = pd.read_csv(path)
    return {(r.dataset, r.algo, int(r.seed), int(r.step)): float(r.normalized_mean) for r in df.itertuples()}


def _final_episodes(run: Path, final: dict[str, Any]) -> int | None:
    """How many episodes the last evaluation ran: the summary says so, or (records of older peers) the run's
    config does: ``eval.final_episodes`` where it has one, else ``eval.episodes``."""
    if final.get("episodes") is not None:
        return int(final["episodes"])
    import yaml

    try:
        ev = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("eval") or {}
    except (OSError, yaml.YAMLError):
        return None
    counts = [int(ev[key]) for key in ("episodes", "final_episodes") if ev.get(key)]
    return max(counts) if counts else None


def last_on_episodes(run: Path, summary: dict[str, Any], k: int) -> float | None:
    """The normalized mean of this run's last evaluation over its episodes 0..k-1, or None when its records
    cannot give it (see the module's docstring for the three sources, in order)."""
    final, ref = summary.get("final") or {}, summary.get("ref") or {}
    returns = final.get("episode_returns")
    if returns and len(returns) >= k and ref.get("min") is not None and ref.get("max") is not None:
        return float(100.0 * (np.mean(returns[:k]) - ref["min"]) / (ref["max"] - ref["min"]))
    if _final_episodes(run, final) == k and final.get("normalized_score") is not None:
        return float(final["normalized_score"])
    ds, algo = run.parent.parent.name.replace("__", "/"), run.parent.name
    seed = int(run.name.removeprefix("seed"))
    return _scored_tables(run, k).get((ds, algo, seed, int(final.get("step", summary.get("steps", -1)))))


def tables(runs: list[Path], last_episodes: int = 0, interval: str = "t") -> tuple[list[str], int]:
    """Both tables (Markdown lines) over the completed ones of these run folders
    (``<dataset>/<algo>/seed<N>``), and how many were left out (not completed, no normalized score, or, with
    ``last_episodes``, no score over that many episodes); no lines when none is left."""
    rows, unfinished = [], 0
    for run in runs:
        summary = _summary(run)
        if summary.get("status") != "completed" or not (run / "metrics.csv").is_file():
            unfinished += 1
            continue
        ds, algo = run.parent.parent.name.replace("__", "/"), run.parent.name
        evals = pd.read_csv(run / "metrics.csv")
        if "eval_normalized_score" not in evals or evals["eval_normalized_score"].isna().all():
            unfinished += 1  # no reference scores (raw returns only) or never evaluated: nothing to compare
            continue
        evals = evals.dropna(subset=["eval_normalized_score"])
        steps, score = evals["step"].to_numpy(), evals["eval_normalized_score"].to_numpy(copy=True)
        if last_episodes:
            last = last_on_episodes(run, summary, last_episodes)
            if last is None:
                unfinished += 1
                continue
            score[-1] = last
        start = int(np.searchsorted(steps, steps[-1] * 2 / 3))
        rows.append(dict(dataset=ds, algo=algo, last=score[-1], last5=score[-5:].mean(),
                         change=score[-1] - score[start], trend=_trend(steps, score),
                         steps=int(steps[-1])))
    if not rows:
        return [], unfinished
    df = pd.DataFrame(rows)
    rng = np.random.default_rng(0)
    trend_rng = np.random.default_rng(1)  # its own stream: the other columns' CIs do not depend on this one
    lines = ["| dataset | algorithm | seeds | steps | last evaluation [95% CI] | mean of last 5 evaluations [95% CI] | "
             "change, two thirds to last [95% CI] | trend over the last third [95% CI] | settled |",
             "|---|---|---|---|---|---|---|---|---|"]
    last_rng = np.random.default_rng(2)  # its own stream: the columns that were there before keep their CIs
    for (ds, algo), g in df.groupby(["dataset", "algo"]):
        a, alo, ahi = _ci(g["last"].to_numpy(), last_rng, interval)
        m, lo, hi = _ci(g["last5"].to_numpy(), rng, interval)
        c, clo, chi = _ci(g["change"].to_numpy(), rng, interval)
        t, tlo, thi = _ci(g["trend"].to_numpy(), trend_rng, interval)
        settled = "yes" if (np.isfinite(tlo) and -5 <= tlo and thi <= 5) else "no"
        lines.append(f"| {ds} | {algo} | {len(g)} | {g['steps'].max()} | {_cell(a, alo, ahi)} | {_cell(m, lo, hi)} | "
                     f"{_cell(c, clo, chi, signed=True)} | {_cell(t, tlo, thi, signed=True)} | {settled} |")
    return lines + _versus(df, rng, interval), unfinished


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    parser = argparse.ArgumentParser(prog="settled.py", add_help=False)
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--last-episodes", type=int, default=0)
    parser.add_argument("--interval", choices=("bootstrap", "t"), default="t")
    args = parser.parse_args(argv)
    if args.last_episodes < 0:
        print(f"settled.py: --last-episodes {args.last_episodes}: must be 0 (every episode) or more",
              file=sys.stderr)
        return 2
    runs = [m.parent for root in args.roots for m in sorted(root.glob("*/*/seed*/metrics.csv"))]
    lines, unfinished = tables(runs, args.last_episodes, args.interval)
    if unfinished:
        why = (f", have no normalized score or no score over episodes 0-{args.last_episodes - 1}"
               if args.last_episodes else " or have no normalized score")
        print(f"settled.py: left out {unfinished} run(s) that have not completed{why}", file=sys.stderr)
    if not lines:
        print(f"settled.py: no completed runs (*/*/seed*/metrics.csv) under {', '.join(map(str, args.roots))}; "
              "pass a suite's --runs folder", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
