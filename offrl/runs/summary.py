"""A run's ``summary.json`` (docs/contracts.md) and its ``report.html``: written the same way whatever the
run's source (a dataset, or an env trained in from scratch: ``dataset.id`` ``env:<ID>``, no references)."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offrl.config import ENV_PREFIX, TrainerConfig
from offrl.errors import UserError
from offrl.runs.rundir import METRICS_FILE

if TYPE_CHECKING:
    from offrl.runs.metrics_log import TidyCSVLogger

__all__ = ["eval_row", "run_summary", "write_report"]


def run_summary(path: Path, cfg: TrainerConfig, parts: Any, status: str, start_step: int, step: int,
                seconds: float, logger: TidyCSVLogger | None, resumed: int) -> dict[str, Any]:
    """summary.json: status, steps, speed, final/best eval, dataset, references, the online phase."""
    from offrl.runs.metrics_log import read_metrics  # torchrl: imported once a run is under way

    metrics = read_metrics(path / METRICS_FILE)
    final = best = None
    if "eval_return_mean" in metrics and metrics["eval_return_mean"].notna().any():
        evals = metrics[metrics["eval_return_mean"].notna()]
        final = eval_row(evals.iloc[-1])
        best = eval_row(evals.loc[evals["eval_return_mean"].idxmax()])
    done = step - start_step
    train_seconds = seconds - float(getattr(parts.trainer, "eval_seconds", 0.0))
    if parts.dataset is not None:
        info = parts.dataset.info.to_dict()
        dataset = {"id": parts.dataset.name, "digest": parts.dataset.digest,
                   "mean_return": _mean_return(info.get("episode_return")),
                   "episodes": info.get("episodes"), "transitions": info.get("transitions")}
        ref = {"min": info.get("ref_min_score"), "max": info.get("ref_max_score"), "source": info.get("ref_source")}
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
        "dataset": dataset,
        "ref": ref,
        "stop_reason": getattr(parts.trainer, "stop_reason", None),
        "online": _online_summary(parts),
    }


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


def eval_row(row: Any) -> dict[str, Any]:
    """One evaluation row of metrics.csv as summary.json's ``final``/``best`` entry."""
    def num(key: str) -> float | None:
        value = row.get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    return {"step": int(row["step"]), "return_mean": num("eval_return_mean"), "return_std": num("eval_return_std"),
            "length_mean": num("eval_length_mean"), "normalized_score": num("eval_normalized_score")}


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
