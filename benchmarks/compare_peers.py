"""offrl vs d3rlpy vs a plain torchrl loop, side by side in one run, on the same synthetic workload.

Runs ``offrl bench <workload> --json`` and the two peer scripts of ../shared/peers/ (each in its own
virtual environment, via subprocess) alternately, round after round, so that load from anything else on
the machine hits all three alike. Prints a Markdown table of updates/s (median over rounds) and the
ratios offrl/d3rlpy and offrl/torchrl (median of the per-round ratios: each round's three runs are
adjacent in time). This table is the README's performance table. ``--cpu-time`` reports CPU time per
update instead (robust to other load on a shared machine; best with ``--threads 1``).

    python benchmarks/compare_peers.py --rounds 3 --threads 2
    python benchmarks/compare_peers.py --workloads cql --precision bf16

Peers (see ../shared/peers/README.md):
    python -m venv /tmp/peer-d3rlpy && /tmp/peer-d3rlpy/bin/pip install torch==2.13.0 d3rlpy==2.8.1
    python -m venv /tmp/peer-torchrl && /tmp/peer-torchrl/bin/pip install torch==2.13.0 torchrl==0.14.1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from offrl.bench import cpu_model

REPO = Path(__file__).resolve().parents[1]
# offrl's workload names vs the peer scripts' names
WORKLOADS = {"cql": "cql", "dqn": "dqn", "discrete-cql": "dcql"}
DEFAULT_UPDATES = {"cql": 200, "dqn": 1000, "discrete-cql": 1000}


def _peers_dir() -> Path:
    for candidate in (REPO.parent / "shared" / "peers", Path("/work/shared/peers")):
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared" / "peers"


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in output")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str], timeout: float) -> tuple[dict | None, str, float]:
    """Run one benchmark process: (its JSON line, error text, its CPU seconds incl. start-up)."""
    env = {**os.environ, "RL_WARNINGS": "False", "PYTHONWARNINGS": "ignore"}
    before = _children_cpu_seconds()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, "timed out", 0.0
    cpu = _children_cpu_seconds() - before
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1], cpu
    try:
        return _last_json(proc.stdout), "", cpu
    except ValueError as err:
        return None, str(err), cpu


def _offrl_figure(report: dict) -> float:
    return float(report["results"][0]["updates_per_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="cql,dqn,discrete-cql",
                   help="comma-separated: cql, dqn, discrete-cql (default: all three)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--updates", type=int, default=None,
                   help="timed updates per run, same for all three (default: 200 CQL, 1000 DQN / discrete CQL)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="offrl's precision only")
    p.add_argument("--d3rlpy-python", default="/tmp/peer-d3rlpy/bin/python")
    p.add_argument("--torchrl-python", default="/tmp/peer-torchrl/bin/python")
    p.add_argument("--peers-dir", type=Path, default=_peers_dir())
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    p.add_argument("--json", type=Path, default=None, help="also write all raw figures to this file")
    p.add_argument("--cpu-time", action="store_true",
                   help="report CPU milliseconds per update instead of updates/s: each run is repeated with "
                        "--updates 10 and the difference taken (start-up and warm-up cancel). Less sensitive to "
                        "other load on the machine than wall-clock figures; use with --threads 1")
    args = p.parse_args(argv)

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    peers = {
        "d3rlpy": (args.d3rlpy_python, args.peers_dir / "bench_d3rlpy.py"),
        "torchrl": (args.torchrl_python, args.peers_dir / "bench_torchrl_plain.py"),
    }
    for name, (python, script) in list(peers.items()):
        if not Path(python).exists() or not script.exists():
            print(f"note: skipping {name}: {python} or {script} is missing (see this script's docstring)",
                  file=sys.stderr)
            del peers[name]

    figures: dict[str, dict[str, list[float | None]]] = {w: {"offrl": [], **{n: [] for n in peers}}
                                                          for w in workloads}
    for rnd in range(args.rounds):
        for workload in workloads:
            updates = args.updates or DEFAULT_UPDATES[workload]
            common = ["--threads", str(args.threads), "--updates", str(updates), "--batch", str(args.batch)]
            runs = [("offrl", [sys.executable, "-m", "offrl", "bench", workload, "--json", "--warmup", "50",
                               "--precision", args.precision, *common])]
            runs += [(name, [python, str(script), WORKLOADS[workload], *common])
                     for name, (python, script) in peers.items()]
            for name, cmd in runs:
                out, err, cpu = _run(cmd, args.timeout)
                value = None
                if out is not None and args.cpu_time:
                    short = list(cmd)
                    short[short.index("--updates") + 1] = "10"
                    base, err, base_cpu = _run(short, args.timeout)
                    if base is not None and updates > 10:
                        value = 1000.0 * (cpu - base_cpu) / (updates - 10)
                elif out is not None:
                    value = _offrl_figure(out) if name == "offrl" else float(out["updates_per_s"])
                figures[workload][name].append(value)
                unit = "CPU ms/update" if args.cpu_time else "updates/s"
                shown = f"{value:.2f} {unit}" if value is not None else f"failed: {err}"
                print(f"round {rnd + 1}/{args.rounds} {workload:<13} {name:<8} {shown}", file=sys.stderr,
                      flush=True)

    def med(values):
        vals = [v for v in values if v is not None]
        return statistics.median(vals) if vals else None

    def ratio(workload, peer):
        """offrl's speed-up over ``peer`` (per round: its updates/s over theirs, or their CPU time over ours)."""
        pairs = [(b / a if args.cpu_time else a / b)
                 for a, b in zip(figures[workload]["offrl"], figures[workload][peer], strict=True) if a and b]
        return statistics.median(pairs) if pairs else None

    def fmt(x, suffix=""):
        return "n/a" if x is None else f"{x:.2f}{suffix}"

    import torch

    print(f"Command: python benchmarks/compare_peers.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores, {args.threads} torch threads, torch {torch.__version__}, "
          f"batch {args.batch}, offrl precision {args.precision}, {args.rounds} alternating rounds, "
          f"load average at the end {load}")
    print()
    names = ["offrl", *peers]
    unit = "CPU ms/update" if args.cpu_time else "updates/s"
    header = ["workload", *[f"{n} {unit}" for n in names], *[f"offrl/{n} speed-up" for n in peers]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for workload in workloads:
        row = [workload, *[fmt(med(figures[workload][n])) for n in names],
               *[fmt(ratio(workload, n), "x") for n in peers]]
        print("| " + " | ".join(row) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps({"figures": figures, "threads": args.threads, "batch": args.batch,
                                         "precision": args.precision, "cpu": cpu_model()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
