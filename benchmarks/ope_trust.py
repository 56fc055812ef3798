"""How far can `offrl ope` be trusted? The DOPE protocol (Fu et al. 2021) on the bundled datasets.

For each study: train one run keeping a checkpoint every K steps (>= 10 checkpoints), measure each
checkpoint's true return in the env (deterministic episodes), estimate it with FQE on the run's held-out
episodes (`offrl.runs.ope.ope_run`, the code behind `offrl ope --checkpoint all`), and report

* Spearman rank correlation of the FQE estimates with the true discounted returns and with the true
  (undiscounted) normalized scores,
* regret@1: the best checkpoint's true normalized score minus that of the checkpoint FQE ranks first,
* absolute error of the estimate against the true discounted return (raw, and in normalized points),
* how often the bootstrap 95% CI covers the true discounted return.

    PYTHONPATH=. python benchmarks/ope_trust.py --out reports/ope [--work /tmp/ope-trust]

Writes <out>/trust.json (every checkpoint's numbers) and <out>/trust.md (the table docs/ope.md quotes).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

STUDIES = [
    # name, dataset, algo, steps, checkpoint every, extra config
    ("cartpole-dqn", "offrl/cartpole/medium-v0", "dqn", 3000, 250, []),
    ("cartpole-discrete-cql", "offrl/cartpole/mixed-v0", "discrete-cql", 3000, 250, []),
    ("pendulum-cql", "offrl/pendulum/medium-v0", "cql", 3000, 250, []),
]
TRUE_EPISODES, TRUE_SEED = 20, 10_000


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def run_study(name: str, dataset: str, algo: str, steps: int, every: int, extra: list[str], work: Path) -> dict:
    from offrl import train
    from offrl.runs.ope import ope_run
    from offrl.runs.policy import evaluate_checkpoint

    found = [p for p in (work / "runs").glob(f"*/*/{name}") if (p / "summary.json").exists()]
    if found:
        run_dir = found[0]
    else:
        t0 = time.time()
        run_dir = train(dataset, algo, out=work / "runs", name=name, steps=steps, eval_every=steps, eval_episodes=5,
                        progress=False, cache_dir=work / "cache",
                        dotlist=[f"save_trainer_interval={every}", "keep_checkpoints=true", *extra]).dir
        print(f"{name}: trained in {time.time() - t0:.0f} s", flush=True)
    truth_file = run_dir / "truth.json"
    truth = json.loads(truth_file.read_text()) if truth_file.exists() else {}
    for ckpt in sorted((run_dir / "checkpoints").glob("step_*.pt")):
        if ckpt.name in truth:
            continue
        result, loaded = evaluate_checkpoint(ckpt, episodes=TRUE_EPISODES, seed=TRUE_SEED)
        truth[ckpt.name] = {"step": loaded.step, "return": result.mean, "normalized": result.normalized_mean,
                            "discounted": float(np.mean(result.discounted_returns)), "gamma": result.gamma}
        truth_file.write_text(json.dumps(truth, indent=1))
    t0 = time.time()
    report = ope_run(run_dir, checkpoint="all")
    fqe_seconds = time.time() - t0
    return summarize(name, dataset, algo, steps, report["data"], rows_of(report, truth), fqe_seconds)


def d3rlpy_fqe(result: dict, work: Path, peer_python: str, steps: int, peer_args: list[str]) -> dict:
    """d3rlpy's FQE (``benchmarks/d3rlpy_fqe_peer.py``, in the peer's environment) on the same checkpoints and
    the same held-out episodes, each checkpoint's policy exported with ``offrl export --format torchscript``;
    the same DOPE metrics against the same truth."""
    import subprocess

    import torch

    from offrl.runs.ope import evaluation_rows
    from offrl.runs.policy import load_policy
    from offrl.runs.shipping import export_policy

    run_dir = next(p for p in (work / "runs").glob(f"*/*/{result['study']}") if (p / "summary.json").exists())
    loaded = load_policy(run_dir)
    rows, _, _ = evaluation_rows(loaded, "heldout")
    order = np.lexsort((rows["step"].numpy(), rows["episode"].numpy()))
    rows = rows[torch.as_tensor(order)]
    episode = rows["episode"].numpy()
    last = np.r_[episode[1:] != episode[:-1], True]
    terminated = rows["next", "terminated"].reshape(-1).numpy().astype(bool)
    discrete = not torch.is_floating_point(rows["action"])
    space = loaded.dataset.action_space
    peer_dir = work / "d3rlpy-fqe" / result["study"]
    peer_dir.mkdir(parents=True, exist_ok=True)
    np.savez(peer_dir / "episodes.npz", observations=rows["observation"].numpy(),
             actions=rows["action"].reshape(len(rows), -1).numpy() if not discrete else rows["action"].reshape(-1).numpy(),
             rewards=rows["next", "reward"].reshape(-1).numpy(), terminals=terminated,
             timeouts=last & ~terminated, n_actions=int(space.n) if discrete else 0)
    policies = []
    for row in result["rows"]:
        out = peer_dir / f"step_{row['step']}.pt"
        if not out.exists():
            export_policy(run_dir / "checkpoints" / f"step_{row['step']}.pt", "torchscript", out)
        policies.append(str(out))
    gamma = float(result["rows"][0]["gamma"])
    cmd = [peer_python, str(Path(__file__).with_name("d3rlpy_fqe_peer.py")), "--data", str(peer_dir / "episodes.npz"),
           "--gamma", str(gamma), "--steps", str(steps), "--out", str(peer_dir / "d3rlpy_fqe.json"), *peer_args,
           *(["--discrete"] if discrete else []), "--policies", *policies]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    seconds = time.time() - t0
    peer = json.loads((peer_dir / "d3rlpy_fqe.json").read_text())
    est = [r["value"] for r in peer["results"]]
    truth = result["rows"]
    chosen = truth[int(np.argmax(est))]
    best = max(truth, key=lambda r: r["normalized"])
    return {"version": peer["d3rlpy"], "steps": steps, "episodes": peer["episodes"], "config": peer["config"],
            "values": est, "spearman_discounted": spearman(est, [r["discounted"] for r in truth]),
            "spearman_normalized": spearman(est, [r["normalized"] for r in truth]),
            "regret_at_1": best["normalized"] - chosen["normalized"], "selected_step": chosen["step"],
            "abs_error_discounted": float(np.mean([abs(v - r["discounted"]) for v, r in zip(est, truth, strict=True)])),
            "seconds": round(seconds, 1)}


def rows_of(report: dict, truth: dict) -> list[dict]:
    rows = []
    for r in report["results"]:
        t = truth[Path(r["checkpoint"]).name]
        rows.append({**t, "fqe": r["value"], "ci": [r["ci_low"], r["ci_high"]], "fqe_normalized": r["normalized"],
                     "diverged": r["diverged"], "td_error_relative": r["td_error_relative"],
                     "spectral_radius": r["spectral_radius"],
                     "clipped_fraction": r.get("clipped_fraction")})
    return rows


def summarize(name: str, dataset: str, algo: str, steps: int, data: str, rows: list[dict], fqe_seconds: float) -> dict:
    """DOPE metrics over the non-diverged checkpoints (what a user would rank), Spearman also over all."""
    ok = [r for r in rows if not r["diverged"]]
    est = [r["fqe"] for r in ok]
    chosen = max(ok, key=lambda r: r["fqe"])
    best = max(rows, key=lambda r: r["normalized"])
    norm_err = [abs(r["fqe_normalized"] - r["normalized"]) for r in ok if r["fqe_normalized"] is not None]
    return {
        "study": name, "dataset": dataset, "algo": algo, "steps": steps, "checkpoints": len(rows),
        "diverged": len(rows) - len(ok), "data": data,
        "spearman_all_discounted": spearman([r["fqe"] for r in rows], [r["discounted"] for r in rows]),
        "spearman_discounted": spearman(est, [r["discounted"] for r in ok]),
        "spearman_normalized": spearman(est, [r["normalized"] for r in ok]),
        "regret_at_1": best["normalized"] - chosen["normalized"],
        "selected_step": chosen["step"], "best_step": best["step"],
        "selected_normalized": chosen["normalized"], "best_normalized": best["normalized"],
        "last_normalized": max(rows, key=lambda r: r["step"])["normalized"],
        "abs_error_discounted": float(np.mean([abs(r["fqe"] - r["discounted"]) for r in ok])),
        "abs_error_normalized_points": float(np.mean(norm_err)) if norm_err else None,
        "ci_coverage": float(np.mean([r["ci"][0] <= r["discounted"] <= r["ci"][1] for r in ok])),
        "true_normalized_range": [min(r["normalized"] for r in rows), max(r["normalized"] for r in rows)],
        "fqe_seconds_all_checkpoints": round(fqe_seconds, 1),
        "rows": rows,
    }


def markdown(results: list[dict], machine: str) -> str:
    lines = [
        "# FQE trust on the bundled datasets (DOPE protocol)", "",
        f"`python benchmarks/ope_trust.py` on {machine}. One run per study, >= 12 kept checkpoints; "
        f"truth: {TRUE_EPISODES} deterministic env episodes per checkpoint (seeds {TRUE_SEED}+i); FQE: "
        "`offrl ope RUN --checkpoint all` on the run's held-out episodes (defaults: 20 bootstrap fits).", "",
        "| study | checkpoints | true normalized range | Spearman, all (discounted) | Spearman, kept (discounted) | "
        "Spearman, kept (normalized) | regret@1 (points) | abs error (discounted) | abs error (normalized points) | "
        "CI coverage | FQE s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lo, hi = r["true_normalized_range"]
        lines.append(
            f"| {r['study']} ({r['dataset']}) | {r['checkpoints']} ({r['diverged']} diverged) | {lo:.1f}..{hi:.1f} | "
            f"{r['spearman_all_discounted']:.2f} | {r['spearman_discounted']:.2f} | {r['spearman_normalized']:.2f} | {r['regret_at_1']:.1f} | "
            f"{r['abs_error_discounted']:.1f} | {_f(r['abs_error_normalized_points'])} | "
            f"{100 * r['ci_coverage']:.0f}% | {r['fqe_seconds_all_checkpoints']} |")
    lines += ["", "Targets (issue 16): Spearman >= 0.7 over >= 10 checkpoints, regret@1 <= 10 points. \"kept\": the "
              "checkpoints whose fit did not diverge (what `--checkpoint all` ranks); nan: their true returns tie.",
              "FQE s: wall seconds for all checkpoints on a shared, heavily loaded machine.", ""]
    peers = [r for r in results if r.get("d3rlpy")]
    if peers:
        d = peers[0]["d3rlpy"]
        lines += [f"### d3rlpy {d['version']}'s FQE on the same checkpoints and episodes", "",
                  "`python benchmarks/ope_trust.py --resummarize reports/ope/trust.json --d3rlpy-python PY "
                  "[--d3rlpy-args ARGS]`: each "
                  "checkpoint exported with `offrl export --format torchscript`, then d3rlpy's `FQE` / `DiscreteFQE` "
                  f"(`FQEConfig` with {json.dumps(d['config'])}, the rest d3rlpy's defaults) for {d['steps']} "
                  "steps on the same "
                  "held-out episodes (its estimate: mean Q(s0, pi(s0)); no interval: d3rlpy gives none).", "",
                  "| study | estimator | Spearman (discounted) | Spearman (normalized) | regret@1 (points) | "
                  "abs error (discounted) | s, all checkpoints |", "|---|---|---|---|---|---|---|"]
        for r in peers:
            p = r["d3rlpy"]
            lines.append(f"| {r['study']} | offrl FQE | {r['spearman_discounted']:.2f} | {r['spearman_normalized']:.2f} | "
                         f"{r['regret_at_1']:.1f} | {r['abs_error_discounted']:.1f} | {r['fqe_seconds_all_checkpoints']} |")
            lines.append(f"| {r['study']} | d3rlpy FQE | {p['spearman_discounted']:.2f} | {p['spearman_normalized']:.2f} | "
                         f"{p['regret_at_1']:.1f} | {p['abs_error_discounted']:.1f} | {p['seconds']} |")
        lines.append("")
    for r in results:
        lines.append(f"## {r['study']}\n\nData: {r['data']}. Selected step {r['selected_step']} "
                     f"(true normalized {r['selected_normalized']:.1f}), best step {r['best_step']} "
                     f"({r['best_normalized']:.1f}), last {r['last_normalized']:.1f}.\n")
        peer = (r.get("d3rlpy") or {}).get("values")
        lines.append("| step | true return | true normalized | true discounted | FQE [95% CI] | FQE normalized |"
                     + (" d3rlpy FQE |" if peer else ""))
        lines.append("|---|---|---|---|---|---|" + ("---|" if peer else ""))
        for i, row in enumerate(r["rows"]):
            flag = " (diverged)" if row["diverged"] else ""
            lines.append(f"| {row['step']} | {row['return']:.1f} | {row['normalized']:.1f} | {row['discounted']:.2f} | "
                         f"{row['fqe']:.2f} [{row['ci'][0]:.2f}, {row['ci'][1]:.2f}]{flag} | "
                         f"{_f(row['fqe_normalized'])} |" + (f" {peer[i]:.2f} |" if peer else ""))
        lines.append("")
    return "\n".join(lines) + "\n"


def _f(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/ope")
    parser.add_argument("--work", default="/tmp/ope-trust")
    parser.add_argument("--only", default=None, help="comma-separated study names")
    parser.add_argument("--d3rlpy-python", default=None, metavar="PY",
                        help="also run d3rlpy's FQE (in that interpreter's environment) on the same checkpoints")
    parser.add_argument("--d3rlpy-steps", type=int, default=3000, help="d3rlpy FQE gradient steps (default 3000)")
    parser.add_argument("--d3rlpy-args", default="", help="extra arguments for benchmarks/d3rlpy_fqe_peer.py, e.g. "
                        "'--lr 1e-3 --target-update-interval 10' (offrl's FQE schedule)")
    parser.add_argument("--resummarize", default=None, metavar="TRUST.JSON",
                        help="recompute the metrics and trust.md from a previous trust.json (no training, no FQE)")
    args = parser.parse_args()
    if args.resummarize:
        old = json.loads(Path(args.resummarize).read_text())
        results = [summarize(r["study"], r["dataset"], r["algo"], r["steps"], r["data"], r["rows"],
                             r["fqe_seconds_all_checkpoints"]) for r in old]
        for new, r in zip(results, old, strict=True):
            if args.d3rlpy_python:
                new["d3rlpy"] = d3rlpy_fqe(new, Path(args.work), args.d3rlpy_python, args.d3rlpy_steps,
                                           args.d3rlpy_args.split())
            elif r.get("d3rlpy"):
                new["d3rlpy"] = r["d3rlpy"]
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "trust.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / "trust.md").write_text(markdown(results, "x86_64 (2-core AMD EPYC, shared), torch 2.13.0+cpu"))
        return
    import torch

    torch.set_num_threads(1)
    work, out = Path(args.work), Path(args.out)
    wanted = set(args.only.split(",")) if args.only else None
    results = [run_study(*s, work=work) for s in STUDIES if wanted is None or s[0] in wanted]
    if args.d3rlpy_python:
        for r in results:
            r["d3rlpy"] = d3rlpy_fqe(r, work, args.d3rlpy_python, args.d3rlpy_steps, args.d3rlpy_args.split())
    machine = f"{platform.processor() or platform.machine()} (2-core AMD EPYC, shared), torch {torch.__version__}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "trust.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "trust.md").write_text(markdown(results, machine))
    for r in results:
        print(f"{r['study']}: spearman {r['spearman_discounted']:.2f}/{r['spearman_normalized']:.2f}, "
              f"regret@1 {r['regret_at_1']:.1f}, abs err {r['abs_error_discounted']:.1f}")


if __name__ == "__main__":
    main()
