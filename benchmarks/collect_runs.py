"""Copy the finished runs of a suite's ``--runs`` folder into a report's ``runs/`` folder, records only.

    python benchmarks/collect_runs.py runs/mujoco-s5 reports/mujoco/runs --last-episodes 10

A study longer than one session keeps its scratch runs in a git-ignored folder that the next session does not
have. This keeps what has finished: for every completed run (``summary.json`` status ``completed``) under
``RUNS/<dataset>/<algo>/seed<N>/`` not yet in ``DEST``, it copies ``config.yaml``, ``metrics.csv`` and
``summary.json`` (never checkpoints) and, for a d3rlpy peer run, the config the suite gave it
(``RUNS/.peer-configs/``), so that a later ``suite.py`` call over a folder restored from ``DEST`` reuses the run
instead of retraining it. ``--last-episodes K`` also scores each copied offrl run's final checkpoint on
episodes 0 .. K-1 (``offrl eval RUN --episodes K --seed 0``) and appends the row to
``<DEST>/../offrl_last_<K>_episodes.csv``: a like-for-like last with peer runs whose last evaluation ran K
episodes (the peer keeps each episode's return, so its own first K need no re-run). The checkpoints exist only
while the scratch folder does, so run this before the session ends.

A study whose runs outlast a session (and may find another machine in the next one) also carries its runs in
training: ``--in-flight`` copies each unfinished run's records and its last resume point (offrl's
``checkpoints/latest.pt``, ~3 MB for MuJoCo-sized CQL; the peer's ``resume/`` folder) to ``DEST/../in-flight/``,
replacing the copy an earlier call made and dropping those of runs that have finished since. Pause or stop the
suite first. The next session puts both back with ``--restore``:

    python benchmarks/collect_runs.py --restore reports/mujoco/runs runs/mujoco-s5

copies the collected runs and the in-flight ones into the scratch folder (a run already there at the same or
a later step is left alone), so that the same ``suite.py`` command reuses the finished runs and resumes the
others (on another CPU a resumed run goes on with that CPU's rounding; its summary lists every CPU it ran on).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

from offrl.errors import UserError

RECORDS = ("config.yaml", "metrics.csv", "summary.json")
CSV_FIELDS = ("dataset", "algo", "seed", "step", "episodes", "return_mean", "normalized_mean")


def _fail(message: str) -> None:
    print(f"collect_runs.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _run_statuses(runs: Path) -> list[tuple[Path, str | None]]:
    """``(run folder, summary status)`` of every ``<dataset>/<algo>/seed<N>`` under ``runs`` with a readable
    summary."""
    found = []
    for summary in sorted(runs.glob("*/*/seed*/summary.json")):
        try:
            found.append((summary.parent, json.loads(summary.read_text()).get("status")))
        except (OSError, ValueError):
            continue
    return found


def completed_runs(runs: Path) -> list[Path]:
    """Run folders ``<dataset>/<algo>/seed<N>`` under ``runs`` whose summary says completed."""
    return [run for run, status in _run_statuses(runs) if status == "completed"]


def unfinished_runs(runs: Path) -> list[tuple[Path, tuple[str, int]]]:
    """``(run folder, resume point)`` of the runs under ``runs`` that have not completed but hold one."""
    found = []
    for run, status in _run_statuses(runs):
        point = _resume_point(run) if status != "completed" else None
        if point is not None:
            found.append((run, point))
    return found


def _resume_point(run: Path) -> tuple[str, int] | None:
    """``(relative path, step)`` of a run's resume point: a peer's ``resume/`` folder, else offrl's
    ``checkpoints/latest.pt`` (its step from the run's summary)."""
    try:
        if run.parent.name.startswith("d3rlpy-"):
            state = run / "resume" / "state.json"
            return ("resume", int(json.loads(state.read_text())["step"])) if state.is_file() else None
        if (run / "checkpoints" / "latest.pt").is_file():
            from offrl.trainers.checkpoint import load_checkpoint

            return "checkpoints/latest.pt", int(load_checkpoint(run / "checkpoints" / "latest.pt")["step"])
    except (OSError, ValueError, KeyError, TypeError, UserError):  # unreadable or damaged: no point to carry
        return None
    return None


def carry_in_flight(runs: Path, dest: Path) -> list[str]:
    """Copy each unfinished run of ``runs`` (records + last resume point) into ``dest/../in-flight``, each run
    folder replaced whole; drop the in-flight copies of runs that ``dest`` now holds as completed."""
    flight = dest.parent / "in-flight"
    done = []
    for run, (point, step) in unfinished_runs(runs):
        rel = run.relative_to(runs)
        tmp = flight / ".tmp" / rel
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in RECORDS:
            if (run / name).is_file():
                shutil.copyfile(run / name, tmp / name)
        if (run / point).is_dir():
            shutil.copytree(run / point, tmp / point)
        else:
            (tmp / point).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run / point, tmp / point)
        if _resume_point(run) != (point, step):  # the run wrote a newer point while this copied: not one point
            shutil.rmtree(tmp)
            _fail(f"{run}: wrote a new resume point while it was copied; pause the suite (kill -STOP) and run "
                  "this again")
        _copy_peer_config(run, runs, flight)
        target = flight / rel
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(target)
        done.append(f"{rel} at step {step}")
    shutil.rmtree(flight / ".tmp", ignore_errors=True)
    for stale in sorted(flight.glob("*/*/seed*")) if flight.is_dir() else []:
        if (dest / stale.relative_to(flight) / "summary.json").is_file():
            shutil.rmtree(stale)
            for parent in (stale.parent, stale.parent.parent):  # the algo and dataset folders, once empty
                if not any(parent.iterdir()):
                    parent.rmdir()
            done.append(f"{stale.relative_to(flight)} dropped (completed)")
    return done


