"""N seeds as batched models (``offrl train --seeds N --vectorize``) against N separate processes.

Both ways train what ``offrl train`` trains on a dataset (the bundled per-dataset config, evaluation off)
for the same number of steps per seed, in alternating order round by round:

* separate: one process per seed, ``--jobs`` of them at a time (default: one per CPU core, one torch thread
  each: what ``offrl train --seeds N`` runs). Each batch of processes builds its trainers, waits at a barrier,
  then trains; the throughput is the sum of the processes' own updates/s (startup excluded).
* vectorized: J processes at once, each training its share of the N seeds as one batched model (the split
  ``offrl train --vectorize --jobs J`` makes), for each J of ``--vectorized-jobs`` (default 1 and one per
  core); each gets the cores shared out as torch threads (or ``--vectorized-threads``).

Prints one JSON line per measurement and a summary per algorithm: seed-updates/s (all seeds together, wall
clock) and seed-updates per CPU-second of the processes (robust to other load on the machine), the ratio of
both, the CPU model, its ISA flags and the load average before and after (the machine may be shared).

Usage: python benchmarks/vectorized_seeds.py [--algos dqn,discrete-cql] [--seeds 8] [--steps 400]
       [--rounds 2] [--jobs J] [--threads T] [--vectorized-jobs 1,2] [--vectorized-threads T]
       [--dataset offrl/cartpole/medium-v0]
       [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP = 20


def _isa_flags() -> list[str]:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split())
    except (OSError, IndexError):
        return []
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return [f for f in wanted if f in flags]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _build(args: argparse.Namespace, seeds: list[int]) -> list:
    """The seeds' trainers as offrl train builds them (bundled config, evaluation off, no run folder)."""
    import torch

    from offrl.runs.assemble import build_components
    from offrl.runs.compose import compose_run_config

    cfg, data = compose_run_config(args.dataset, args.algo, eval_every=0, progress=False,
                                   steps=WARMUP + args.steps, device=args.device)
    cfg = dataclasses.replace(cfg, num_threads=args.threads)
    trainers = []
    for seed in seeds:
        trainer = build_components(dataclasses.replace(cfg, seed=seed), dataset=data).trainer
        trainer.handle_signals = False
        trainer.hold_rng()
        trainers.append(trainer)
    torch.set_num_threads(args.threads)
    return trainers


def child(args: argparse.Namespace) -> None:
    """One measured process: build, wait at the barrier, train ``WARMUP`` then ``--steps`` steps per seed."""
    import torch

    seeds = [int(s) for s in args.child.split(",")]
    trainers = _build(args, seeds)
    if args.vectorized:
        from offrl.trainers.vectorized import VectorizedSeeds

        group = VectorizedSeeds(trainers, handle_signals=False)
    for t in trainers:
        t.offline_steps = WARMUP
    run = group.train if args.vectorized else trainers[0].train
    run()
    barrier = Path(args.barrier)
    (barrier / f"ready-{os.getpid()}").touch()
    while not (barrier / "go").exists():
        time.sleep(0.005)
    for t in trainers:
        t.offline_steps = WARMUP + args.steps
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"seeds": len(seeds), "steps": args.steps, "wall_s": wall, "cpu_s": cpu}), flush=True)


def _spawn(args: argparse.Namespace, seeds: list[int], barrier: Path, vectorized: bool,
           threads: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", ",".join(map(str, seeds)), "--algos", args.algo,
           "--steps", str(args.steps), "--threads", str(threads), "--dataset", args.dataset,
           "--device", args.device, "--barrier", str(barrier)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd + (["--vectorized"] if vectorized else []), stdout=subprocess.PIPE, text=True,
                            env=env)


def _vectorized_threads(args: argparse.Namespace, jobs: int) -> int:
    """Torch threads of each of ``jobs`` vectorized processes: --vectorized-threads, else the cores shared out
    (what ``offrl train --seeds N --vectorize --jobs J`` gives each group)."""
    from offrl.cli.seeds import threads_per_job

    return args.vectorized_threads or threads_per_job(jobs)


