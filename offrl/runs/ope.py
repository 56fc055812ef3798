"""``offrl ope``: off-policy evaluation of a run's checkpoints from its data alone (FQE,
:mod:`offrl.evaluation.fqe`), checkpoint ranking, and ``offrl train --select fqe``'s ``selected`` entry.

Data: the run's held-out episodes (the split :mod:`offrl.runs.assemble` kept out of training:
``eval.heldout_fraction`` of the episodes, seeded by the dataset alone), or every episode with ``on="all"``
(said so: FQE then reads the training data too). A run that held nothing out (``eval.interval`` 0 or
``eval.heldout_fraction`` 0) is evaluated on all its episodes, and the result says so.

The estimate is the policy's *discounted* return (the run's γ) from the data's initial states. Its
normalized score maps the dataset's reference returns to discounted values as if their reward were spread
evenly over the env's time limit H (``ref · (1 - γ^H) / (H (1 - γ))``): exact for a constant per-step reward,
an approximation otherwise, and monotone, so rankings do not depend on it (docs/ope.md).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from offrl.errors import UserError
from offrl.runs.rundir import CHECKPOINT_DIR, LATEST_CHECKPOINT

__all__ = ["checkpoint_files", "evaluation_rows", "ope_run", "select_checkpoint"]

_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_files(run_dir: Path, which: str) -> list[tuple[int | None, Path]]:
    """``latest``, ``all`` (every kept ``step_<N>.pt``, by step) or a step number -> [(step, path)]."""
    folder = run_dir / CHECKPOINT_DIR
    kept = sorted((int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := _STEP_FILE.match(p.name)))
    if which == "latest":
        if not (folder / LATEST_CHECKPOINT).exists():
            raise UserError(f"{run_dir}: no {CHECKPOINT_DIR}/{LATEST_CHECKPOINT} in this run directory; the run "
                            "saved no checkpoint yet")
        return [(None, folder / LATEST_CHECKPOINT)]
    if which == "all":
        if not kept:
            raise UserError(f"--checkpoint all: {folder} keeps no step_<N>.pt checkpoints (train with "
                            "--set keep_checkpoints=true); use --checkpoint latest")
        return list(kept)
    if not which.isdigit():
        raise UserError(f"--checkpoint {which}: expected latest, all or a step number")
    for step, path in kept:
        if step == int(which):
            return [(step, path)]
    have = ", ".join(str(s) for s, _ in kept) or "none"
    raise UserError(f"--checkpoint {which}: no step_{which}.pt in {folder} (kept steps: {have})")


def evaluation_rows(loaded: Any, on: str) -> tuple[Any, str, bool]:
    """(TED rows, what they are, whether the policy was trained on them)."""
    if loaded.dataset is None:
        raise UserError(f"{loaded.run_dir}: trained online from scratch, so there is no dataset to evaluate "
                        "on; use offrl eval (the env) instead")
    data, cfg = loaded.dataset.data, loaded.config
    n_ep = int(data["episode"].unique().numel())
    if on == "all":
        return data, f"all {n_ep} episodes (--on all: including the ones the policy trained on)", True
    if on != "heldout":
        raise UserError(f"--on {on}: expected heldout or all")
    if cfg.eval.interval > 0 and cfg.eval.heldout_fraction > 0:
        from offrl.evaluation import heldout_split

        _, idx = heldout_split(data, fraction=cfg.eval.heldout_fraction, seed=0)
        if idx.numel():
            rows = data[idx]
            return (rows, f"the run's held-out split: {int(rows['episode'].unique().numel())} of {n_ep} episodes "
                    f"(eval.heldout_fraction {cfg.eval.heldout_fraction:g}), not trained on", False)
    return data, (f"all {n_ep} episodes: the run held none out (eval.heldout_fraction 0 or eval.interval 0), "
                  "so FQE reads the data the policy trained on"), True


def _discounted_ref(ref: float | None, gamma: float, horizon: int | None) -> float | None:
    if ref is None or not horizon:
        return None
    return float(ref) * (1 - gamma ** horizon) / (horizon * (1 - gamma))


def _estimate(loaded: Any, rows: Any, *, bootstrap: int, seed: int, steps: int) -> dict[str, Any]:
    import torch

    from offrl.evaluation.fqe import fit_fqe
    from offrl.runs.shipping import policy_actions_of

    ds = loaded.dataset
    gamma = float(getattr(loaded.config.algo_config, "gamma", None) or 0.99)
    space = ds.action_space
    kwargs: dict[str, Any] = ({"n_actions": int(space.n)} if not torch.is_floating_point(rows["action"])
                              else {"action_low": space.low, "action_high": space.high})
    result = fit_fqe(rows, lambda o: torch.as_tensor(policy_actions_of(loaded.policy, o)), gamma=gamma,
                     bootstrap=bootstrap, seed=seed, steps=steps, **kwargs)
    out = {"step": loaded.step, "checkpoint": str(loaded.checkpoint), **result.to_dict()}
    info = ds.info
    horizon = getattr(info, "max_episode_steps", None)
    lo, hi = (_discounted_ref(getattr(info, k, None), gamma, horizon) for k in ("ref_min_score", "ref_max_score"))

    def norm(v: float | None) -> float | None:
        if v is None or lo is None or hi is None or hi == lo or not math.isfinite(v):
            return None
        return 100.0 * (v - lo) / (hi - lo)

    out.update(normalized=norm(out["value"]), normalized_ci_low=norm(out["ci_low"]),
               normalized_ci_high=norm(out["ci_high"]), horizon=horizon)
    return out


def ope_run(target: str | os.PathLike[str], *, checkpoint: str = "latest", on: str = "heldout",
            bootstrap: int = 20, seed: int = 0, steps: int = 3000) -> dict[str, Any]:
    """FQE of one run's checkpoint(s); with several, ``ranking`` lists their steps best first."""
    from offrl.runs.policy import load_policy

    path = Path(target)
    if not (path.is_dir() and (path / "config.yaml").is_file()):
        raise UserError(f"{path}: not an offrl run directory (it needs config.yaml); pass a folder printed by "
                        "'offrl train'")
    if bootstrap < 0:
        raise UserError(f"--bootstrap: must be 0 or more, got {bootstrap}")
    if steps < 1:
        raise UserError(f"--steps: must be 1 or more, got {steps}")
    if on not in ("heldout", "all"):
        raise UserError(f"--on {on}: expected heldout or all")
    files = checkpoint_files(path, checkpoint)
    results, data_note, trained_on = [], "", False
    for _, ckpt in files:
        loaded = load_policy(ckpt)
        rows, data_note, trained_on = evaluation_rows(loaded, on)
        results.append(_estimate(loaded, rows, bootstrap=bootstrap, seed=seed, steps=steps))
    ranked = sorted((r for r in results if not r["diverged"] and r["value"] is not None),
                    key=lambda r: -r["value"])
    return {"run_dir": str(path), "data": data_note, "trained_on_data": trained_on, "method": "fqe",
            "results": results, "ranking": [r["step"] for r in ranked]}


