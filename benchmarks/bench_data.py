"""Data-layer benchmark: prints one JSON line (convert, cached load, 256-batch sampling, peak RSS).

    .venv/bin/python benchmarks/bench_data.py [--transitions 1000000] [--threads 1]

A thin wrapper over :func:`offrl.bench.data.run_data_benchmark` (also behind ``offrl bench data``).
"""

from __future__ import annotations

import argparse
import json

import torch

from offrl.bench.data import run_data_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sample-batches", type=int, default=3000)
    parser.add_argument("--no-next-observations", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run_data_benchmark(
        args.transitions,
        obs_dim=args.obs_dim,
        act_dim=args.act_dim,
        batch_size=args.batch_size,
        sample_batches=args.sample_batches,
        next_observations=not args.no_next_observations,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
