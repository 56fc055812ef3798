"""``offrl sweep``: datasets × algorithms × a grid of config values × seeds, every trial an ordinary
``offrl train`` run folder, on Ray Tune (``offrl[ray]``) or, without Ray, on this machine's process pool;
then one report over the sweep with a chosen config per dataset. See docs/sweeps.md."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any

from offrl.cli.format import fmt
from offrl.cli.sweep_spec import (
    SweepOptions,
    SweepSpec,
    check_spec,
    grid_item,
    load_sweep_file,
    plan_trials,
    spec_from_flags,
    sweep_dir,
    threads_per_run,
    trial_states,
    write_spec,
)
from offrl.errors import UserError

__all__ = ["register"]

EPILOG = """\
examples:
  offrl sweep --dataset offrl/pendulum/medium-v0 --dataset offrl/cartpole/medium-v0 --seeds 5
  offrl sweep --dataset offrl/pendulum/medium-v0 --algo cql --seeds 3 --grid cql.min_q_weight=1,5,10
  offrl sweep sweep.yaml --address ray-head:6379 --cpus-per-run 2 --gpus-per-run 0.25
  offrl sweep sweep.yaml --engine local --max-concurrent 2          (no Ray: this machine's process pool)

Every trial is a run folder <sweep>/runs/<dataset>/<algo>/<grid values>-seed<S> (offrl report, offrl eval and
offrl train --resume work on each). Running the same command again skips finished trials and resumes stopped
ones. Ctrl-C stops every trial after a checkpoint; a second Ctrl-C aborts. The report goes to
<sweep>/report/index.html. On a multi-node cluster, --out (and dataset files) must be on storage every node
mounts at the same path.
"""


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _seeds(text: str) -> list[int]:
    from offrl.cli.seeds import seed_list

    return seed_list(text)


def register(subparsers: Any) -> None:
    """Add the ``sweep`` subcommand."""
    p = subparsers.add_parser(
        "sweep", help="train datasets × algorithms × config grid × seeds (on Ray, or locally) and report them",
        description="Run a sweep: every dataset × algorithm × grid point × seed is one offrl train run folder under "
        "the sweep folder; then one report with mean / IQM / 95% CI over seeds and a chosen config per dataset.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", metavar="SWEEP.yaml",
                   help="a sweep file (datasets:, algos:, seeds:, grid:, set:, ...); flags given too win")
    p.add_argument("--dataset", action="append", default=[], metavar="PATH_OR_ID", help="a dataset (repeatable)")
    p.add_argument("--algo", action="append", default=[], choices=("auto", "cql", "discrete-cql", "dqn"),
                   help="an algorithm (repeatable; default auto)")
    p.add_argument("--seeds", type=_seeds, metavar="N|S1,S2,...", help="seeds 0..N-1 or the listed seeds (default 0)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a config key and its values (repeatable: the grid is their product), e.g. "
                        "--grid cql.min_q_weight=1,5,10; a key under cql./discrete_cql./dqn. applies to that algorithm")
    p.add_argument("--set", dest="dotlist", action="append", default=[], metavar="KEY=VALUE",
                   help="a config key for every trial (repeatable)")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config keys for every trial")
    p.add_argument("--steps", type=_int, metavar="N", help="gradient steps per trial")
    p.add_argument("--batch-size", type=_int, metavar="B", help="transitions per gradient step")
    p.add_argument("--eval-every", type=_int, metavar="N", help="evaluate every N steps and at the end")
    p.add_argument("--eval-episodes", type=_int, metavar="K", help="episodes per evaluation")
    p.add_argument("--cache-dir", metavar="DIR", help="converted-dataset cache on each node (default $OFFRL_CACHE)")
    p.add_argument("--out", metavar="DIR", help="the sweep folder (default <runs>/sweeps/<--name>)")
    p.add_argument("--name", metavar="NAME", help="the sweep's name (default sweep-<digest of the spec>)")
    r = p.add_argument_group("where and how the trials run")
    r.add_argument("--engine", choices=("auto", "ray", "local"), default=None,
                   help="ray, or local (this machine's process pool); auto (default): ray when installed")
    r.add_argument("--address", metavar="HOST:PORT",
                   help="a running Ray cluster (default $RAY_ADDRESS, else a local Ray started for the sweep)")
    r.add_argument("--cpus-per-run", type=_float, metavar="C", help="CPUs per trial (default 1; torch threads)")
    r.add_argument("--gpus-per-run", type=_float, metavar="G", help="GPUs per trial on Ray, fractions share one")
    r.add_argument("--max-concurrent", type=_int, metavar="M", help="trials at a time at most (default: as resources allow)")
    r.add_argument("--retries", type=_int, metavar="R",
                   help="retries of a trial whose worker dies, each resuming its checkpoint (default 3)")
    p.set_defaults(func=run)


def _inputs(args: argparse.Namespace) -> tuple[SweepSpec, SweepOptions]:
    spec, given = load_sweep_file(args.file) if args.file else (SweepSpec(), {})
    grid = dict(grid_item(item) for item in args.grid)
    if len(grid) != len(args.grid):
        raise UserError("--grid: a key is given twice; list all its values in one --grid KEY=V1,V2")
    spec = spec_from_flags(spec, {"datasets": args.dataset, "algos": args.algo, "seeds": args.seeds, "grid": grid,
                                  "set": args.dotlist, "config": args.config, "steps": args.steps,
                                  "batch_size": args.batch_size, "eval_every": args.eval_every,
                                  "eval_episodes": args.eval_episodes})
    if spec.config is not None:
        spec.config = str(Path(spec.config).absolute())
        if not Path(spec.config).is_file():
            raise UserError(f"--config {spec.config}: no such file")
    for key, value in (("name", args.name), ("out", args.out), ("cpus_per_run", args.cpus_per_run),
                       ("gpus_per_run", args.gpus_per_run), ("max_concurrent", args.max_concurrent),
                       ("retries", args.retries), ("address", args.address), ("engine", args.engine),
                       ("cache_dir", args.cache_dir)):
        if value is not None:
            given[key] = value
    return spec, SweepOptions(**given)


def _engine(options: SweepOptions) -> str:
    has_ray = importlib.util.find_spec("ray") is not None
    if options.engine == "ray" or (options.engine == "auto" and options.address):
        if not has_ray:
            raise UserError("--engine ray: Ray is not installed; pip install 'offrl[ray]'")
        return "ray"
    if options.engine == "local" or not has_ray:
        if options.address:
            raise UserError(f"--address {options.address}: only with the Ray engine; drop --engine local")
        if options.gpus_per_run:
            raise UserError(f"--gpus-per-run {options.gpus_per_run:g}: only with the Ray engine (the local pool "
                            "trains every trial on this machine's device); pip install 'offrl[ray]'")
        return "local"
    return "ray"


def run(args: argparse.Namespace) -> int:
    from offrl.cli.sweep_run import ABORT_FILE, STOP_FILE, Progress, run_local
    from offrl.runs.rundir import check_writable

    spec, options = _inputs(args)
    check_spec(spec, options)
    engine = _engine(options)
    root = sweep_dir(spec, options)
    check_writable(root)
    trials = plan_trials(spec, options, root)  # every bad input fails here, before any trial starts
    write_spec(root, spec, options)
    for stale in (STOP_FILE, ABORT_FILE):
        (root / stale).unlink(missing_ok=True)
    states = trial_states(trials)
    todo = states["resume"] + states["new"]
    threads = threads_per_run(spec, options)
    sweep = {"root": str(root), "config": spec.config, "steps": spec.steps,
             "batch_size": spec.batch_size, "eval_every": spec.eval_every, "eval_episodes": spec.eval_episodes,
             "cache_dir": options.cache_dir,
             "env": {"OMP_NUM_THREADS": threads[0].split("=")[1], "MKL_NUM_THREADS": threads[0].split("=")[1]}
             if threads else {}}
    points = math.prod(len(v) for v in spec.grid.values()) if spec.grid else 1
    print(f"offrl: sweep {root}: {len(trials)} trials ({len(spec.datasets)} dataset(s) × {len(spec.algos)} algo(s) "
          f"× up to {points} grid point(s) × {len(spec.seeds)} seed(s)); {len(states['finished'])} finished "
          f"(skipped), {len(states['resume'])} to resume, {len(states['new'])} new", flush=True)
    progress = Progress(len(trials), done=len(states["finished"]))
    started_ray = False
    if todo and engine == "ray":
        from offrl.cli.sweep_ray import connect, run_ray

        started_ray, where = connect(options)
        print(f"offrl: running on {where}; {options.cpus_per_run:g} CPU(s)"
              f"{f', {options.gpus_per_run:g} GPU(s)' if options.gpus_per_run else ''} per trial"
              f"{f', at most {options.max_concurrent} at a time' if options.max_concurrent else ''}", flush=True)
        try:
            run_ray(todo, sweep, progress, options)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    elif todo:
        jobs = options.max_concurrent or max(1, (os.cpu_count() or 1) // max(1, math.ceil(options.cpus_per_run)))
        if importlib.util.find_spec("ray") is None:
            print("offrl: Ray is not installed (pip install 'offrl[ray]'): running on this machine's process pool",
                  flush=True)
        print(f"offrl: running {min(jobs, len(todo))} trial(s) at a time on this machine", flush=True)
        run_local([t.to_dict() for t in todo], [t.label for t in todo], sweep, progress, jobs, threading.Event(),
                  options.retries)
    if progress.errors:
        raise UserError(progress.errors[0])
    if progress.stopped:
        print(f"{progress.bar()}  {progress.stopped} stopped", flush=True)
        print(f"offrl: stopped: {progress.stopped} trial(s) stopped after a checkpoint or not started; run the same "
              "command again to resume them", file=sys.stderr)
        return 130
    return _report(root, trials, progress)


def _report(root: Path, trials: list, progress: Any) -> int:
    from offrl.report import build_report
    from offrl.runs.rundir import is_run_dir, read_summary

    runs = [Path(t.run_dir) for t in trials if is_run_dir(t.run_dir)]
    completed = [r for r in runs if read_summary(r).get("status") == "completed"]
    print(progress.bar(), flush=True)
    if not runs:
        return 1
    report = build_report(runs, root / "report", title=f"offrl sweep · {root.name}", choose=True)
    for warning in report.warnings:
        print(f"offrl: warning: {warning}", file=sys.stderr)
    for _, row in report.chosen.iterrows():
        print(f"chosen config, {row['dataset']}: {row['group']}: last {row['unit_label']} {fmt(row['last_mean'])} "
              f"[{fmt(row['last_low'])}, {fmt(row['last_high'])}] (mean [95% CI] over {row['n_seeds']} seeds), "
              f"IQM {fmt(row['last_iqm'])}")
    if len(report.chosen):
        print("offrl: note: the chosen config is picked on the evaluation return: selection on the test set, so "
              "its score is optimistic; confirm it on fresh seeds before reporting it")
    print(f"report: {report.html}")
    return 0 if len(completed) == len(trials) else 1
