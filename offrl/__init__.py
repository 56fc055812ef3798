"""offrl: offline reinforcement learning experiments on datasets (CQL, discrete CQL, DQN) on torchrl.

The public API is the list in ``__all__`` (pinned by tests/test_public_api.py). Names are imported lazily
(PEP 562) so that ``import offrl`` and the CLI's error paths do not pay for importing torch and torchrl.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from offrl.errors import UserError
from offrl.version import __version__

_WHERE = {
    # data
    "load_dataset": "offrl.data",
    "OfflineDataset": "offrl.data",
    "DatasetInfo": "offrl.data",
    "make_bundled": "offrl.datagen.bundled",
    "list_bundled": "offrl.data.catalog",
    "reference_scores": "offrl.data.references",
    # algorithms and trainers
    "CQLConfig": "offrl.algos",
    "DiscreteCQLConfig": "offrl.algos",
    "DQNConfig": "offrl.algos",
    "CQLTrainer": "offrl.trainers",
    "DQNTrainer": "offrl.trainers",
    # experiments
    "CQLTrainerConfig": "offrl.config",
    "DQNTrainerConfig": "offrl.config",
    "train": "offrl.runs.training",
    "Run": "offrl.runs.rundir",
    # evaluation and reports
    "evaluate": "offrl.evaluation",
    "EvalResult": "offrl.evaluation",
    "Evaluator": "offrl.evaluation",
    "build_report": "offrl.report",
    "write_run_report": "offrl.report",
}

__all__ = [
    "CQLConfig",
    "CQLTrainer",
    "CQLTrainerConfig",
    "DQNConfig",
    "DQNTrainer",
    "DQNTrainerConfig",
    "DatasetInfo",
    "DiscreteCQLConfig",
    "EvalResult",
    "Evaluator",
    "OfflineDataset",
    "Run",
    "UserError",
    "__version__",
    "build_report",
    "evaluate",
    "list_bundled",
    "load_dataset",
    "make_bundled",
    "reference_scores",
    "train",
    "write_run_report",
]

if TYPE_CHECKING:
    from offrl.algos import CQLConfig, DiscreteCQLConfig, DQNConfig
    from offrl.config import CQLTrainerConfig, DQNTrainerConfig
    from offrl.data import DatasetInfo, OfflineDataset, load_dataset
    from offrl.data.catalog import list_bundled
    from offrl.data.references import reference_scores
    from offrl.datagen.bundled import make_bundled
    from offrl.evaluation import EvalResult, Evaluator, evaluate
    from offrl.report import build_report, write_run_report
    from offrl.runs.rundir import Run
    from offrl.runs.training import train
    from offrl.trainers import CQLTrainer, DQNTrainer


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # cache: later look-ups skip __getattr__
        return value
    raise AttributeError(f"module 'offrl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
