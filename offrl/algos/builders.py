"""One entry point for every algorithm: the builder module of a config dataclass, and
:func:`build_from_dataset` dispatching on the config's type."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from offrl.algos import cql, discrete_cql, dqn
from offrl.algos._common import AlgoParts
from offrl.config.algos import CQLConfig, DiscreteCQLConfig, DQNConfig

__all__ = ["build_from_dataset", "builder_for"]

_BUILDERS: dict[type, ModuleType] = {CQLConfig: cql, DiscreteCQLConfig: discrete_cql, DQNConfig: dqn}


def builder_for(cfg: Any) -> ModuleType:
    """The algorithm module (with its ``build``) for a config dataclass instance."""
    module = _BUILDERS.get(type(cfg))
    if module is None:
        names = ", ".join(t.__name__ for t in _BUILDERS)
        raise TypeError(f"no algorithm for a {type(cfg).__name__}; pass one of {names}")
    return module


def build_from_dataset(cfg: CQLConfig | DiscreteCQLConfig | DQNConfig, dataset: Any, *,
                       device: torch.device | str = "cpu", seed: int | None = None) -> AlgoParts:
    """The algorithm of ``cfg``'s type built with shapes, ``n`` and bounds read from an ``OfflineDataset``."""
    return builder_for(cfg).build_from_dataset(cfg, dataset, device=device, seed=seed)
