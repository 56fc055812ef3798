"""The valid range of every numeric and choice field of a run's config, checked before anything is built.

OmegaConf checks types; this module checks values: a learning rate of NaN or -1, a discount of 1.5, a
hidden layer of width 0 would otherwise train (to NaN, or to nothing) and exit 0. Each rule names the key
as ``--set`` spells it. Floats must be finite everywhere (``nan``/``inf`` parse as YAML floats).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from offrl.config.algos import ACTOR_STDS, BACKUP_ACTIONS, UPDATE_ORDERS
from offrl.errors import UserError

__all__ = ["ACTIVATION_CHOICES", "LOSS_FUNCTION_CHOICES", "OBSERVATION_SCALERS", "REWARD_SCALERS",
           "check_algo_ranges", "check_finite_floats", "check_ref_scores"]

ACTIVATION_CHOICES = ("relu", "elu", "tanh", "silu")
LOSS_FUNCTION_CHOICES = ("l2", "l1", "smooth_l1")
#: ``observation_scaler`` choices (:mod:`offrl.data.scaling`): d3rlpy's names.
OBSERVATION_SCALERS = ("none", "standard", "min_max")
#: ``reward_scaler`` choices (:mod:`offrl.data.reward_scaling`): d3rlpy's names.
REWARD_SCALERS = ("none", "standard", "min_max", "return_based")

# (predicate, wording) per field name of the algorithm sections (offrl.config.algos) and the online section.
_Rule = tuple[Callable[[Any], bool], str]
_POSITIVE: _Rule = (lambda v: v > 0, "must be > 0")
_NON_NEGATIVE: _Rule = (lambda v: v >= 0, "must be >= 0")
_UNIT: _Rule = (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
_RULES: dict[str, _Rule] = {
    "actor_lr": _POSITIVE,
    "critic_lr": _POSITIVE,
    "alpha_lr": _POSITIVE,
    "alpha_prime_lr": _POSITIVE,
    "lr": _POSITIVE,
    "gamma": _UNIT,
    "tau": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
    "alpha_init": _POSITIVE,
    "min_q_weight": _NON_NEGATIVE,
    "temperature": _POSITIVE,
    "num_random": _POSITIVE,
    "bc_steps": _NON_NEGATIVE,
    "actor_bc_weight": _NON_NEGATIVE,  # None (auto) is skipped
    "backup_action": (lambda v: v in BACKUP_ACTIONS, f"use one of {', '.join(BACKUP_ACTIONS)}"),
    "actor_std": (lambda v: v in ACTOR_STDS, f"use one of {', '.join(ACTOR_STDS)}"),
    "update_order": (lambda v: v in UPDATE_ORDERS, f"use one of {', '.join(UPDATE_ORDERS)}"),
    "scale_lb": _POSITIVE,
    "target_update_interval": _POSITIVE,
    "eps_init": _UNIT,
    "eps_end": _UNIT,
    "annealing_num_steps": _NON_NEGATIVE,
    "eps_anneal_frames": _NON_NEGATIVE,
    "init_random_frames": _NON_NEGATIVE,
    "hidden_sizes": (lambda v: all(int(h) > 0 for h in v), "every layer width must be > 0"),
    "activation": (lambda v: v in ACTIVATION_CHOICES, f"use one of {', '.join(ACTIVATION_CHOICES)}"),
    "loss_function": (lambda v: v in LOSS_FUNCTION_CHOICES, f"use one of {', '.join(LOSS_FUNCTION_CHOICES)}"),
    "target_update": (lambda v: v in ("hard", "soft"), "use hard or soft"),
    "observation_scaler": (lambda v: v in OBSERVATION_SCALERS, f"use one of {', '.join(OBSERVATION_SCALERS)}"),
    "reward_scaler": (lambda v: v in REWARD_SCALERS, f"use one of {', '.join(REWARD_SCALERS)}"),
    "reward_scale": _POSITIVE,  # d3rlpy's multiplier; <= 0 would flip or erase the task
}


def check_finite_floats(obj: Any, prefix: str = "") -> None:
    """Every float of a (nested) config dataclass is finite: ``nan`` and ``inf`` are no hyperparameter."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_finite_floats(value, f"{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{key}: must be a finite number, got {value}")


def check_algo_ranges(section: str, obj: Any) -> None:
    """Apply :data:`_RULES` to the fields of one section (``cql``, ``dqn``, ``online``, ...)."""
    for f in dataclasses.fields(obj):
        rule = _RULES.get(f.name)
        value = getattr(obj, f.name)
        if rule is None or value is None or isinstance(value, bool):
            continue
        ok, wording = rule
        if not ok(value):
            shown = list(value) if isinstance(value, (tuple, list)) else value
            raise UserError(f"{section}.{f.name}: {wording}, got {shown}")


def check_ref_scores(ref_min: float | None, ref_max: float | None, min_option: str, max_option: str) -> None:
    """Reference scores a user gives must be finite and ``min < max`` (a normalized score divides by
    ``max - min``): one line naming both options otherwise."""
    shown = f"{min_option} {ref_min} / {max_option} {ref_max}"
    if any(v is not None and not math.isfinite(float(v)) for v in (ref_min, ref_max)):
        raise UserError(f"{shown}: reference scores must be finite numbers (the returns of a random and an expert "
                        "policy); give both as finite numbers, or drop them")
    if ref_min is not None and ref_max is not None and float(ref_min) >= float(ref_max):
        raise UserError(f"{shown}: the reference minimum must be below the maximum (normalized score = 100 * "
                        f"(R - min) / (max - min)); give {min_option} < {max_option}")
