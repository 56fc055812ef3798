"""``offrl train``: train CQL / discrete CQL / DQN on a dataset (a thin layer over :func:`offrl.train`)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from offrl.cli.format import critic_line, longer_run_hint, non_negative_int, positive_int, score_line
from offrl.config.algos import DEFAULT_SOURCES
from offrl.config.schema import EvalConfig, TrainerConfig
from offrl.data.references import ENV_REFERENCES

__all__ = ["register"]

EPILOG = """\
examples:
  offrl train --dataset offrl/pendulum/medium-v0
  offrl train --dataset offrl/cartpole/medium-v0 --algo dqn --steps 20000 --seed 1
  offrl train --dataset offrl/pendulum/medium-v0 --seeds 5        (5 seeds in parallel, mean and 95% CI)
  offrl train --dataset offrl/cartpole/medium-v0 --seeds 8 --vectorize   (8 seeds as batched models, one per core)
  offrl train --dataset d4rl-hopper.hdf5 --set cql.min_q_weight=5 --set eval.seed=100
  offrl train --config runs/<dataset>/<algo>/<name>/config.yaml --name repro   (reproduce a run)
  offrl train --resume runs/<dataset>/<algo>/<name>                            (continue a stopped run)
  offrl train --dataset offrl/pendulum/medium-v0 --online-steps 2000 --calql --utd 50   (fine-tune online)
  offrl train --env Pendulum-v1 --algo cql --online-steps 4000 --utd 50                 (online from scratch)
  offrl train --env mpe2/simple_spread-n2 --algo qmix --online-steps 20000               (multi-agent, online)

Evaluation env and reference scores:
  the policy is evaluated in the env the dataset names (bundled, Minari and D4RL data do); for a file
  that names none, or to evaluate elsewhere: --env ENV_ID (or --set dataset.env_id=ENV_ID).
  normalized score = 100 * (R - ref_min) / (ref_max - ref_min), references from the dataset's metadata,
  else D4RL's table (by dataset name); give your own with
    --set dataset.ref_min_score=R_MIN --set dataset.ref_max_score=R_MAX
  offrl knows references for {known}, and D4RL's for Hopper,
  HalfCheetah, Walker2d and Ant; a run without references whose env is one of these says how to use them.
  Each evaluation: eval.episodes episodes (--eval-episodes), episode i seeded eval.seed + i; the run's last
  one uses eval.final_episodes (default {final}) and the score line gives a 95% interval over them.

