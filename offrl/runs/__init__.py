"""The application layer: the one place that assembles a run from its source (a dataset, or an env to
train in from scratch), trains and resumes it, writes its run directory and summary, and restores a saved
policy. ``offrl train``, ``offrl eval``, ``--seeds`` and the Python API all go through it.

* :mod:`~offrl.runs.compose`: the run's config and source, every input checked before anything is written.
* :mod:`~offrl.runs.assemble`: config + source -> algorithm parts, replay buffer, evaluator, online phase,
  trainer.
* :mod:`~offrl.runs.training`: :func:`train` (new runs and ``resume=``).
* :mod:`~offrl.runs.vectorized`: :func:`train_vectorized` / :func:`resume_vectorized` (several seeds as one
  batched model, ``--seeds N --vectorize``).
* :mod:`~offrl.runs.rundir`: the run directory's layout, atomic creation, and :class:`Run` to read it back.
* :mod:`~offrl.runs.metrics_log`: the tidy ``metrics.csv`` logger and :func:`read_metrics`.
* :mod:`~offrl.runs.summary`: ``summary.json`` and ``report.html``.
* :mod:`~offrl.runs.policy`: :func:`load_policy` and :func:`evaluate_checkpoint`.

Names are imported lazily (PEP 562): ``offrl train --resume typo`` fails before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "Run": "offrl.runs.rundir",
    "train": "offrl.runs.training",
    "compose_run_config": "offrl.runs.compose",
    "TrainerComponents": "offrl.runs.assemble",
    "build_components": "offrl.runs.assemble",
    "LoadedPolicy": "offrl.runs.policy",
    "evaluate_checkpoint": "offrl.runs.policy",
    "load_policy": "offrl.runs.policy",
    "read_metrics": "offrl.runs.metrics_log",
    "train_vectorized": "offrl.runs.vectorized",
    "resume_vectorized": "offrl.runs.vectorized",
}

__all__ = [
    "LoadedPolicy",
    "Run",
    "TrainerComponents",
    "build_components",
    "compose_run_config",
    "evaluate_checkpoint",
    "load_policy",
    "read_metrics",
    "resume_vectorized",
    "train",
    "train_vectorized",
]

if TYPE_CHECKING:
    from offrl.runs.assemble import TrainerComponents, build_components
    from offrl.runs.compose import compose_run_config
    from offrl.runs.metrics_log import read_metrics
    from offrl.runs.policy import LoadedPolicy, evaluate_checkpoint, load_policy
    from offrl.runs.rundir import Run
    from offrl.runs.training import train
    from offrl.runs.vectorized import resume_vectorized, train_vectorized


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'offrl.runs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
