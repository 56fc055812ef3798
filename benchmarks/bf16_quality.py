"""Does bf16 autocast change what CQL learns? Every bundled Pendulum dataset x seeds x {fp32, bf16}.

Trains the bundled Pendulum CQL config (``offrl train --dataset offrl/pendulum/<flavour>-v0``) with
``precision=fp32`` and ``precision=bf16`` for each seed, then aggregates with offrl's own report (mean and
stratified-bootstrap 95% CI of the last normalized score over seeds) and checks issue 6's criterion: the
bf16 mean lies within the fp32 CI. Writes ``<out>/index.html`` (both precisions on one page) and
``<out>/README.md`` (table, command, machine).

    python benchmarks/bf16_quality.py --out reports/bf16 --seeds 3

Each run is one ``offrl train`` process on one torch thread; ``--jobs`` of them at a time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from offrl.bench import cpu_model

PRECISIONS = ("fp32", "bf16")


def _train(dataset: str, precision: str, seed: int, runs: Path) -> tuple[str, float, str]:
    run = runs / precision
    cmd = [str(Path(sys.executable).with_name("offrl")), "train", "--dataset", dataset, "--algo", "cql",
           "--seed", str(seed), "--out", str(run), "--name", f"seed{seed}", "--no-progress",
           "--set", f"precision={precision}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "RL_WARNINGS": "False"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    label = f"{dataset} {precision} seed {seed}"
    err = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return label, time.perf_counter() - t0, err


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="reports/bf16")
    p.add_argument("--runs", default="runs/bf16-quality")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--datasets", default=None, help="comma-separated (default: every bundled Pendulum dataset)")
    p.add_argument("--report-only", action="store_true", help="aggregate the runs already in --runs")
    args = p.parse_args(argv)

    from offrl.data.catalog import list_bundled
    from offrl.report import build_report

    datasets = args.datasets.split(",") if args.datasets else [d for d in list_bundled() if "/pendulum/" in d]
    runs, out = Path(args.runs), Path(args.out)
    t0 = time.perf_counter()
    if not args.report_only:
        jobs = [(d, pr, s) for d in datasets for s in range(args.seeds) for pr in PRECISIONS]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(_train, d, pr, s, runs) for d, pr, s in jobs]
            for i, fut in enumerate(as_completed(futures), 1):
                label, seconds, err = fut.result()
                print(f"[{i}/{len(jobs)}] {label}: {err or 'ok'} ({seconds:.0f} s)", flush=True)
                if err:
                    print(f"bf16_quality: {label} failed: {err}", file=sys.stderr)
                    return 1
    wall = time.perf_counter() - t0

    report = build_report([runs], out=out, group_by="precision",
                          title=f"offrl: CQL fp32 vs bf16 autocast, bundled Pendulum datasets, {args.seeds} seeds")
    summary = report.summary
    lines = ["| dataset | fp32 last score, mean [95% CI] | bf16 last score, mean [95% CI] | bf16 mean within fp32 CI |",
             "|---|---|---|---|"]
    verdicts = []
    for dataset in datasets:
        rows = summary[summary["dataset"] == dataset]
        by = {str(r["group"]).split("=")[-1]: r for _, r in rows.iterrows()}
        if not all(pr in by for pr in PRECISIONS):
            continue
        f, b = by["fp32"], by["bf16"]
        inside = f["last_low"] <= b["last_mean"] <= f["last_high"]
        verdicts.append(inside)
        lines.append(f"| {dataset} | {f['last_mean']:.1f} [{f['last_low']:.1f}, {f['last_high']:.1f}] | "
                     f"{b['last_mean']:.1f} [{b['last_low']:.1f}, {b['last_high']:.1f}] | {'yes' if inside else 'NO'} |")
    table = "\n".join(lines)
    command = shlex.join(["python", "benchmarks/bf16_quality.py", *(argv if argv is not None else sys.argv[1:])])
    (out / "README.md").write_text(
        "# CQL in fp32 vs bf16 autocast on the bundled Pendulum datasets\n\n"
        f"Command: `{command}`\n\nMachine: {cpu_model()}, {os.cpu_count()} cores; each run on one torch thread, "
        f"{args.jobs} runs at a time; {'training ' + format(wall / 60, '.1f') + ' min' if not args.report_only else ''}.\n\n"
        "Scores are normalized (0 = random policy, 100 = the bundled expert), the last evaluation of each run; "
        "mean over seeds with a stratified-bootstrap 95% CI (offrl's report). Criterion (issue 6): the bf16 mean "
        "lies within the fp32 CI.\n\n" + table + "\n\nPlots: index.html.\n")
    print(table)
    print(f"bf16_quality: {sum(verdicts)}/{len(verdicts)} datasets within the fp32 CI; report {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
