"""One setting against another: A minus B per dataset, over two folders of suite runs, as a Markdown table.

For each dataset with completed runs on both sides: the seed means of A and B and their difference, with Welch's
95% CI (``--interval bootstrap``: a percentile bootstrap resampling each side's seeds; ``benchmarks/settled.py``), for the
mean of the first 5 evaluations (how fast it learns), the mean of the last 5 (where it ends, steadier than one
evaluation) and the last evaluation. A last row pools the datasets (each weighs the same).

    python benchmarks/ablation_diff.py A_RUNS B_RUNS --algo-a cql [--algo-b d3rlpy-cql] [--last-episodes K] \
        [--interval bootstrap|t]

``A_RUNS`` / ``B_RUNS``: suite ``--runs`` folders (``<dataset>/<algo>/seed*/`` with metrics.csv and
summary.json); ``--algo-b`` defaults to ``--algo-a``. Only completed runs count. ``--last-episodes K`` scores
every run's last evaluation on its episodes 0..K-1 (``settled.last_on_episodes``: offrl's final evaluation
runs 20 episodes, the d3rlpy peer's 10), in the last-5 and last columns; a run with no such score is left out
and counted on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from settled import _difference, _summary, last_on_episodes  # noqa: E402  (the suite report's intervals)

MEASURES = (("first 5", lambda s: s[:5].mean()), ("last 5", lambda s: s[-5:].mean()), ("last", lambda s: s[-1]))


def _scores(root: Path, dataset: str, algo: str, last_episodes: int = 0,
            left_out: list[Path] | None = None) -> list[np.ndarray]:
    """Each completed run's normalized evaluation scores, in step order; with ``last_episodes``, the last one
    over episodes 0..K-1 (runs that cannot give it are appended to ``left_out``)."""
    out = []
    for run in sorted((root / dataset / algo).glob("seed*")):
        try:
            if json.loads((run / "summary.json").read_text()).get("status") != "completed":
                continue
        except (OSError, ValueError):
            continue
        m = pd.read_csv(run / "metrics.csv").dropna(subset=["eval_normalized_score"])
        score = m["eval_normalized_score"].to_numpy(copy=True)
        if last_episodes:
            last = last_on_episodes(run, _summary(run), last_episodes)
            if last is None:
                if left_out is not None:
                    left_out.append(run)
                continue
            score[-1] = last
        out.append(score)
    return out


def table(a_root: Path, b_root: Path, algo_a: str, algo_b: str, seed: int = 0, last_episodes: int = 0,
          left_out: list[Path] | None = None, interval: str = "t") -> list[str]:
    rng = np.random.default_rng(seed)
    head = "| dataset | seeds A / B | " + " | ".join(f"{m}: A, B, A - B [95% CI]" for m, _ in MEASURES) + " |"
    lines = [head, "|" + "---|" * (2 + len(MEASURES))]
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {m: [] for m, _ in MEASURES}
    datasets = sorted(p.name for p in a_root.iterdir() if (p / algo_a).is_dir()) if a_root.is_dir() else []
    for ds in datasets:
        a = _scores(a_root, ds, algo_a, last_episodes, left_out)
        b = _scores(b_root, ds, algo_b, last_episodes, left_out)
        if not a or not b:
            continue
        cells = []
        for name, fn in MEASURES:
            x, y = np.array([fn(s) for s in a]), np.array([fn(s) for s in b])
            pooled[name].append((x, y))
            d, lo, hi = _difference([(x, y)], rng, interval)
            cells.append(f"{x.mean():.1f}, {y.mean():.1f}, {d:+.1f} [{lo:+.1f}, {hi:+.1f}]")
        lines.append(f"| {ds.replace('__', '/')} | {len(a)} / {len(b)} | " + " | ".join(cells) + " |")
    if len(lines) > 3:
        cells = []
        for name, _ in MEASURES:
            d, lo, hi = _difference(pooled[name], rng, interval)
            cells.append(f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]")
        lines.append("| across the datasets | | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a_runs", type=Path)
    parser.add_argument("b_runs", type=Path)
    parser.add_argument("--algo-a", required=True)
    parser.add_argument("--algo-b")
    parser.add_argument("--last-episodes", type=int, default=0, metavar="K",
                        help="score each run's last evaluation on its episodes 0..K-1 (default: all)")
    parser.add_argument("--interval", choices=("bootstrap", "t"), default="t",
                        help="Welch's t interval (default) or a percentile bootstrap (too narrow over few seeds, "
                        "benchmarks/ci_coverage.py)")
    args = parser.parse_args(argv)
    if args.last_episodes < 0:
        print(f"ablation_diff: --last-episodes {args.last_episodes}: must be 0 (every episode) or more",
              file=sys.stderr)
        return 2
    left_out: list[Path] = []
    lines = table(args.a_runs, args.b_runs, args.algo_a, args.algo_b or args.algo_a,
                  last_episodes=args.last_episodes, left_out=left_out, interval=args.interval)
    if left_out:
        print(f"ablation_diff: left out {len(left_out)} completed run(s) with no score over episodes "
              f"0-{args.last_episodes - 1} (e.g. {left_out[0]})", file=sys.stderr)
    if len(lines) == 2:
        print(f"ablation_diff: no dataset has completed runs of {args.algo_a} in {args.a_runs} and of "
              f"{args.algo_b or args.algo_a} in {args.b_runs}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
