"""A run's ``summary.json`` (docs/contracts.md) and its ``report.html``: written the same way whatever the
run's source (a dataset, or an env trained in from scratch: ``dataset.id`` ``env:<ID>``, no references)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offrl.config import ENV_PREFIX, TrainerConfig
from offrl.errors import UserError
from offrl.hardware import machine
from offrl.runs.rundir import METRICS_FILE, SUMMARY_FILE

if TYPE_CHECKING:
    from offrl.runs.metrics_log import TidyCSVLogger

__all__ = ["eval_row", "run_summary", "write_report"]


def run_summary(path: Path, cfg: TrainerConfig, parts: Any, status: str, start_step: int, step: int,
                seconds: float, logger: TidyCSVLogger | None, resumed: int) -> dict[str, Any]:
    """summary.json: status, steps, speed, final/best eval, dataset, references, the online phase."""
    from offrl.runs.metrics_log import read_metrics  # torchrl: imported once a run is under way

    metrics = read_metrics(path / METRICS_FILE)
    final = best = recent = trend = critic = None
    if "eval_return_mean" in metrics and metrics["eval_return_mean"].notna().any():
        evals = metrics[metrics["eval_return_mean"].notna()]
        final = eval_row(evals.iloc[-1])
        final.update(_episode_returns(parts, final))
        best = eval_row(evals.loc[evals["eval_return_mean"].idxmax()])
        recent = recent_evals(evals)
        trend = last_third_trend(evals)
        critic = critic_summary(evals.iloc[-1])
    done = step - start_step
    train_seconds = seconds - float(getattr(parts.trainer, "eval_seconds", 0.0))
    if parts.dataset is not None:
        info = parts.dataset.info.to_dict()
        dataset = {"id": parts.dataset.name, "digest": parts.dataset.digest,
                   "mean_return": _mean_return(info.get("episode_return")),
                   "episodes": info.get("episodes"), "transitions": info.get("transitions")}
        ref = {"min": info.get("ref_min_score"), "max": info.get("ref_max_score"), "source": info.get("ref_source"),
               "known": info.get("ref_hint")}  # references offrl has for the env, offered when none were used
    else:  # trained online from scratch in an env
        dataset = {"id": f"{ENV_PREFIX}{parts.env_id}", "digest": None, "mean_return": None, "episodes": 0,
                   "transitions": 0}
        ref = {"min": None, "max": None, "source": None}
    return {
        "status": status,
        "algo": cfg.algo,
        "seed": cfg.seed,
        "steps": step,
        "target_steps": cfg.offline_steps,
        # Training throughput: the time spent evaluating in the env is not counted.
        "updates_per_s": done / train_seconds if train_seconds > 0 and done > 0 else None,
        "wall_time": logger.wall_time if logger is not None else seconds,
        "resumed": resumed,
        "device": parts.device,
        "final": final,
        "best": best,
        "last_evals": recent,
        "trend": trend,
        "critic": critic,
        "threads": _threads(),
        "machines": _machines(path, resumed),
        "dataset": dataset,
        "ref": ref,
        "stop_reason": getattr(parts.trainer, "stop_reason", None),
        "online": _online_summary(parts),
    }


def _machines(path: Path, resumed: int) -> list[str]:
    """The CPUs that trained the run, each once, in order: a run resumed elsewhere lists both (a study that
    spans machines says so in its report)."""
    here = machine()
    before: Any = []
    if resumed:
        try:
            before = json.loads((path / SUMMARY_FILE).read_text()).get("machines") or []
        except (OSError, ValueError, AttributeError):
            before = []
    before = [m for m in before if isinstance(m, str)] if isinstance(before, list) else []
    return before if here in before else [*before, here]


def _online_summary(parts: Any) -> dict[str, Any] | None:
    """Frames, episodes, returns and cumulative regret of the online phase (None for offline runs)."""
    online = getattr(parts, "online", None)
    if online is None:
        return None
    t = online.transitions
    offline = float(online.replay_buffer.offline_fraction) if parts.dataset is not None else 0.0
    return {"frames": int(parts.trainer.frames), "total_frames": online.total_frames, "episodes": t.episodes,
            "mean_return": t.returns_total / t.episodes if t.episodes else None,
            "best_return": t.best_return if t.episodes else None,
            "regret": t.regret if t.ref is not None else None,
            "offline_fraction": offline}


def _episode_returns(parts: Any, final: dict[str, Any]) -> dict[str, Any]:
    """``episode_returns`` of the last evaluation, episode i reset with seed eval.seed + i: from the trainer
    (its evaluator, or the checkpoint it resumed from), so that a killed and resumed run writes what an
    uninterrupted one does; a like-for-like score on any first k episodes."""
    got = getattr(getattr(parts, "trainer", None), "last_eval_returns", None)
    if got is None or got[0] != final.get("step") or len(got[1]) != final.get("episodes"):
        return {}
    return {"episode_returns": [round(float(r), 4) for r in got[1]]}


def _num(row: Any, key: str) -> float | None:
    value = row.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def eval_row(row: Any) -> dict[str, Any]:
    """One evaluation row of metrics.csv as summary.json's ``final``/``best`` entry: the means, the number
    of episodes and the Student-t 95% interval over them (None where not logged: older runs, one episode)."""
    episodes = _num(row, "eval_episodes")
    return {"step": int(row["step"]), "return_mean": _num(row, "eval_return_mean"),
            "return_std": _num(row, "eval_return_std"), "length_mean": _num(row, "eval_length_mean"),
            "normalized_score": _num(row, "eval_normalized_score"),
            "episodes": int(episodes) if episodes is not None else None,
            "return_ci95": [_num(row, "eval_return_ci_low"), _num(row, "eval_return_ci_high")],
            "normalized_ci95": [_num(row, "eval_normalized_ci_low"), _num(row, "eval_normalized_ci_high")]}


#: The report and the score line show the mean of the last this-many evaluations beside the last one.
RECENT_EVALS = 5


def recent_evals(evals: Any, n: int = RECENT_EVALS) -> dict[str, Any]:
    """Mean of the last ``n`` evaluations (fewer when the run has fewer): less luck than the last alone."""
    tail = evals.tail(n)
    mean = lambda key: float(tail[key].mean()) if key in tail and tail[key].notna().any() else None  # noqa: E731
    return {"evaluations": int(len(tail)), "from_step": int(tail["step"].iloc[0]), "to_step": int(tail["step"].iloc[-1]),
            "return_mean": mean("eval_return_mean"), "normalized_score": mean("eval_normalized_score")}


def last_third_trend(evals: Any) -> dict[str, Any] | None:
    """Has the score settled? Its trend over the last third of the run with a 95% interval, and the reading
    (:func:`offrl.evaluation.findings.curve_trend`): normalized where the run has reference scores, else in
    returns, where the tolerance is 5% of the range the curve covers. None without an evaluation."""
    from offrl.evaluation.findings import SETTLED_WITHIN, curve_trend, trend_reading

    normalized = "eval_normalized_score" in evals and evals["eval_normalized_score"].notna().any()
    key = "eval_normalized_score" if normalized else "eval_return_mean"
    rows = evals[evals[key].notna()]
    if not len(rows):
        return None
    values = rows[key].to_numpy(dtype=float)
    change, low, high, n = curve_trend(rows["step"].to_numpy(dtype=float), values)
    tolerance = SETTLED_WITHIN * (100.0 if normalized else float(values.max() - values.min()))
    finite = lambda x: None if math.isnan(x) else float(x)  # noqa: E731
    return {"unit": key.removeprefix("eval_"), "evaluations": n,
            "from_step": int(rows["step"].iloc[len(rows) - n]) if n else None, "to_step": int(rows["step"].iloc[-1]),
            "change": finite(change), "ci95": [finite(low), finite(high)], "tolerance": tolerance,
            "reading": trend_reading(change, low, high, tolerance)}


def critic_summary(row: Any) -> dict[str, Any] | None:
    """The critic's V(s0) on the last evaluation's start states against the discounted return achieved
    from them, with the finding in words (None for runs without a critic diagnostic)."""
    from offrl.evaluation.findings import critic_finding, critic_verdict

    v, achieved = _num(row, "diag_v_s0_eval"), _num(row, "diag_achieved_return_s0")
    if v is None or achieved is None:
        return None
    return {"step": int(row["step"]), "v_s0": v, "achieved_return_s0": achieved,
            "verdict": critic_verdict(v, achieved), "finding": critic_finding(v, achieved)}


def _threads() -> dict[str, Any]:
    """The torch thread count and OpenMP wait policy the run trained with (docs/threads.md)."""
    import os

    import torch

    return {"torch": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "omp_waits": os.environ.get("OFFRL_OMP_WAITS")}


def _mean_return(stats: Any) -> float | None:
    """The behaviour policy's mean episode return from the dataset info (a stats dict or a number)."""
    if stats is None:
        return None
    if isinstance(stats, Mapping):
        stats = stats.get("mean")
    try:
        return float(stats)
    except (TypeError, ValueError):
        return None


def write_report(path: Path) -> None:
    """``report.html`` for the run; a failing report never loses a run (a warning says why)."""
    from offrl.report import write_run_report  # pandas and matplotlib: only once a run has finished

    try:
        write_run_report(path)
    except UserError:
        raise
    except Exception as err:  # the run is complete; say so and keep it
        print(f"offrl: warning: report for {path} failed ({type(err).__name__}: {err})", file=sys.stderr)
