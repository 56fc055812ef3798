"""Real run directories, written the way docs/contracts.md says trainers write them (shared by the report tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REF = {"offrl/pendulum/medium-v0": (-1500.0, -150.0), "offrl/cartpole/mixed-v0": (9.0, 500.0)}


def make_run(
    root: Path,
    *,
    dataset: str = "offrl/pendulum/medium-v0",
    algo: str = "cql",
    seed: int = 0,
    steps: int = 1000,
    log_every: int = 100,
    eval_every: int = 200,
    final_score: float = 60.0,
    refs: bool = True,
    status: str | None = "completed",
    online_from: int | None = None,
    extra_config: dict | None = None,
    nan_loss_from: int | None = None,
    stop_at: int | None = None,
    episodes: int | None = None,
    v_s0_eval: float | None = None,
    plateau_from: float | None = None,
) -> Path:
    """One run dir: ``status=None`` leaves no summary.json (a crashed or running run). ``episodes``: log
    the episode count and the 95% interval columns (runs before issue 18 have neither). The evaluation score
    rises linearly to ``final_score``, or with ``plateau_from`` (a fraction of the run) only until then."""
    run = root / dataset.replace("/", "__") / algo / f"seed{seed}-20260101-000000"
    run.mkdir(parents=True)
    lo, hi = REF.get(dataset, (0.0, 100.0))
    config = {
        "dataset": {"id": dataset, "digest": "ab" * 16, "path": f"/data/{dataset}",
                    "ref_min_score": None, "ref_max_score": None},
        "algo": algo, "seed": seed, "offline_steps": steps, "batch_size": 256,
        "eval": {"interval": eval_every, "episodes": 10, "final_episodes": episodes or 20, "seed": 0,
                 "heldout_fraction": 0.05},
        algo.replace("-", "_"): {"lr": 3e-4, "min_q_weight": 5.0, **(extra_config or {})},
        "versions": {"offrl": "0.1.0", "torch": "2.13.0"}, "command": ["offrl", "train"], "created": "2026-01-01",
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(log_every, (stop_at or steps) + 1, log_every):
        frac = step / steps
        row = {"step": step, "phase": "online" if online_from and step >= online_from else "offline",
               "wall_time": step / 50.0, "loss_qvalue": 2.0 / frac + rng.normal(0, 0.05),
               "loss_actor": -frac * 10, "loss_cql": 1.0 - 0.5 * frac, "alpha": 0.2 * (1 - frac) + 0.01,
               "alpha_prime": 1.0 + frac, "grad_norm": 1.0, "q_data_mean": 10 * frac, "updates_per_s": 50.0}
        if algo in ("dqn", "discrete-cql"):  # value-based: no actor, no entropy temperature, no Lagrange
            for key in ("loss_actor", "alpha", "alpha_prime"):
                row.pop(key)
        if nan_loss_from is not None and step >= nan_loss_from:
            row["loss_qvalue"] = float("nan")
        if step % eval_every == 0:
            score = final_score * min(frac / (plateau_from or 1.0), 1.0) + rng.normal(0, 2.0)
            ret = lo + score / 100 * (hi - lo)
            row.update({"eval_return_mean": ret, "eval_return_std": 5.0, "eval_length_mean": 200.0,
                        "eval_normalized_score": score if refs else float("nan"),
                        "diag_td_error": 1.0 / frac, "diag_q_data": -300 * frac, "diag_q_policy": -280 * frac,
                        "diag_v_s0": -500 + 100 * frac, "diag_mc_return_s0": -600.0,
                        "diag_achieved_return_s0": -700 + 150 * frac,
                        "diag_v_s0_eval": -520 + 100 * frac if v_s0_eval is None else v_s0_eval})
            if episodes is not None:
                half = 30.0 / episodes ** 0.5
                row.update({"eval_episodes": episodes, "eval_normalized_ci_low": score - half,
                            "eval_normalized_ci_high": score + half})
        rows.append(row)
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    if status is not None:
        evals = [r for r in rows if "eval_return_mean" in r]
        best = max(evals, key=lambda r: r["eval_return_mean"])
        pick = lambda r: {"step": r["step"], "return_mean": r["eval_return_mean"], "return_std": 5.0,  # noqa: E731
                          "normalized_score": r["eval_normalized_score"] if refs else None}
        summary = {"status": status, "algo": algo, "seed": seed, "steps": steps, "updates_per_s": 50.0,
                   "wall_time": steps / 50.0, "final": pick(evals[-1]), "best": pick(best),
                   "dataset": {"id": dataset, "digest": "ab" * 16, "mean_return": lo + 0.4 * (hi - lo)},
                   "ref": {"min": lo, "max": hi, "source": "dataset metadata"} if refs else
                          {"min": None, "max": None, "source": None}}
        (run / "summary.json").write_text(json.dumps(summary))
    return run
