"""``offrl train --seeds``: the same run for several seeds in parallel processes, then one report.

Each seed is an ordinary ``offrl train ... --seed S`` child process (its own run folder, written
atomically as always), ``--jobs`` of them at a time with the CPU cores shared out as torch threads
(``num_threads``). The parent checks the inputs once before any child starts (a bad input is one line,
exit 2, nothing written), prints a line as each running seed passes 25%, 50% and 75% of its steps and its
score line as it finishes, then writes one report over the seeds (mean, IQM, Student-t 95% CI) and
prints the aggregate.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offrl.cli.children import MILESTONES, ChildProcess, sigterm_as_interrupt, start_child
from offrl.cli.format import fmt, trend_text
from offrl.errors import UserError

__all__ = ["run_seeds", "run_vectorized", "seed_groups", "seed_list", "threads_per_job"]

# Options that --seeds sets itself for each child, or that make no sense with it.
_NOT_FORWARDED = {"help", "seeds", "jobs", "seed", "name", "no_progress", "func", "train_parser", "vectorize",
                  "seed_group"}


def seed_list(text: str) -> list[int]:
    """argparse type of ``--seeds``: ``N`` (seeds 0..N-1) or a comma-separated list ``0,3,7`` (one seed as a
    list: ``5,``)."""
    parts = [p.strip() for p in text.removesuffix(",").split(",")] if "," in text else None
    try:
        seeds = [int(p) for p in parts] if parts is not None else list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count (3) or a list of seeds (0,3,7), got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"needs at least one seed, got {text!r}")
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be 0 or positive, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is listed twice in {text!r}")
    return seeds


def _forwarded(args: argparse.Namespace, parser: argparse.ArgumentParser, exclude: set[str] = frozenset()) -> list[str]:
    """The command line of ``args`` (every option the user gave) minus the options --seeds sets itself."""
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in _NOT_FORWARDED or action.dest in exclude:
            continue
        value = getattr(args, action.dest, None)
        if value is None or value == action.default:
            continue
        option = max(action.option_strings, key=len)
        if action.nargs == 0:  # a flag
            argv.append(option)
        elif isinstance(value, list):
            for item in value:
                argv += [option, str(item)]
        else:
            argv += [option, str(value)]
    return argv


def _validate(args: argparse.Namespace, kwargs: dict[str, Any], seeds: list[int]) -> Any:
    """Compose the config once (this loads and caches the dataset), so a bad input fails here, before any
    child starts; returns the config, or None where each child must check its own inputs (no --dataset)."""
    if args.dataset is None:
        return None
    from offrl.runs.compose import compose_run_config
    from offrl.runs.rundir import check_writable, run_dir_path, runs_root

    check_writable(runs_root(args.out))
    cfg, data = compose_run_config(args.dataset, args.algo, config=args.config, dotlist=args.dotlist, **kwargs)
    if args.name is not None:  # default names carry a timestamp; a given --name must not collide
        for seed in seeds:
            path = run_dir_path(args.out, data.name, cfg.algo, _name(args, seed, ""))
            if path.exists():
                raise UserError(f"--name {args.name}: run folder {path} already exists; pick another --name")
    return cfg


def _threads_set(args: argparse.Namespace, cfg: Any) -> bool:
    """Whether the user's config (composed, or else its --set / --config file) fixes num_threads."""
    if cfg is not None:
        return cfg.num_threads is not None
    if any(item.split("=", 1)[0].strip() == "num_threads" for item in args.dotlist):
        return True
    if args.config is not None:
        from omegaconf import OmegaConf

        try:
            return OmegaConf.load(args.config).get("num_threads") is not None
        except Exception:  # noqa: BLE001 - an unreadable file: the child says so in its one line
            return False
    return False


