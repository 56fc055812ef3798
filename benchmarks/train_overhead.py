"""How close is offrl's full training loop to its bare update step?

Runs the same workload as `offrl bench` (synthetic data in a memmapped buffer, the peers' network sizes,
built by offrl.algos from the config dataclasses `offrl train` uses) two ways, alternately: the trainer's
bare update step (`Trainer.update`) in a plain for loop, and `Trainer.train` with its tidy CSV logger,
progress bar and checkpoint file at the seed's default intervals (evaluation excluded), in alternating
order round by round. Prints one JSON line per round and the median ratio.

Usage: python benchmarks/train_overhead.py [cql|discrete-cql|dqn] [--updates N] [--rounds R] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from offrl.bench import build_trainer, synthetic_buffer
from offrl.runs.metrics_log import TidyCSVLogger


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["cql", "discrete-cql", "dqn"])
    p.add_argument("--updates", type=int, default=None)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--transitions", type=int, default=100_000)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    n = a.updates or (200 if a.workload == "cql" else 1000)
    warmup = 50
    scratch = Path(tempfile.mkdtemp(prefix="offrl-overhead-"))
    rb, _ = synthetic_buffer(a.workload, 256, str(scratch), a.transitions)
    ratios = []

    def bare_rate() -> float:
        trainer = build_trainer(a.workload, rb, offline_steps=1, progress_bar=False)
        for _ in range(warmup):
            trainer.update(rb.sample())
        t = time.perf_counter()
        for _ in range(n):
            trainer.update(rb.sample())
        return n / (time.perf_counter() - t)

    def trainer_rate(rnd: int) -> float:
        trainer = build_trainer(a.workload, rb, offline_steps=warmup, seed=0, progress_bar=True,
                                logger=TidyCSVLogger("overhead", scratch / f"run{rnd}"),
                                save_trainer_file=scratch / f"run{rnd}" / "latest.pt")
        trainer.train()  # warm-up, as for the bare loop
        trainer.offline_steps = warmup + n
        t = time.perf_counter()
        trainer.train()
        return n / (time.perf_counter() - t)

    for rnd in range(a.rounds):
        # the two runs of a round in alternating order, so a drift in machine speed favours neither
        if rnd % 2 == 0:
            bare = bare_rate()
            looped = trainer_rate(rnd)
        else:
            looped = trainer_rate(rnd)
            bare = bare_rate()
        ratios.append(looped / bare)
        print(json.dumps({"workload": a.workload, "round": rnd, "threads": a.threads, "updates": n,
                          "bare_updates_per_s": round(bare, 1), "trainer_updates_per_s": round(looped, 1),
                          "ratio": round(looped / bare, 3)}), flush=True)
    print(json.dumps({"workload": a.workload, "median_ratio": round(statistics.median(ratios), 3)}))


if __name__ == "__main__":
    sys.exit(main())
