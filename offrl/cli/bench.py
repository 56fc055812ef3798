"""`offrl bench`: training-step throughput on synthetic data (the peers' workload) and data-layer figures."""

from __future__ import annotations

import argparse
import json

WORKLOAD_CHOICES = ("cql", "discrete-cql", "dqn", "data", "all")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    p = subparsers.add_parser(
        "bench",
        help="measure update throughput (updates/s) on synthetic data with the peers' workload",
        description=(
            "Measure the trainer's own step (offrl train's: sample from a memmapped buffer + loss + backward + "
            "optimizer + target update + metrics) on synthetic data: CQL (obs 17, act 6, 2x256 nets, 2 critics, 10 action "
            "samples, Lagrange on), DQN and discrete CQL (obs 4, 2 actions, 2x256). 'data' prints the "
            "data layer's conversion, cached-load and sampling figures. benchmarks/compare_peers.py puts "
            "these side by side with d3rlpy and a plain torchrl loop."
        ),
    )
    p.add_argument("workload", nargs="?", default="all", choices=WORKLOAD_CHOICES,
                   help="what to measure (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--updates", type=int, default=None,
                   help="timed updates per workload (default: 200 for CQL, 1000 for DQN / discrete CQL)")
    p.add_argument("--batch", type=int, default=256, help="batch size (default: 256)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast the loss forward to bfloat16 matmuls (opt-in; default fp32)")
    p.add_argument("--warmup", type=int, default=50,
                   help="untimed updates before timing (default: 50, as the peer scripts)")
    p.add_argument("--transitions", type=int, default=None,
                   help="size of the synthetic memmapped buffer sampled from (default: 100000 for the update "
                        "workloads, as the peers; 1000000 for data)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default) or cuda[:N]: networks, data and sampling on that device")
    p.add_argument("--cuda-graph", action="store_true",
                   help="on a CUDA device, capture the whole update as a CUDA graph (eager on a CPU)")
    p.add_argument("--reference", action="store_true",
                   help="run torchrl's own losses in a plain loop instead of offrl's trainer step")
    p.add_argument("--tune", action="store_true",
                   help="measure the kernel route of every layer shape again (they are measured at first use and "
                        "kept per CPU model in the cache folder: offrl.algos.routes), then run")
    p.add_argument("--roofline", action="store_true",
                   help="also print each workload's fp32 GEMM bound at its layer sizes and the fraction reached")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from offrl.bench import WORKLOADS, format_results, run_bench

    if args.workload == "all":
        workloads = [*WORKLOADS, "data"]
    else:
        workloads = [args.workload]
    report = run_bench(
        workloads,
        updates=args.updates,
        batch=args.batch,
        threads=args.threads,
        precision=args.precision,
        reference=args.reference,
        n_transitions=args.transitions,
        warmup=args.warmup,
        device=args.device,
        cuda_graph=args.cuda_graph,
        tune=args.tune,
        roofline=args.roofline,
    )
    if args.json:
        print(json.dumps(report))
    else:
        print(format_results(report))
    return 0
