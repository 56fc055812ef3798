"""Trials per hour: the same trials run once through ``offrl sweep`` and once one by one through
``offrl train --seed S``.

Both ways run the commands a user runs, as subprocesses, on the same datasets × seeds with the same settings
(the bundled per-dataset config, ``--steps`` gradient steps, ``--eval-every`` / ``--eval-episodes``):

* one by one: ``offrl train --dataset D --seed S ...`` for each trial in a row (each trial a process start,
  its training and evaluations, its report);
* sweep: ``offrl sweep --dataset D ... --seeds N ...``, by default on a local Ray that the command starts
  and stops (its start-up is in the figure), ``--cpus-per-run 1``: as many trials at a time as cores.

The converted datasets are cached first, so neither way pays for conversion. Prints each way's wall time and
trials/hour, the ratio (sweep / one by one; on C cores at most about C, less the sweep's Ray start-up and
its report), whether the two ways ended with identical final returns (they should: same seeds, exact
runs), the CPU model, its ISA flags, the core count and the load average before and after each way (the
machine may be shared: a figure under load is a lower bound). Last line: the whole record as JSON.

Usage: python benchmarks/sweep_throughput.py [--datasets offrl/cartpole/medium-v0,offrl/cartpole/mixed-v0]
       [--seeds 2] [--steps 2000] [--eval-every 500] [--eval-episodes 5] [--engine ray|local]
       [--order serial-first|sweep-first] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _settings(args: argparse.Namespace) -> list[str]:
    return ["--steps", str(args.steps), "--eval-every", str(args.eval_every), "--eval-episodes",
            str(args.eval_episodes)]


def _offrl(argv: list[str], env: dict[str, str]) -> float:
    """Run ``python -m offrl ARGV``; returns its wall time (exits on a failure, with its stderr)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "offrl", *argv], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"offrl {' '.join(argv[:1])} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n"
                 f"{done.stderr[-3000:]}")
    return seconds


def _finals(runs: Path) -> dict[str, float | None]:
    """dataset/seed -> final evaluation return of every run folder under ``runs``."""
    finals = {}
    for summary in sorted(runs.rglob("summary.json")):
        s = json.loads(summary.read_text())
        finals[f"{s['dataset']['id']}/seed{s['seed']}"] = (s.get("final") or {}).get("return_mean")
    return finals


def one_by_one(args: argparse.Namespace, datasets: list[str], out: Path, env: dict[str, str]) -> dict:
    load = _load()
    seconds = sum(_offrl(["train", "--dataset", d, "--seed", str(s), *_settings(args), "--no-progress",
                          "--out", str(out), "--name", f"seed{s}"], env)
                  for d in datasets for s in range(args.seeds))
    return {"seconds": round(seconds, 1), "load_before": load, "load_after": _load(), "finals": _finals(out)}


def sweep(args: argparse.Namespace, datasets: list[str], out: Path, env: dict[str, str]) -> dict:
    load = _load()
    argv = ["sweep", *(x for d in datasets for x in ("--dataset", d)), "--seeds", str(args.seeds), *_settings(args),
            "--engine", args.engine, "--cpus-per-run", "1", "--out", str(out)]
    seconds = _offrl(argv, env)
    return {"seconds": round(seconds, 1), "load_before": load, "load_after": _load(),
            "finals": _finals(out / "runs")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="offrl/cartpole/medium-v0,offrl/cartpole/mixed-v0")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--engine", choices=("ray", "local"), default="ray")
    p.add_argument("--order", choices=("serial-first", "sweep-first"), default="serial-first")
    p.add_argument("--out", help="where the runs go (default: a temporary folder, removed after)")
    args = p.parse_args()

    sys.path.insert(0, str(REPO))
    import offrl
    from offrl.hardware import cpu_isa, cpu_model, machine

    datasets = [d for d in args.datasets.split(",") if d]
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        cache = out / "cache"
        env = {**os.environ, "OFFRL_CACHE": str(cache), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        os.environ["OFFRL_CACHE"] = str(cache)
        for d in datasets:  # convert once, before either way is timed
            offrl.load_dataset(d)
        ways = {"one_by_one": lambda: one_by_one(args, datasets, out / "one-by-one", env),
                "sweep": lambda: sweep(args, datasets, out / "sweep", env)}
        order = list(ways) if args.order == "serial-first" else list(reversed(ways))
        results = {name: ways[name]() for name in order}

    trials = len(datasets) * args.seeds
    for r in results.values():
        r["trials_per_hour"] = round(trials * 3600 / r["seconds"], 1)
    ratio = round(results["sweep"]["trials_per_hour"] / results["one_by_one"]["trials_per_hour"], 2)
    identical = results["sweep"]["finals"] == results["one_by_one"]["finals"]
    record = {"trials": trials, "datasets": datasets, "seeds": args.seeds, "steps": args.steps,
              "eval_every": args.eval_every, "eval_episodes": args.eval_episodes, "engine": args.engine,
              "cpu_model": cpu_model(), "cpu_isa": cpu_isa(), "cores": os.cpu_count(), **results,
              "ratio": ratio, "identical_finals": identical}
    print(f"machine: {machine()}, {os.cpu_count()} cores")
    print(f"trials: {trials} ({len(datasets)} dataset(s) x {args.seeds} seed(s)), {args.steps} steps, evaluation "
          f"every {args.eval_every} steps x {args.eval_episodes} episodes, 1 torch thread per trial")
    for name in order:
        r = results[name]
        how = f"offrl sweep --engine {args.engine}" if name == "sweep" else "offrl train --seed S, one by one"
        print(f"{how}: {r['seconds']:.0f} s, {r['trials_per_hour']:.0f} trials/hour "
              f"(load average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after)")
    print(f"sweep / one by one: {ratio:.2f}x; identical final returns: {'yes' if identical else 'NO'}")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