def threads_per_job(jobs: int) -> int:
    """Torch threads of each of ``jobs`` processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _child_command(args: argparse.Namespace, jobs: int, user_threads: bool,
                   exclude: set[str] = frozenset()) -> tuple[list[str], dict[str, str], str]:
    """The ``offrl train`` command line every child shares (the user's options, no progress bar), its
    environment, and how its threads are set: the cores shared out among ``jobs`` children, unless the
    user's config fixes ``num_threads``."""
    threads = threads_per_job(jobs)
    # The thread count goes first: a user's own --set, later on the line, would win (later --set wins).
    base = [sys.executable, "-m", "offrl", "train", *([] if user_threads else ["--set", f"num_threads={threads}"]),
            *_forwarded(args, args.train_parser, exclude), "--no-progress"]
    env = dict(os.environ)
    if not user_threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return base, env, "num_threads as configured" if user_threads else f"{threads} torch thread(s) each"


def _name(args: argparse.Namespace, seed: int, stamp: str) -> str:
    return f"{args.name}-seed{seed}" if args.name else f"seed{seed}-{stamp}"


def run_seeds(args: argparse.Namespace, kwargs: dict[str, Any]) -> int:
    """Run every seed of ``args.seeds`` as its own ``offrl train`` process; print each score and the aggregate."""
    seeds: list[int] = args.seeds
    if args.seed is not None:
        raise UserError(f"--seed {args.seed}: give the seeds to --seeds instead (e.g. --seeds 0,1,2)")
    if args.resume is not None:
        raise UserError("--seeds: cannot resume several runs at once; --resume each run folder on its own")
    jobs = min(args.jobs or os.cpu_count() or 1, len(seeds))
    cfg = _validate(args, kwargs, seeds)
    base, env, threads_said = _child_command(args, jobs, _threads_set(args, cfg))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    print(f"offrl: {len(seeds)} seeds ({', '.join(map(str, seeds))}), {jobs} at a time, {threads_said}", flush=True)

    def finished(child: ChildProcess, code: int) -> None:
        if code == 0:
            print(f"seed {child.label}: {child.value('run: ')}\n  {child.lines[-1] if child.lines else ''}", flush=True)
        elif code == 130:
            run = child.value("run: ")
            print(f"seed {child.label}: {run}\n  stopped, checkpoint saved: offrl train --resume {run}", flush=True)

    units = [(seed, [*base, "--seed", str(seed), "--name", _name(args, seed, stamp)]) for seed in seeds]
    done, interrupts = _supervise(units, jobs, env, finished)
    runs = [Path(c.value("run: ")) for c, code in done if code == 0 and c.value("run: ")]
    if interrupts:
        return 130
    if runs:
        _aggregate(args, runs, stamp, len(seeds))
    return 0 if len(runs) == len(seeds) else 1


def _supervise(units: list[tuple[Any, list[str]]], jobs: int, env: dict[str, str],
               finished: Callable[[ChildProcess, int], None], title: Callable[[Any], str] | None = None,
               ) -> tuple[list[tuple[ChildProcess, int]], int]:
    """Run ``offrl`` child processes (``(label, argv)``), ``jobs`` at a time; print their progress twice a second
    and call ``finished(child, exit code)`` as each ends. A Ctrl-C (or SIGTERM) passes one SIGINT to each running
    child (each stops after a checkpoint) and starts no more. A child's bad input (exit 2) stops the others and
    is raised as the parent's own one-line error. Returns the ended children with their codes, and the number of
    interrupts."""
    pending, running, done = list(units), [], []
    failed: ChildProcess | None = None
    interrupts = 0
    next_look = time.monotonic() + 1.0
    restore = sigterm_as_interrupt()
    try:
        while pending or running:
            try:
                while pending and len(running) < jobs:
                    label, argv = pending.pop(0)
                    # Its own session: the terminal's Ctrl-C reaches only this process, which passes exactly
                    # one SIGINT on per Ctrl-C (one: stop after a checkpoint; two: abort, as for one run).
                    child = start_child(label, argv, env, parent_death_signal=signal.SIGTERM)
                    if title is not None:
                        child.title = title(label)
                    running.append(child)
                time.sleep(0.05)
                if time.monotonic() >= next_look:  # progress of the running children, twice a second
                    next_look = time.monotonic() + 0.5
                    for child in running:
                        line = child.progress() if child.proc.poll() is None else None
                        if line:
                            print(line, flush=True)
                for child in [c for c in running if c.proc.poll() is not None]:
                    running.remove(child)
                    code = child.finish()
                    done.append((child, code))
                    if code == 2:  # a bad input fails every child alike: stop the rest, say it once (below)
                        if failed is None:
                            failed = child
                            pending.clear()
                            for other in running:
                                other.proc.terminate()
                    elif code == 0 or (code == 130 and failed is None):  # 130: stopped by a signal, checkpointed
                        finished(child, code)
                    elif code != 130:
                        print(f"offrl: {title(child.label) if title else f'seed {child.label}'} failed (exit {code}): "
                              f"{child.error_line()}", file=sys.stderr, flush=True)
            except KeyboardInterrupt:
                interrupts += 1
                pending.clear()
                for child in running:
                    child.proc.send_signal(signal.SIGINT)
                if interrupts == 1:
                    print("offrl: stopping: each running seed saves a checkpoint (Ctrl-C again to abort); "
                          "continue one with --resume RUN_DIR", file=sys.stderr, flush=True)
    finally:
        restore()
        for child in running:  # only on an unexpected error: do not leave children behind
            child.proc.terminate()
            child.proc.wait()
            child.finish()
    if failed is not None:
        raise UserError(failed.error_line().removeprefix("offrl: error: "))
    return done, interrupts


def run_vectorized(args: argparse.Namespace, kwargs: dict[str, Any]) -> int:
    """``--seeds N --vectorize`` (or ``--vectorize --resume RUN_DIR ...``): the seeds as batched models, one per
    ``--jobs`` process (default: one per CPU core on a CPU, one on a GPU); prints each seed's score line, then
    the aggregate, as --seeds does."""
    if args.resume is not None and not args.vectorize:
        raise UserError("--resume: several run folders continue together only with --vectorize (seeds trained as "
                        "one batched model); otherwise resume each on its own")
    if args.seed is not None:
        raise UserError(f"--seed {args.seed}: give the seeds to --seeds instead (e.g. --seeds 0,1,2)")
    if args.resume is not None:
        given = [f"--{k}" for k in ("dataset", "algo", "config", "name", "out", "seeds")
                 if getattr(args, k) is not None]
        if given:
            raise UserError(f"{given[0]}: not with --vectorize --resume (the runs keep their own); drop it")
        from offrl.runs.vectorized import check_resume_folders

        units: list = check_resume_folders(args.resume)  # every folder checked before any group starts
        cfg, device = None, _resumed_device(units)
    else:
        if args.seeds is None:
            raise UserError("--vectorize: trains several seeds as one batched model; give --seeds N (or --resume "
                            "the run folders of such seeds)")
        units = list(args.seeds)
        cfg = _validate(args, kwargs, units) if args.seed_group is None else None
        if cfg is not None:
            from offrl.runs.vectorized import check_vectorizable

            check_vectorizable(cfg)
        device = args.device or (cfg.device if cfg is not None else None)
    jobs = _vectorized_jobs(args.jobs, len(units), device)
    if jobs == 1:
        return _vectorized_here(args, kwargs)
    return _vectorized_groups(args, cfg, seed_groups(units, jobs))


def _vectorized_jobs(jobs: int | None, n: int, device: str | None) -> int:
    """Processes for ``n`` batched seeds: ``--jobs``, else one on a GPU and one per CPU core on a CPU (small
    networks' batched steps do not use a second core well: two one-thread processes of half the seeds each
    outrun one two-thread process of all of them, docs/seeds.md)."""
    if jobs is not None:
        return min(jobs, n)
    if device not in (None, "auto"):
        on_gpu = str(device).startswith("cuda")
    else:
        import torch

        on_gpu = torch.cuda.is_available()
    return 1 if on_gpu else min(os.cpu_count() or 1, n)


def _resumed_device(runs: list[Path]) -> str | None:
    """The device the first of the runs to resume trained on (its config.yaml), if readable."""
    import yaml

    try:
        cfg = yaml.safe_load((runs[0] / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None  # the child that resumes it says what is wrong, in its one line
    return cfg.get("device") if isinstance(cfg, dict) else None


def seed_groups(items: list, parts: int) -> list[list]:
    """``items`` in ``parts`` consecutive groups whose sizes differ by at most one (the larger first), so
    resuming the same list with the same ``--jobs`` forms the same groups."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def _vectorized_here(args: argparse.Namespace, kwargs: dict[str, Any]) -> int:
    """Every seed of ``args`` as one batched model in this process (offrl.runs.vectorized)."""
    from offrl.cli.format import score_line
    from offrl.runs.vectorized import resume_vectorized, train_vectorized

    grouped = args.seed_group is not None  # a child of _vectorized_groups: the parent reports progress and totals
    milestones = iter(MILESTONES)
    next_milestone = next(milestones)
    stamp = args.seed_group or time.strftime("%Y%m%d-%H%M%S", time.gmtime())

    def started(path: Path) -> None:
        print(f"offrl: {'resuming' if args.resume else 'training'} in {path}", file=sys.stderr, flush=True)

    def progress(step: int, planned: int) -> None:
        nonlocal next_milestone
        if not grouped and next_milestone is not None and planned and step >= next_milestone * planned:
            print(f"seeds {label}: step {step} of {planned} ({100 * step // planned}%)", flush=True)
            while next_milestone is not None and step >= next_milestone * planned:
                next_milestone = next(milestones, None)

    common = dict(dotlist=args.dotlist, command=["offrl", *sys.argv[1:]], on_start=started, on_progress=progress,
                  select=args.select, **{k: v for k, v in kwargs.items() if k != "seed"})
    if args.resume is not None:
        label = f"of {len(args.resume)} runs"
        print(f"offrl: resuming {len(args.resume)} runs as one batched model in this process", flush=True)
        runs = resume_vectorized(args.resume, force=args.force, **common)
    else:
        seeds = args.seeds
        label = ",".join(map(str, seeds))
        print(f"offrl: {len(seeds)} seeds ({', '.join(map(str, seeds))}) as one batched model in this process",
              flush=True)
        runs = train_vectorized(args.dataset, args.algo, seeds=seeds, names=[_name(args, s, stamp) for s in seeds],
                                config=args.config, out=args.out, **common)
    summaries = [run.summary for run in runs]
    stopped = [s for s in summaries if s.get("status") == "stopped"]
    if stopped:
        reason = stopped[0].get("stop_reason") or "a signal"
        print(f"offrl: stopped by {reason} at step {stopped[0].get('steps')}, checkpoints saved; continue with: "
              f"offrl train --vectorize --resume {' '.join(str(r.dir) for r in runs)} (or each run on its own: "
              "offrl train --resume RUN_DIR)", file=sys.stderr)
        return 130
    for run, summary in zip(runs, summaries, strict=True):
        interval = (run.config.get("eval") or {}).get("interval")
        print(f"seed {summary.get('seed')}: {run.dir}\n  {score_line(summary, eval_interval=interval)}", flush=True)
    done = [run.dir for run, summary in zip(runs, summaries, strict=True) if summary.get("status") == "completed"]
    if done and not grouped:
        _aggregate(args, done, stamp, len(runs))
    return 0 if len(done) == len(runs) else 1


def _vectorized_groups(args: argparse.Namespace, cfg: Any, groups: list[list]) -> int:
    """Each group of seeds (or of run folders to resume) as one batched model in its own ``offrl train
    --vectorize --jobs 1`` child, the CPU cores shared out as torch threads; then one report over all."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    user_threads = args.resume is not None or _threads_set(args, cfg)  # resumed runs keep their own
    base, env, threads_said = _child_command(args, len(groups), user_threads, exclude={"resume"})
    base += [*(["--name", args.name] if args.name else []), "--vectorize", "--jobs", "1", "--seed-group", stamp]
    if args.resume is not None:
        units = [(i, [*base, "--resume", *map(str, g)]) for i, g in enumerate(groups)]
        what = f"{sum(map(len, groups))} runs"
    else:
        units = [(i, [*base, "--seeds", ",".join(map(str, g)) + ","]) for i, g in enumerate(groups)]  # a list
        what = f"{sum(map(len, groups))} seeds ({', '.join(str(s) for g in groups for s in g)})"
    sizes = "+".join(str(len(g)) for g in groups)
    print(f"offrl: {what} as {len(groups)} batched models ({sizes}) in parallel processes, {threads_said}",
          flush=True)

    def title(i: int) -> str:
        return f"{'runs' if args.resume else 'seeds'} {','.join(str(x) for x in groups[i])}"

    def finished(child: ChildProcess, code: int) -> None:
        if code == 0:  # its seeds' score lines (the child prints nothing else on stdout with --seed-group)
            for line in child.lines:
                if line.startswith(("seed ", "  ")):
                    print(line, flush=True)

    done, interrupts = _supervise(units, len(groups), env, finished, title=title)
    stopped: list[Path] = []
    completed: list[Path] = []
    for child, code in sorted(done, key=lambda d: d[0].label):
        runs = _group_runs(child)
        if code == 130:
            stopped += runs
        elif code == 0:
            completed += [r for r in runs if _status(r) == "completed"]
    if interrupts or stopped:
        if stopped:
            print(f"offrl: stopped, checkpoints saved; continue with: offrl train --vectorize --resume "
                  f"{' '.join(map(str, stopped))} (or each run on its own: offrl train --resume RUN_DIR)",
                  file=sys.stderr, flush=True)
        return 130
    total = sum(map(len, groups))
    if completed:
        _aggregate(args, completed, stamp, total)
    return 0 if len(completed) == total else 1


def _group_runs(child: ChildProcess) -> list[Path]:
    """The run folders a batched child trained or resumed, in its seeds' order (its stderr names each)."""
    marks = ("offrl: training in ", "offrl: resuming in ")
    return [Path(line.split(" in ", 1)[1].strip()) for line in child.errors if line.startswith(marks)]


def _status(run: Path) -> str | None:
    from offrl.runs.rundir import read_summary

    try:
        return read_summary(run).get("status")
    except UserError:  # a damaged summary: not a completed run
        return None


def _aggregate(args: argparse.Namespace, runs: list[Path], stamp: str, n_seeds: int) -> None:
    from offrl.report import build_report
    from offrl.report.aggregate import NORMALIZED

    tag = args.name or f"seeds-{stamp}"
    out = runs[0].parent / f"{tag}-report"
    report = build_report(runs, out, title=f"offrl · {len(runs)} seeds")
    for warning in report.warnings:
        print(f"offrl: warning: {warning}", file=sys.stderr)
    for _, row in report.summary.iterrows():
        normalized = row["unit"] == NORMALIZED
        unit = "normalized score" if normalized else "return"
        behaviour = row["behaviour_normalized"] if normalized else row["behaviour_return"]
        if not row.get("last_n") or row["last_n"] != row["last_n"]:  # no seed evaluated (--eval-every 0), 0 or NaN
            print(f"{len(runs)} of {n_seeds} seeds, {row['dataset']} {row['group']}: no evaluation (eval.interval is 0: "
                  f"--eval-every N evaluates every N steps); behaviour policy {fmt(behaviour)}")
            continue
        print(f"{len(runs)} of {n_seeds} seeds, {row['dataset']} {row['group']}: last {unit} {_ci(row, 'last')} "
              f"(mean [95% CI over seeds]), IQM {fmt(row['last_iqm'])}; mean of last {int(row['recent_evals'])} "
              f"evaluations {_ci(row, 'recent')}; best {_ci(row, 'best')}; behaviour policy {fmt(behaviour)}")
        trend = trend_text({"change": row["trend_mean"], "ci95": [row["trend_low"], row["trend_high"]],
                            "reading": row["trend_reading"], "unit": "normalized_score" if normalized else "return_mean"})
        if trend:
            print(f"  {trend} (mean over seeds)")
        if isinstance(row["critic"], str):  # pandas reads a missing finding as NaN
            print(f"  critic (mean over seeds): {row['critic']}")
    print(f"report: {report.html}")


def _ci(row: Any, prefix: str) -> str:
    """``mean [low, high]``; one seed has no interval: ``mean (n/a, 1 seed)``, never ``[x, x]``."""
    if row.get(f"{prefix}_n") == 1:
        return f"{fmt(row[f'{prefix}_mean'])} (95% CI n/a, 1 seed)"
    return f"{fmt(row[f'{prefix}_mean'])} [{fmt(row[f'{prefix}_low'])}, {fmt(row[f'{prefix}_high'])}]"