def select_checkpoint(run_dir: Path, *, bootstrap: int = 20, seed: int = 0, steps: int = 3000) -> dict[str, Any]:
    """``offrl train --select fqe``: the kept checkpoint with the highest FQE estimate (diverged fits
    excluded), with its env score from metrics.csv when the run evaluated at that step, else measured with the
    run's eval settings."""
    report = ope_run(run_dir, checkpoint="all", bootstrap=bootstrap, seed=seed, steps=steps)
    if not report["ranking"]:
        raise UserError(f"{run_dir}: FQE diverged on every checkpoint; nothing to select (see offrl ope "
                        f"{run_dir} --checkpoint all)")
    step = report["ranking"][0]
    chosen = next(r for r in report["results"] if r["step"] == step)
    score = _env_score(run_dir, step, Path(chosen["checkpoint"]))
    return {"by": "fqe", "step": step, "fqe_value": chosen["value"], "fqe_ci": [chosen["ci_low"], chosen["ci_high"]],
            "fqe_normalized": chosen["normalized"], "data": report["data"], "candidates": len(report["results"]),
            **score}


def _env_score(run_dir: Path, step: int, ckpt: Path) -> dict[str, Any]:
    from offrl.runs.metrics_log import read_metrics
    from offrl.runs.rundir import METRICS_FILE
    from offrl.runs.summary import eval_row

    metrics = read_metrics(run_dir / METRICS_FILE)
    if "eval_return_mean" in metrics:
        rows = metrics[(metrics["step"] == step) & metrics["eval_return_mean"].notna()]
        if len(rows):
            row = eval_row(rows.iloc[-1])
            return {k: row[k] for k in ("return_mean", "return_std", "normalized_score")} | {"score_from": "metrics.csv"}
    from offrl.runs.policy import evaluate_checkpoint, load_policy

    cfg = load_policy(ckpt).config
    result, _ = evaluate_checkpoint(ckpt, episodes=cfg.eval.episodes, seed=cfg.eval.seed)
    norm = result.normalized_mean
    return {"return_mean": result.mean, "return_std": result.std,
            "normalized_score": norm if math.isfinite(norm) else None,
            "score_from": f"env evaluation ({cfg.eval.episodes} episodes from seed {cfg.eval.seed})"}
