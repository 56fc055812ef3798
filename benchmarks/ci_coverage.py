"""How often does a "95%" interval over seeds contain the true mean? Simulated, for the seed counts people use.

For each seed count n: draw n scores from a known distribution, build the interval, count how often it holds
the distribution's mean. Two intervals: the percentile bootstrap of the mean (offrl's reports and rliable:
10,000 resamples there, ``--resamples`` here) and Student-t (``mean ± t(0.975, n-1) s / √n``). Two score
distributions: normal, and a skewed one (a lognormal, sigma 0.75: a few seeds far above the rest).

    python benchmarks/ci_coverage.py [--trials 4000] [--resamples 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from offrl.evaluation.findings import t975  # noqa: E402

SEEDS = (2, 3, 5, 10, 20)
DISTRIBUTIONS = {"normal": (lambda rng, shape: rng.normal(0.0, 1.0, shape), 0.0),
                 "skewed (lognormal, sigma 0.75)": (lambda rng, shape: rng.lognormal(0.0, 0.75, shape),
                                                    math.exp(0.75**2 / 2))}


def coverage(n: int, draw, mean: float, trials: int, resamples: int, rng: np.random.Generator) -> tuple[float, float]:
    """(percentile bootstrap, Student-t): the share of ``trials`` intervals that contain ``mean``."""
    boot = t_hits = 0
    for _ in range(trials):
        x = draw(rng, n)
        means = x[rng.integers(0, n, (resamples, n))].mean(1)
        low, high = np.percentile(means, [2.5, 97.5])
        boot += low <= mean <= high
        half = t975(n - 1) * x.std(ddof=1) / math.sqrt(n)
        t_hits += abs(x.mean() - mean) <= half
    return boot / trials, t_hits / trials


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=4000, help="simulated experiments per cell (default 4000)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples per interval (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"Coverage of a nominal 95% interval of the mean over n seeds ({args.trials} simulated experiments "
          f"per cell, {args.resamples} bootstrap resamples, numpy seed {args.seed})\n")
    print("| scores | interval | " + " | ".join(f"n = {n}" for n in SEEDS) + " |")
    print("|---|---|" + "---|" * len(SEEDS))
    for name, (draw, mean) in DISTRIBUTIONS.items():
        cells = [coverage(n, draw, mean, args.trials, args.resamples, rng) for n in SEEDS]
        print(f"| {name} | percentile bootstrap | " + " | ".join(f"{100 * b:.0f}%" for b, _ in cells) + " |")
        print(f"| {name} | Student-t | " + " | ".join(f"{100 * t:.0f}%" for _, t in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
