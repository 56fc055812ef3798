"""Reproduce offrl's CQL result on the bundled Pendulum dataset with the public API only.

    python examples/train_pendulum_cql.py --seeds 0 1 2 --steps 5000

Trains continuous CQL once per seed on ``offrl/pendulum/medium-v0`` (the bundled config sets the
network sizes and evaluation), then prints each run's final normalized score next to the dataset's
behaviour policy. Each run is a folder under ``runs/`` with config.yaml, metrics.csv, checkpoints/,
summary.json and report.html; ``offrl report runs/`` compares them.
"""

from __future__ import annotations

import argparse

import offrl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="offrl/pendulum/medium-v0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=None, help="default: the bundled config's")
    parser.add_argument("--out", default="runs")
    args = parser.parse_args()

    for seed in args.seeds:
        run = offrl.train(dataset=args.dataset, algo="cql", seed=seed, steps=args.steps, out=args.out,
                          name=f"example-seed{seed}", progress=False)
        summary = run.summary
        final = summary["final"] or {}
        behaviour = summary["dataset"]["mean_return"]
        print(f"seed {seed}: final return {final.get('return_mean'):.1f} "
              f"(normalized {final.get('normalized_score'):.1f}); dataset mean return {behaviour:.1f}; {run.dir}")
        # The tidy metrics are a pandas DataFrame: the learning curve is two columns away.
        curve = run.metrics.dropna(subset=["eval_return_mean"])[["step", "eval_return_mean"]]
        print(curve.to_string(index=False))


if __name__ == "__main__":
    main()