Config keys (for --set and --config): see a run's config.yaml; the algorithm's hyperparameters are under
cql., discrete_cql., dqn. or mixing. (qmix, vdn, iql). Layers, later wins: defaults < bundled per-dataset config <
--config < flags < --set (the defaults shown are offrl's; a bundled per-dataset config may set its own). A run's
config.yaml lists under config_origins which layer set which keys. Where offrl's defaults come from (per key:
comments in offrl/config/algos.py; cql.actor_bc_weight is chosen from the data, docs/cql.md):
{sources}
Ctrl-C (or SIGTERM) stops cleanly after a checkpoint; a second Ctrl-C aborts; both exit 130.
"""


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train CQL / discrete CQL / DQN on a dataset into a run folder",
        description="Train an offline RL agent on a dataset. Writes runs/<dataset>/<algo>/<name>/ with\n"
        "config.yaml, metrics.csv, checkpoints/, summary.json and report.html, then prints the final score.",
        epilog=EPILOG.format(final=EvalConfig.final_episodes, sources="\n".join(
                                 textwrap.fill(f"{algo}: {text}", 116, initial_indent="  ", subsequent_indent="    ")
                                 for algo, text in DEFAULT_SOURCES.items()),
                             known=" and ".join(f"{e} ({lo:g}, {hi:g})" for e, (lo, hi) in ENV_REFERENCES.items())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", metavar="PATH_OR_ID",
                   help="bundled id (offrl/pendulum/medium-v0), Minari id or folder, or a D4RL-style HDF5 file")
    p.add_argument("--algo", choices=("auto", "cql", "discrete-cql", "dqn", "qmix", "vdn", "iql"), default=None,
                   help="algorithm; auto (default) = cql for continuous actions, discrete-cql for discrete, qmix "
                        "for multi-agent data or envs (qmix, vdn, iql: docs/multiagent.md)")
    p.add_argument("--steps", type=positive_int, metavar="N",
                   help=f"gradient steps (config key offline_steps; default {TrainerConfig.offline_steps})")
    p.add_argument("--batch-size", type=positive_int, metavar="B",
                   help=f"transitions per gradient step (default {TrainerConfig.batch_size})")
    p.add_argument("--seed", type=int, metavar="S",
                   help=f"seed of torch, numpy, random and the sampler (default {TrainerConfig.seed})")
    p.add_argument("--device", metavar="auto|cpu|cuda", help="where to train (default auto: cuda if available)")
    p.add_argument("--eval-every", type=non_negative_int, metavar="N",
                   help="evaluate in the dataset's env (or --env) every N steps and at the end (0: never; "
                        f"config eval.interval, default {EvalConfig.interval})")
    p.add_argument("--eval-episodes", type=positive_int, metavar="K",
                   help=f"episodes per evaluation (eval.episodes, default {EvalConfig.episodes}; the last "
                        f"evaluation: eval.final_episodes, default {EvalConfig.final_episodes})")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config keys (a run's config.yaml works)")
    p.add_argument("--set", dest="dotlist", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, type-checked (repeatable), e.g. --set cql.min_q_weight=5")
    p.add_argument("--out", metavar="DIR", help="runs folder (default $OFFRL_RUNS or ./runs)")
    p.add_argument("--name", metavar="NAME", help="run name (default seed<S>-<UTC timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", nargs="+",
                   help="continue a run from its latest checkpoint (same config; see --force); several run folders "
                        "of a --vectorize group continue together with --vectorize")
    p.add_argument("--force", action="store_true",
                   help="with --resume: accept a changed config (e.g. more --steps) or changed dataset")
    p.add_argument("--logger", choices=("csv", "tensorboard", "wandb"), default=None,
                   help="also log to TensorBoard or W&B (offline); metrics.csv is always written (default: csv only)")
    p.add_argument("--select", choices=("fqe",), default=None,
                   help="after training, pick a checkpoint from the data alone: fqe ranks the kept checkpoints "
                        "by FQE on the held-out episodes; summary.json records it as 'selected' (see offrl ope; "
                        "default: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: a bar on stderr)")
    p.add_argument("--cache-dir", metavar="DIR", help="converted-dataset cache (default $OFFRL_CACHE or ~/.cache/offrl)")
    g = p.add_argument_group("online fine-tuning (after the offline steps; see offrl.online)")
    g.add_argument("--online-steps", type=non_negative_int, metavar="M",
                   help="env steps to collect online in the dataset's env (config online.steps; default 0)")
    g.add_argument("--env", dest="online_env", metavar="ID",
                   help="with --dataset: the env to evaluate in and to fine-tune online in (default: the dataset's own, when it names one); without --dataset: train online from scratch in it")
    g.add_argument("--frames-per-batch", type=positive_int, metavar="F",
                   help="env steps per collected batch (online.frames_per_batch, default 50)")
    g.add_argument("--utd", type=positive_int, metavar="U",
                   help="gradient steps per collected batch (optim_steps_per_batch, default "
                        f"{TrainerConfig.optim_steps_per_batch}; update-to-data ratio U/F)")
    g.add_argument("--calql", action="store_true", default=None,
                   help="Cal-QL: calibrate CQL's penalty by the Monte-Carlo return (online.calql)")
    g.add_argument("--async-collection", action="store_true", default=None,
                   help="collect in worker processes while updating (async_collection; not bit-reproducible)")
    s = p.add_argument_group("several seeds (one run folder each, in parallel processes or, with --vectorize, as "
                             "batched models; then one report)")
    s.add_argument("--seeds", type=_seed_list, metavar="N|S1,S2,...",
                   help="train seeds 0..N-1 (or the listed seeds; one seed as a list: 5,), each as its own run; "
                        "prints each score and the "
                        "mean with a Student-t 95%% CI, and writes <tag>-report/index.html beside the runs")
    s.add_argument("--jobs", type=positive_int, metavar="J",
                   help="with --seeds: runs at a time (default: one per CPU core); with --vectorize: batched models "
                        "in parallel processes, the seeds split among them (default: one per CPU core, one on a "
                        "GPU); the cores are shared out as torch threads (config num_threads) unless the config "
                        "sets num_threads")
    s.add_argument("--vectorize", action="store_true",
                   help="with --seeds: train the seeds as batched models (CQL, discrete CQL and DQN, offline; --jobs of "
                        "them, each in its own process): each seed keeps its own initialisation, sampler and "
                        "action-sampling streams, optimizer state, target network and run folder; 1.9-3.4x the "
                        "updates/s of separate processes for small networks on 2 CPU cores, none for CQL's 2x256 "
                        "(docs/seeds.md); with --resume RUN_DIR ...: continue such seeds together")
    s.add_argument("--seed-group", metavar="STAMP", help=argparse.SUPPRESS)  # set by --vectorize for its children
    p.set_defaults(func=run, train_parser=p)


def _seed_list(text: str) -> list[int]:
    from offrl.cli.seeds import seed_list

    return seed_list(text)


def _config_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that set config keys, as :func:`offrl.train` keywords."""
    return dict(
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        logger=args.logger,
        progress=False if args.no_progress else None,
        cache_dir=args.cache_dir,
        online_steps=args.online_steps,
        online_env=args.online_env,
        frames_per_batch=args.frames_per_batch,
        utd=args.utd,
        calql=args.calql,
        async_collection=args.async_collection,
    )


