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
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

RECORDS = ("config.yaml", "metrics.csv", "summary.json")
CSV_FIELDS = ("dataset", "algo", "seed", "step", "episodes", "return_mean", "normalized_mean")


def _fail(message: str) -> None:
    print(f"collect_runs.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def completed_runs(runs: Path) -> list[Path]:
    """Run folders ``<dataset>/<algo>/seed<N>`` under ``runs`` whose summary says completed."""
    found = []
    for summary in sorted(runs.glob("*/*/seed*/summary.json")):
        try:
            status = json.loads(summary.read_text()).get("status")
        except (OSError, ValueError):
            continue
        if status == "completed":
            found.append(summary.parent)
    return found


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
    dataset, algo, seed = rel.parts
    if algo.startswith("d3rlpy-"):
        given = runs / ".peer-configs" / f"{dataset}.{algo.removeprefix('d3rlpy-')}.{seed}.json"
        if given.is_file():
            (dest / ".peer-configs").mkdir(exist_ok=True)
            _copy_atomic(given, dest / ".peer-configs" / given.name)
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
    p.add_argument("runs", help="a suite's --runs folder")
    p.add_argument("dest", help="a report's runs/ folder")
    p.add_argument("--last-episodes", type=int, default=0, metavar="K",
                   help="also score each copied offrl run's final checkpoint on episodes 0..K-1 (default: no)")
    args = p.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
