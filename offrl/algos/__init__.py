"""Algorithms: networks, losses and one builder per algorithm, stacked one way.

* CPU kernels and matmul plans of the fused losses: :mod:`~offrl.algos.kernels`, :mod:`~offrl.algos.plans`;
* losses (torchrl ``LossModule``s with offrl's fixes): :mod:`~offrl.algos.cql_loss`,
  :mod:`~offrl.algos.discrete_cql_loss`, :mod:`~offrl.algos.calql_loss`;
* fused losses (same numbers, faster forwards): :mod:`~offrl.algos.fused_cql`, :mod:`~offrl.algos.fused_q`;
* the memory an update needs, checked against the machine's before a run: :mod:`~offrl.algos.memory`;
* builders (networks + ``build(cfg, *, observation_shape, action_spec, device, seed)`` returning
  :class:`AlgoParts`): :mod:`~offrl.algos.cql`, :mod:`~offrl.algos.discrete_cql`, :mod:`~offrl.algos.dqn`,
  :mod:`~offrl.algos.calql`; :func:`build_from_dataset` dispatches on the config dataclass.
"""

from __future__ import annotations

from offrl.algos import cql, discrete_cql, dqn
from offrl.algos._common import AlgoParts
from offrl.algos._spec import action_spec_from_dataset
from offrl.algos.builders import build_from_dataset, builder_for
from offrl.algos.cql_loss import OfflineCQLLoss
from offrl.algos.discrete_cql_loss import WeightedDiscreteCQLLoss
from offrl.config.algos import CQLConfig, DiscreteCQLConfig, DQNConfig

__all__ = [
    "AlgoParts",
    "CQLConfig",
    "DQNConfig",
    "DiscreteCQLConfig",
    "OfflineCQLLoss",
    "WeightedDiscreteCQLLoss",
    "action_spec_from_dataset",
    "build_from_dataset",
    "builder_for",
    "cql",
    "discrete_cql",
    "dqn",
]