def run(args: argparse.Namespace) -> int:
    """Call :func:`offrl.train` with the parsed flags and print where the run went and its score."""
    from offrl.runs import train

    if args.dataset is None and args.config is None and args.resume is None and args.online_env is None:
        from offrl.errors import UserError

        raise UserError("--dataset: required (e.g. --dataset offrl/pendulum/medium-v0), or --config / --resume, "
                        "or --env ID --online-steps N to train online from scratch")
    if args.force and args.resume is None:
        from offrl.errors import UserError

        raise UserError("--force: only with --resume (it accepts a changed config when continuing a run); drop it")
    if args.vectorize or (args.resume is not None and len(args.resume) > 1):
        from offrl.cli.seeds import run_vectorized

        return run_vectorized(args, _config_kwargs(args))
    if args.seeds is not None:
        from offrl.cli.seeds import run_seeds

        return run_seeds(args, _config_kwargs(args))
    if args.jobs is not None:
        from offrl.errors import UserError

        raise UserError("--jobs: only with --seeds (runs at a time)")

    from offrl.runs.rundir import read_config_notes

    def started(path: Path) -> None:
        verb = "resuming" if args.resume else "training"
        print(f"offrl: {verb} in {path}", file=sys.stderr, flush=True)
        for note in read_config_notes(path):
            print(f"offrl: {note}", file=sys.stderr, flush=True)

    result = train(
        args.dataset,
        args.algo,
        config=args.config,
        dotlist=args.dotlist,
        out=args.out,
        name=args.name,
        resume=args.resume[0] if args.resume else None,
        force=args.force,
        command=["offrl", *sys.argv[1:]],
        on_start=started,
        select=args.select,
        **_config_kwargs(args),
    )
    summary = result.summary
    print(f"run: {result.dir}")
    critic = critic_line(summary)
    if critic:
        print(critic)
    print(score_line(summary, eval_interval=(result.config.get("eval") or {}).get("interval")))
    hint = longer_run_hint(summary, result.dir)
    if hint:
        print(hint, file=sys.stderr)
    known = (summary.get("ref") or {}).get("known")
    if known and (summary.get("ref") or {}).get("min") is None:
        print(f"offrl: note: no reference scores, so no normalized score; {known}", file=sys.stderr)
    reason = str(summary.get("stop_reason") or "")
    if reason.startswith("env error"):
        return 2  # the online env failed: said once on stderr, checkpointed; --resume after fixing it
    if summary.get("status") == "stopped" and reason in ("SIGINT", "SIGTERM"):
        # A signal stopped the run after a checkpoint: exit 130 so `offrl train ... && next` does not go on.
        last_eval = (summary.get("final") or {}).get("step")
        evaluated = f"last evaluation at step {last_eval}" if last_eval is not None else "no evaluation yet"
        print(f"offrl: stopped by {reason} at step {summary.get('steps')} ({evaluated}), checkpoint saved; "
              f"continue with: offrl train --resume {result.dir}", file=sys.stderr)
        return 130
    return 0 if summary.get("status") in ("completed", "stopped") else 1
