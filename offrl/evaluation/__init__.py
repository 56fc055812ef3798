"""Evaluation: deterministic env rollouts with normalized scores, and off-policy critic diagnostics.

Names are imported lazily (PEP 562) so that ``offrl eval``'s error paths do not wait for torch/torchrl.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Critic",
    "EvalResult",
    "Evaluator",
    "Reference",
    "critic_from_loss",
    "eval_diagnostics",
    "evaluate",
    "heldout_split",
    "normalize",
    "offline_diagnostics",
    "resolve_reference",
]

_WHERE = {
    "Critic": "offrl.evaluation.diagnostics",
    "critic_from_loss": "offrl.evaluation.diagnostics",
    "eval_diagnostics": "offrl.evaluation.diagnostics",
    "heldout_split": "offrl.evaluation.diagnostics",
    "offline_diagnostics": "offrl.evaluation.diagnostics",
    "Evaluator": "offrl.evaluation.evaluator",
    "EvalResult": "offrl.evaluation.rollout",
    "Reference": "offrl.evaluation.rollout",
    "evaluate": "offrl.evaluation.rollout",
    "normalize": "offrl.evaluation.rollout",
    "resolve_reference": "offrl.evaluation.rollout",
}

if TYPE_CHECKING:
    from offrl.evaluation.diagnostics import (
        Critic,
        critic_from_loss,
        eval_diagnostics,
        heldout_split,
        offline_diagnostics,
    )
    from offrl.evaluation.evaluator import Evaluator
    from offrl.evaluation.rollout import EvalResult, Reference, evaluate, normalize, resolve_reference


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'offrl.evaluation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
