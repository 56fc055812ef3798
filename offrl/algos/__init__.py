"""Algorithms: networks, torchrl loss modules and documented defaults, one module per algorithm.

Each module has a frozen config dataclass and ``build(cfg, *, observation_shape, action_spec, device, seed)``
/ ``build_from_dataset(cfg, dataset, ...)`` returning :class:`AlgoParts`.
"""

from __future__ import annotations

from offrl.algos import cql, discrete_cql, dqn
from offrl.algos._common import AlgoParts
from offrl.algos._spec import action_spec_from_dataset
from offrl.algos.cql import CQLConfig, OfflineCQLLoss
from offrl.algos.discrete_cql import DiscreteCQLConfig, WeightedDiscreteCQLLoss
from offrl.algos.dqn import DQNConfig

__all__ = [
    "AlgoParts",
    "CQLConfig",
    "DQNConfig",
    "DiscreteCQLConfig",
    "OfflineCQLLoss",
    "WeightedDiscreteCQLLoss",
    "action_spec_from_dataset",
    "cql",
    "discrete_cql",
    "dqn",
]
