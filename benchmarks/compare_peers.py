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
from typing import Any

from offrl.bench import cpu_isa, cpu_model
from offrl.hardware import machine

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


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _ratio(ours: list[float | None], theirs: list[float | None], inverse: bool = False) -> float | None:
    """offrl's speed-up: the median per-round ratio of its updates/s to the peer's (``inverse``: of the
    peer's CPU time to offrl's)."""
    pairs = [(b / a if inverse else a / b) for a, b in zip(ours, theirs, strict=True) if a and b]
    return statistics.median(pairs) if pairs else None


def fmt(x: float | None, suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:.2f}{suffix}"


def _offrl_figure(report: dict) -> float:
    return float(report["results"][0]["updates_per_s"])


E2E_STEPS = {"cql": 300, "dqn": 3000, "discrete-cql": 3000}


class EndToEnd:
    """``--end-to-end``: what a user runs, on real data. offrl is ``offrl train`` (updates/s from its
    summary.json, evaluation off), d3rlpy is ``benchmarks/d3rlpy_peer.py`` (d3rlpy's ``update`` loop, as
    its ``fit`` runs it) and torchrl is ``benchmarks/torchrl_peer.py`` (the sota-implementations loop), all
    three on the same dataset, networks, batch, learning rates and step budget: offrl's config for that
    dataset, resolved once and given to each."""

    def __init__(self, datasets: list[str], workloads: list[str], args: argparse.Namespace, scratch: Path) -> None:
        import dataclasses

        import gymnasium as gym
        import yaml

        from offrl.data import load_dataset
        from offrl.runs import compose_run_config

        sys.path.insert(0, str(REPO / "benchmarks"))
        from suite import dataset_folder  # the Minari folder of a bundled or generated dataset

        self.args, self.scratch, self.jobs = args, scratch, []
        for ds in datasets:
            data = load_dataset(ds)
            fitting = ("cql",) if isinstance(data.action_space, gym.spaces.Box) else ("dqn", "discrete-cql")
            for algo in (w for w in workloads if w in fitting):
                steps = args.updates or E2E_STEPS[algo]
                cfg, _ = compose_run_config(ds, algo, dotlist=[f"offline_steps={steps}", "eval.interval=0",
                                                              f"batch_size={args.batch}", f"num_threads={args.threads}",
                                                              f"log_interval={steps}"], seed=0)
                resolved = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
                for other in {"cql", "discrete_cql", "dqn", "mixing"} - {algo.replace("-", "_")}:
                    resolved.pop(other, None)  # another algorithm's section: --config refuses it
                stem = scratch / f"{ds.replace('/', '__')}--{algo}"
                Path(f"{stem}.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
                Path(f"{stem}.json").write_text(json.dumps(resolved))
                self.jobs.append((ds, algo, steps, dataset_folder(ds), stem))

    @property
    def workloads(self) -> list[str]:
        return [f"{ds} {algo}" for ds, algo, *_ in self.jobs]

    def runs(self, rnd: int) -> list[tuple[str, str, list[str], Any]]:
        """(workload, library, command, how to read its figure) for one round."""
        a, out = self.args, self.scratch / f"round{rnd}"
        todo = []
        for ds, algo, steps, folder, stem in self.jobs:
            name = f"{algo}-r{rnd}"
            offrl = [sys.executable, "-m", "offrl", "train", "--dataset", ds, "--algo", algo,
                     "--config", f"{stem}.yaml", "--out", str(out / "offrl"), "--name", name,
                     "--no-progress"]
            slug = ds.replace("/", "__")
            todo.append((f"{ds} {algo}", "offrl", offrl, out / "offrl" / slug / algo / name / "summary.json"))
            if "d3rlpy" in a.libraries:
                d3 = [a.d3rlpy_python, str(REPO / "benchmarks" / "d3rlpy_peer.py"), "--dataset", str(folder),
                      "--algo", algo, "--config", f"{stem}.json", "--out", str(out / "d3rlpy"),
                      "--name", name, "--threads", str(a.threads)]
                todo.append((f"{ds} {algo}", "d3rlpy", d3,
                             out / "d3rlpy" / slug / f"d3rlpy-{algo}" / name / "summary.json"))
            if "torchrl" in a.libraries:
                tr = [sys.executable, str(REPO / "benchmarks" / "torchrl_peer.py"), "--dataset", str(folder),
                      "--algo", algo, "--config", f"{stem}.json", "--steps", str(steps),
                      "--threads", str(a.threads)]
                todo.append((f"{ds} {algo}", "torchrl", tr, None))
        return todo


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
    p.add_argument("--end-to-end", metavar="DATASETS", default=None,
                   help="comma-separated dataset ids: time what users run (offrl train, d3rlpy's update loop, "
                        "torchrl's sota loop) on that data with offrl's config for it, instead of the synthetic step; "
                        "--updates is then the step budget (default 300 CQL, 3000 DQN / discrete CQL)")
    args = p.parse_args(argv)

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    if args.end_to_end:
        if args.cpu_time or args.precision != "fp32":
            p.error("--end-to-end times offrl train as configured: no --cpu-time or --precision")
        return end_to_end(args, argv)
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

    def ratio(workload, peer):
        return _ratio(figures[workload]["offrl"], figures[workload][peer], inverse=args.cpu_time)

    import torch

    print(f"Command: python benchmarks/compare_peers.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Machine: {machine()}, {os.cpu_count()} cores, {args.threads} torch threads, torch {torch.__version__}, "
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
                                         "precision": args.precision, "cpu": cpu_model(), "cpu_isa": cpu_isa()}, indent=1))
    return 0


