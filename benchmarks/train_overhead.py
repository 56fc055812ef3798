"""How close is offrl's training loop to the bare update step?

Runs the same workload as `offrl bench` (synthetic data in a memmapped buffer, the peers' network sizes)
two ways, alternately: the bare fused update step (`offrl.algos.fused.make_update`) in a plain for loop,
and a `CQLTrainer` / `DQNTrainer` with its tidy CSV logger, progress bar and checkpoint file at the seed's
default intervals (evaluation excluded), in alternating order round by round. Prints one JSON line per
round and the median ratio.

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

from offrl import bench
from offrl.algos.fused import default_loss_keys, make_adam, make_update
from offrl.logging import TidyCSVLogger
from offrl.trainers import CQLTrainer, DQNTrainer


def _parts(workload: str, data):
    torch.manual_seed(0)
    if workload == "cql":
        loss, target, lr = bench._build_cql(data, False)
    else:
        loss, target, lr = bench._build_discrete(data, workload, False)
    return loss, target, make_adam(loss.parameters(), lr=lr)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["cql", "discrete-cql", "dqn"])
    p.add_argument("--updates", type=int, default=None)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    n = a.updates or (200 if a.workload == "cql" else 1000)
    scratch = Path(tempfile.mkdtemp(prefix="offrl-overhead-"))
    rb, data = bench._synthetic_buffer(a.workload, 256, str(scratch), 100_000)
    ratios = []

    def bare_rate() -> float:
        loss, target, opt = _parts(a.workload, data)
        update = make_update(loss, opt, target, loss_keys=default_loss_keys(loss))
        for _ in range(50):
            update(rb.sample())
        t = time.perf_counter()
        for _ in range(n):
            update(rb.sample())
        return n / (time.perf_counter() - t)

    def trainer_rate(rnd: int) -> float:
        loss, target, opt = _parts(a.workload, data)
        cls = DQNTrainer if a.workload == "dqn" else CQLTrainer
        trainer = cls(loss_module=loss, optimizer=opt, target_net_updater=target, replay_buffer=rb,
                      offline_steps=50, seed=0, progress_bar=True,
                      logger=TidyCSVLogger("overhead", scratch / f"run{rnd}"),
                      save_trainer_file=scratch / f"run{rnd}" / "latest.pt")
        trainer.train()  # warm-up, as for the bare loop
        trainer.offline_steps = 50 + n
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