def restore(dest: Path, runs: Path) -> list[str]:
    """Put a report's collected runs and its in-flight runs back into the scratch folder ``runs``."""
    done = []
    for source in (dest, dest.parent / "in-flight"):
        for run in sorted(source.glob("*/*/seed*")) if source.is_dir() else []:
            if not (run / "summary.json").is_file():
                continue
            target = runs / run.relative_to(source)
            here = _resume_point(target) if target.is_dir() else None
            there = _resume_point(run)
            finished = (target / "summary.json").is_file() and json.loads(
                (target / "summary.json").read_text()).get("status") == "completed"
            if finished or (here and there and here[1] >= there[1]):
                continue
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(run, target)
            _copy_peer_config(run, source, runs)
            done.append(f"{run.relative_to(source)}" + (f" (resumes at step {there[1]})" if there else ""))
    return done


def _copy_peer_config(run: Path, runs: Path, dest: Path) -> None:
    dataset, algo, seed = run.relative_to(runs).parts
    if algo.startswith("d3rlpy-"):
        given = runs / ".peer-configs" / f"{dataset}.{algo.removeprefix('d3rlpy-')}.{seed}.json"
        if given.is_file():
            (dest / ".peer-configs").mkdir(parents=True, exist_ok=True)
            _copy_atomic(given, dest / ".peer-configs" / given.name)


def _copy_atomic(src: Path, dst: Path) -> None:
    from offrl.fsio import atomic_write

    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp), fsync=False)


def copy_run(run: Path, runs: Path, dest: Path) -> Path:
    """Copy one run's records (and a peer run's given config) into ``dest``; returns the new folder."""
    rel = run.relative_to(runs)
    target = dest / rel
    target.mkdir(parents=True, exist_ok=True)
    for name in RECORDS:  # summary.json last: its presence marks the copy complete
        _copy_atomic(run / name, target / name)
    _copy_peer_config(run, runs, dest)
    return target


def last_episodes_row(run: Path, episodes: int) -> dict[str, object]:
    """The final checkpoint of an offrl run scored on episodes 0 .. episodes-1."""
    from offrl.runs import evaluate_checkpoint

    result, loaded = evaluate_checkpoint(run, episodes=episodes, seed=0)
    summary = json.loads((run / "summary.json").read_text())
    return {"dataset": loaded.name, "algo": summary.get("algo"), "seed": summary.get("seed"), "step": loaded.step,
            "episodes": len(result.returns), "return_mean": f"{result.mean:.4f}",
            "normalized_mean": f"{result.normalized_mean:.4f}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", help="a suite's --runs folder (with --restore: the report's runs/ folder)")
    p.add_argument("dest", help="a report's runs/ folder (with --restore: the suite's --runs folder)")
    p.add_argument("--last-episodes", type=int, default=0, metavar="K",
                   help="also score each copied offrl run's final checkpoint on episodes 0..K-1 (default: no)")
    p.add_argument("--in-flight", action="store_true",
                   help="also carry the unfinished runs' last resume points to DEST/../in-flight/")
    p.add_argument("--restore", action="store_true",
                   help="put a report's collected and in-flight runs back into a suite's --runs folder")
    args = p.parse_args(argv)
    if args.restore:
        report, runs = Path(args.runs), Path(args.dest)
        if not report.is_dir() and not (report.parent / "in-flight").is_dir():
            _fail(f"{report}: no such folder (nor {report.parent / 'in-flight'}); name a report's runs/ folder")
        restored = restore(report, runs)
        print("\n".join(f"restored {line}" for line in restored) or f"nothing to restore into {runs}")
        return 0
    runs, dest = Path(args.runs), Path(args.dest)
    if not runs.is_dir():
        _fail(f"{runs}: no such folder; name a suite's --runs folder")
    if args.last_episodes < 0:
        _fail(f"--last-episodes {args.last_episodes}: must be 0 or more")
    todo = [run for run in completed_runs(runs) if not (dest / run.relative_to(runs) / "summary.json").is_file()]
    table = dest.parent / f"offrl_last_{args.last_episodes}_episodes.csv"
    for run in todo:
        offrl_run = not run.parent.name.startswith("d3rlpy-")
        row = None
        if args.last_episodes and offrl_run:
            if not (run / "checkpoints").is_dir():
                _fail(f"{run}: no checkpoints/ to score on {args.last_episodes} episodes; collect it without "
                      "--last-episodes")
            row = last_episodes_row(run, args.last_episodes)
        copy_run(run, runs, dest)
        if row is not None:
            new = not table.is_file()
            with table.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
        print(f"collected {run.relative_to(runs)}" + (f" (last over {args.last_episodes} episodes: "
                                                      f"{row['normalized_mean']})" if row else ""))
    if not todo:
        print(f"nothing new: every completed run in {runs} is already in {dest}")
    if args.in_flight:
        for line in carry_in_flight(runs, dest):
            print(f"in flight: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