def _measure(args: argparse.Namespace, vectorized_jobs: int) -> dict:
    """Total seed-updates/s and seed-updates per CPU-second of one way: separate processes (``vectorized_jobs``
    0; batches of --jobs at a time) or ``vectorized_jobs`` batched processes at once, the seeds split among them
    as ``offrl train --vectorize --jobs J`` splits them."""
    seeds = list(range(args.seeds))
    if vectorized_jobs:
        # one batch: every group at once
        from offrl.cli.seeds import seed_groups

        batches = [seed_groups(seeds, vectorized_jobs)]
    else:
        batches = [[[s] for s in seeds[i:i + args.jobs]] for i in range(0, len(seeds), args.jobs)]
    rates, per_cpu = [], []
    for groups in batches:
        with tempfile.TemporaryDirectory() as tmp:
            barrier = Path(tmp)
            threads = _vectorized_threads(args, vectorized_jobs) if vectorized_jobs else args.threads
            procs = [_spawn(args, g, barrier, bool(vectorized_jobs), threads) for g in groups]
            # the barrier opens once every process has built its trainers and warmed up
            while len(list(barrier.glob("ready-*"))) < len(procs):
                if any(proc.poll() not in (None, 0) for proc in procs):
                    raise SystemExit("a benchmark process failed before the barrier")
                time.sleep(0.05)
            (barrier / "go").touch()
            results = []
            for p in procs:
                out, _ = p.communicate()
                if p.returncode != 0:
                    raise SystemExit(f"a benchmark process failed (exit {p.returncode})")
                results.append(json.loads(out.strip().splitlines()[-1]))
        rates.append(sum(r["seeds"] * r["steps"] / r["wall_s"] for r in results))
        per_cpu.append(sum(r["seeds"] * r["steps"] for r in results) / sum(r["cpu_s"] for r in results))
    return {"seed_updates_per_s": statistics.mean(rates), "seed_updates_per_cpu_s": statistics.mean(per_cpu)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", default="dqn,discrete-cql")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=400, help="timed steps per seed (after a warm-up)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="separate processes at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each separate process")
    p.add_argument("--vectorized-jobs", default=None,
                   help="batched processes the seeds are split among, one or more ways, comma-separated (default: "
                        "1 and one per CPU core: offrl train --vectorize's default on a CPU)")
    p.add_argument("--vectorized-threads", type=int, default=None, help="torch threads of each vectorized process "
                   "(default: the CPU cores shared out among them)")
    p.add_argument("--dataset", default="offrl/cartpole/medium-v0")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--barrier", help=argparse.SUPPRESS)
    p.add_argument("--vectorized", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        args.algo = args.algos
        child(args)
        return 0
    from offrl.bench.environment import cpu_model, environment

    ways = sorted({int(j) for j in (args.vectorized_jobs or f"1,{os.cpu_count() or 1}").split(",")})
    machine = {"cpu": cpu_model(), "isa": _isa_flags(), "cpu_count": os.cpu_count(), "load_before": _load(),
               "jobs": args.jobs, "threads": args.threads,
               "vectorized": {j: {"processes": j, "threads_each": _vectorized_threads(args, j)} for j in ways},
               "device": args.device,
               "versions": environment()["versions"]}
    print(json.dumps({"machine": machine}), flush=True)
    summary = {}
    for algo in args.algos.split(","):
        args.algo = algo
        rows = []
        for rnd in range(args.rounds):
            order = [0, *ways] if rnd % 2 == 0 else [*reversed(ways), 0]  # alternate: a drift favours none
            got = {j: _measure(args, j) for j in order}
            sep = got[0]
            row = {"algo": algo, "round": rnd, "seeds": args.seeds, "steps": args.steps,
                   "separate": {k: round(v, 1) for k, v in sep.items()}, "load": _load()}
            for j in ways:
                vec = got[j]
                row[f"vectorized_{j}"] = {k: round(v, 1) for k, v in vec.items()}
                row[f"ratio_{j}"] = round(vec["seed_updates_per_s"] / sep["seed_updates_per_s"], 2)
                row[f"ratio_per_cpu_s_{j}"] = round(vec["seed_updates_per_cpu_s"] / sep["seed_updates_per_cpu_s"], 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
        summary[algo] = {"separate_seed_updates_per_s": statistics.median(r["separate"]["seed_updates_per_s"]
                                                                          for r in rows)}
        for j in ways:
            summary[algo][f"vectorized_{j}_processes"] = {
                "seed_updates_per_s": statistics.median(r[f"vectorized_{j}"]["seed_updates_per_s"] for r in rows),
                "median_ratio": statistics.median(r[f"ratio_{j}"] for r in rows),
                "median_ratio_per_cpu_s": statistics.median(r[f"ratio_per_cpu_s_{j}"] for r in rows)}
    print(json.dumps({"summary": summary, "load_after": _load(), "cpu": machine["cpu"], "isa": machine["isa"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