def end_to_end(args: argparse.Namespace, argv: list[str] | None) -> int:
    """The ``--end-to-end`` table: rounds alternate the three libraries on each dataset x algorithm."""
    import tempfile

    import torch

    args.libraries = ["d3rlpy"] if Path(args.d3rlpy_python).exists() else []
    if not args.libraries:
        print(f"note: skipping d3rlpy: {args.d3rlpy_python} is missing (see this script's docstring)", file=sys.stderr)
    args.libraries.append("torchrl")  # runs in this interpreter: torchrl is offrl's dependency
    names = ["offrl", *args.libraries]
    with tempfile.TemporaryDirectory(prefix="offrl-e2e-") as tmp:
        e2e = EndToEnd([d.strip() for d in args.end_to_end.split(",") if d.strip()],
                       [w.strip() for w in args.workloads.split(",")], args, Path(tmp))
        figures: dict[str, dict[str, list[float | None]]] = {w: {n: [] for n in names} for w in e2e.workloads}
        for rnd in range(args.rounds):
            for workload, name, cmd, summary in e2e.runs(rnd):
                out, err, _ = _run(cmd, args.timeout)
                value = None
                try:  # offrl and the d3rlpy peer write a run folder; the torchrl loop prints a JSON line
                    data = json.loads(summary.read_text()) if summary is not None else out
                    if data is not None and data.get("status", "completed") == "completed":
                        value = float(data["updates_per_s"])
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    err = err or f"no figure: {exc}"
                figures[workload][name].append(value)
                shown = f"{value:.2f} updates/s" if value is not None else f"failed: {err}"
                print(f"round {rnd + 1}/{args.rounds} {workload:<36} {name:<8} {shown}", file=sys.stderr, flush=True)

    def ratio(workload, peer):
        return _ratio(figures[workload]["offrl"], figures[workload][peer])

    print(f"Command: python benchmarks/compare_peers.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Machine: {machine()}, {os.cpu_count()} cores, {args.threads} torch threads, torch "
          f"{torch.__version__}, batch {args.batch}, end to end (offrl train vs d3rlpy update loop vs torchrl sota "
          f"loop, same data and config, evaluation off), {args.rounds} alternating rounds, load average at the end {load}")
    print()
    peers = args.libraries
    header = ["dataset algorithm", *[f"{n} updates/s" for n in names], *[f"offrl/{n}" for n in peers]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for workload in e2e.workloads:
        row = [workload, *[fmt(med(figures[workload][n])) for n in names], *[fmt(ratio(workload, n), "x") for n in peers]]
        print("| " + " | ".join(row) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps({"figures": figures, "threads": args.threads, "batch": args.batch,
                                         "end_to_end": True, "cpu": cpu_model(), "cpu_isa": cpu_isa()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
