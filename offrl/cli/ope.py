"""``offrl ope``: estimate a run's policy value from its data alone (Fitted Q Evaluation with a bootstrap
95% CI), and rank its checkpoints (a thin layer over :func:`offrl.runs.ope.ope_run`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from offrl.cli.format import fmt, non_negative_int

__all__ = ["register"]

EPILOG = """\
examples:
  offrl ope runs/offrl__pendulum__medium-v0/cql/seed0-20260101-120000
  offrl ope RUN_DIR --checkpoint all          (rank the kept checkpoints, best first)
  offrl ope RUN_DIR --checkpoint 50000 --json
  offrl ope RUN_DIR --on all                  (every episode, including the ones the policy trained on)

The value is the policy's discounted return (the run's gamma) from the data's initial states; the CI
resamples whole episodes (the FQE network's last layer refit per resample). FQE extrapolates where the policy leaves the data:
see docs/ope.md for where it was measured to be trustworthy and where not.
"""


def register(subparsers: Any) -> None:
    """Add the ``ope`` subcommand."""
    p = subparsers.add_parser(
        "ope",
        help="off-policy evaluation of a run's checkpoints from its data (FQE with a bootstrap 95%% CI)",
        description="Fitted Q Evaluation of a run's deterministic policy on the run's held-out episodes: the "
        "estimated discounted return and normalized score with a bootstrap 95% CI over episodes, and the "
        "fit's diagnostics (TD error, divergence). No env needed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by offrl train")
    p.add_argument("--checkpoint", default="latest", metavar="latest|all|STEP",
                   help="which checkpoint: latest (default), all kept step_<N>.pt (ranked), or one step")
    p.add_argument("--on", default="heldout", choices=("heldout", "all"),
                   help="data: the run's held-out episodes (default) or all episodes")
    p.add_argument("--bootstrap", type=non_negative_int, default=20, metavar="B",
                   help="bootstrap resamples of the episodes for the CI (default 20; 0: no CI)")
    p.add_argument("--steps", type=int, default=3000, metavar="N",
                   help="gradient steps of the FQE network (default 3000: 300 Bellman backups)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the network, its minibatches and the resamples (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from offrl.runs.ope import ope_run

    report = ope_run(args.run_dir, checkpoint=args.checkpoint, on=args.on, bootstrap=args.bootstrap,
                     seed=args.seed, steps=args.steps)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    first = report["results"][0]
    print(f"FQE on {report['data']}; gamma {first['gamma']:g}, {first['transitions']} transitions, "
          f"{first['bootstrap_fits']} bootstrap fits")
    for r in report["results"]:
        flag = f"  DIVERGED: {r['diverged_reason']}" if r["diverged"] else ""
        print(f"step {r['step']}: value {fmt(r['value'], '.2f')} [95% CI {fmt(r['ci_low'], '.2f')}, "
              f"{fmt(r['ci_high'], '.2f')}], normalized {fmt(r['normalized'])} "
              f"[{fmt(r['normalized_ci_low'])}, {fmt(r['normalized_ci_high'])}]; TD error "
              f"{fmt(r['td_error'], '.3g')} ({fmt(r['td_error_relative'], '.2f')} of the targets' variance), "
              f"last-layer spectral radius {fmt(r['spectral_radius'], '.3f')}, "
              f"{100 * (r['clipped_fraction'] or 0):.1f}% of targets clipped{flag}")
    if len(report["results"]) > 1:
        print("ranking (best first, diverged fits left out): " + ", ".join(str(s) for s in report["ranking"]))
    return 0
