"""Torch threads and the OpenMP wait policy on an idle and on a loaded machine (docs/threads.md).

Each cell is a fresh ``offrl bench WORKLOAD --json`` process (the OpenMP runtime reads OMP_WAIT_POLICY
once, at start), run idle and then with one busy-looping process pinned to each core (``taskset``), the
load a second job or a colleague's study puts on a small machine. Workloads: ``dqn`` (small: obs 4,
2x256, batch 256) and ``cql`` (large: obs 17, act 6, 2x256 actor + 2 critics over 31 action samples per
state, batch 256). Repeats are interleaved so drifting background load hits every cell alike.

    python benchmarks/threads.py --repeats 2 > threads.json

Not part of the tests: the tests only check that the rule chosen from these figures is applied
(tests/runs/test_threads.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

UPDATES = {"dqn": 300, "cql": 30}


def _bench(workload: str, threads: int, policy: str | None) -> float:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, "-m", "offrl", "bench", workload, "--json", "--threads", str(threads),
           "--updates", str(UPDATES[workload]), "--warmup", "20", "--transitions", "20000"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)["results"][0]["updates_per_s"])


def _load(cores: list[int]) -> list[subprocess.Popen]:
    spin = [sys.executable, "-c", "while True: pass"]
    taskset = shutil.which("taskset")
    return [subprocess.Popen([taskset, "-c", str(c), *spin] if taskset else spin) for c in cores]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--workloads", default="dqn,cql")
    parser.add_argument("--policies", default="default,PASSIVE", help="OMP_WAIT_POLICY values (default: unset)")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    cells = [(load, w, t, p) for load in ("idle", "loaded") for w in args.workloads.split(",")
             for t in map(int, args.threads.split(","))
             for p in [None if x == "default" else x for x in args.policies.split(",")]]
    results: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        for load in ("idle", "loaded"):
            spinners = _load(cores) if load == "loaded" else []
            try:
                time.sleep(0.5)
                for cell in [c for c in cells if c[0] == load]:
                    _, w, t, p = cell
                    ups = _bench(w, t, p)
                    key = f"{load} {w} threads={t} OMP_WAIT_POLICY={p or 'default'}"
                    results.setdefault(key, []).append(ups)
                    print(f"[{rep}] {key}: {ups:.1f} updates/s (load avg {os.getloadavg()[0]:.2f})",
                          file=sys.stderr, flush=True)
            finally:
                for s in spinners:
                    s.kill()
                    s.wait()
    print(json.dumps({"cores": len(cores), "cpu": os.uname().machine,
                      "median_updates_per_s": {k: statistics.median(v) for k, v in results.items()},
                      "all": results}, indent=1))


if __name__ == "__main__":
    main()
