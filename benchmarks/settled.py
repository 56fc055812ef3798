"""Did the curves settle? Per dataset x algorithm of a suite's runs: the mean of each run's last 5 evaluations,
and the change of the normalized score across the last third of the run, with percentile-bootstrap 95% CIs
over seeds. A curve is called settled when that change's CI lies within +-5 normalized points. Only completed
runs count (a run still training, or stopped, is left out and counted on stderr).

    python benchmarks/settled.py RUNS_DIR [RUNS_DIR ...]   # prints a Markdown table
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd


def _ci(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    if len(values) < 2:
        return float(values.mean()), float("nan"), float("nan")
    boot = rng.choice(values, (10_000, len(values))).mean(1)
    return float(values.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def _status(run: Path) -> str | None:
    from offrl.errors import UserError
    from offrl.runs.rundir import read_summary

    try:
        return read_summary(run).get("status")
    except UserError:  # a damaged summary: not a completed run
        return None


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    rows, unfinished = [], 0
    for root in map(Path, argv):
        for metrics in sorted(root.glob("*/*/seed*/metrics.csv")):
            if _status(metrics.parent) != "completed":
                unfinished += 1
                continue
            ds, algo = metrics.parents[2].name.replace("__", "/"), metrics.parents[1].name
            evals = pd.read_csv(metrics).dropna(subset=["eval_normalized_score"])
            steps, score = evals["step"].to_numpy(), evals["eval_normalized_score"].to_numpy()
            at_two_thirds = score[np.searchsorted(steps, steps[-1] * 2 / 3)]
            rows.append(dict(dataset=ds, algo=algo, last=score[-1], last5=score[-5:].mean(),
                             change=score[-1] - at_two_thirds, steps=int(steps[-1])))
    if unfinished:
        print(f"settled.py: left out {unfinished} run(s) that have not completed", file=sys.stderr)
    if not rows:
        print(f"settled.py: no runs (*/*/seed*/metrics.csv) under {', '.join(argv)}; pass a suite's --runs folder",
              file=sys.stderr)
        return 2
    df = pd.DataFrame(rows)
    rng = np.random.default_rng(0)
    print("| dataset | algorithm | seeds | steps | mean of last 5 evaluations [95% CI] | change over the last third "
          "[95% CI] | settled |")
    print("|---|---|---|---|---|---|---|")
    for (ds, algo), g in df.groupby(["dataset", "algo"]):
        m, lo, hi = _ci(g["last5"].to_numpy(), rng)
        c, clo, chi = _ci(g["change"].to_numpy(), rng)
        settled = "yes" if (np.isfinite(clo) and -5 <= clo and chi <= 5) else "no"
        print(f"| {ds} | {algo} | {len(g)} | {g['steps'].max()} | {m:.1f} [{lo:.1f}, {hi:.1f}] | "
              f"{c:+.1f} [{clo:+.1f}, {chi:+.1f}] | {settled} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
