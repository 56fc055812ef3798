"""``offrl eval``: evaluate a trained policy from a run directory or checkpoint (a thin layer over
:func:`offrl.runs.policy.evaluate_checkpoint`)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

__all__ = ["register"]

EPILOG = """\
examples:
  offrl eval runs/offrl__pendulum__medium-v0/cql/seed0-20260101-120000
  offrl eval runs/.../checkpoints/step_50000.pt --episodes 50 --seed 1000 --json
  offrl eval RUN_DIR --env Pendulum-v1           (another env with the same spaces)
  offrl eval runs/env__Pendulum-v1/cql/<name>    (a run trained online from scratch: evaluated in its env)
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: Any) -> None:
    """Add the ``eval`` subcommand."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a trained policy (run directory or checkpoint) in its environment",
        description="Run K deterministic episodes of a saved policy, episode i seeded S+i, each to its own "
        "end, and print returns, lengths and the normalized score with the source of its references.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT", help="a run directory (uses checkpoints/latest.pt) or a checkpoint")
    p.add_argument("--episodes", type=_positive_int, default=10, metavar="K", help="episodes (default 10)")
    p.add_argument("--env", default=None, metavar="ID",
                   help="environment id (default: the dataset's, or the env a from-scratch run trained in)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the first episode (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from offrl.cli.format import ci_text
    from offrl.runs.policy import evaluate_checkpoint

    result, loaded = evaluate_checkpoint(args.target, episodes=args.episodes, seed=args.seed, env=args.env,
                                         device=args.device)
    payload = {"run_dir": str(loaded.run_dir), "checkpoint": str(loaded.checkpoint), "step": loaded.step,
               "dataset": loaded.name, **result.to_dict()}
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    print(f"{loaded.name} · {loaded.config.algo} · step {loaded.step} · {result.env_id} · "
          f"{len(result.returns)} episodes (seeds {result.seeds[0]}..{result.seeds[-1]})")
    n = len(result.returns)
    print(f"return: {result.mean:.1f}{ci_text(result.return_ci, n)} over {n} episode{'s' if n != 1 else ''} "
          f"(std {result.std:.1f}, length {result.lengths.mean():.0f}; brackets: 95% CI of the mean)")
    if math.isfinite(result.normalized_mean):
        print(f"normalized score: {result.normalized_mean:.1f}{ci_text(result.normalized_ci, n)} "
              f"(std {result.normalized_std:.1f}; references {result.ref.min:g}..{result.ref.max:g} from "
              f"{result.ref_source})")
    else:
        print("normalized score: n/a (no reference scores for this "
              f"{'dataset' if loaded.dataset is not None else 'run: trained online from scratch'})")
    return 0
