"""Evaluation: deterministic env rollouts with normalized scores, and off-policy critic diagnostics."""

from __future__ import annotations

from offrl.evaluation.diagnostics import (
    Critic,
    critic_from_loss,
    eval_diagnostics,
    heldout_split,
    offline_diagnostics,
)
from offrl.evaluation.evaluator import Evaluator
from offrl.evaluation.rollout import EvalResult, Reference, evaluate, normalize, resolve_reference

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
