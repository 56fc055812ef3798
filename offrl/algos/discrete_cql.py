"""Discrete CQL's builder: a Q-network over ``n`` actions trained with
:class:`~offrl.algos.discrete_cql_loss.WeightedDiscreteCQLLoss` (or its fused forward when
``DiscreteCQLConfig.fused``), weighted by ``min_q_weight``.

Actions are int64 indices ``[N]`` (the dataset layout), so the Q actor uses a ``Categorical`` spec.
"""

from __future__ import annotations

from typing import Any

import torch

from offrl.algos._common import AlgoParts, named_adam, seeded
from offrl.algos._spec import dataset_shapes
from offrl.algos.discrete_cql_loss import WeightedDiscreteCQLLoss
from offrl.algos.fused_q import FusedWeightedDiscreteCQLLoss
from offrl.algos.qnets import categorical_spec, make_q_network, target_updater
from offrl.algos.scaled import attach_scalers, observation_scaler_for, reward_scaler_for
from offrl.config.algos import DiscreteCQLConfig
from offrl.errors import UserError

__all__ = ["DiscreteCQLConfig", "WeightedDiscreteCQLLoss", "build", "build_from_dataset",
           "categorical_spec", "make_q_network"]


def build(cfg: DiscreteCQLConfig, *, observation_shape: tuple[int, ...], action_spec: Any,
          device: torch.device | str = "cpu", seed: int | None = None, observation_scaler: Any = None,
          reward_scaler: Any = None) -> AlgoParts:
    """Q-network, :class:`WeightedDiscreteCQLLoss`, Adam (group ``value``) and a Hard/Soft target update;
    ``observation_scaler`` as in :func:`offrl.algos.cql.build`."""
    if len(observation_shape) != 1:
        raise UserError(f"the Q-network's MLP needs flat observations, got shape {tuple(observation_shape)}")
    spec = categorical_spec(action_spec)
    with seeded(seed):
        qnet = make_q_network(int(observation_shape[0]), spec, cfg.hidden_sizes, cfg.activation, cfg.dueling,
                              device)
        loss_cls = FusedWeightedDiscreteCQLLoss if cfg.fused else WeightedDiscreteCQLLoss
        loss = loss_cls(qnet, min_q_weight=cfg.min_q_weight, loss_function=cfg.loss_function,
                        delay_value=True, action_space=spec)
    loss.make_value_estimator(gamma=cfg.gamma)
    optimizer = named_adam({"value": list(loss.value_network_params.values(True, True))}, {"value": cfg.lr})
    return attach_scalers(AlgoParts(
        loss_module=loss, optimizer=optimizer, target_net_updater=target_updater(cfg, loss), policy=qnet,
        exploration_policy=qnet, config=cfg,
    ), observation_scaler, reward_scaler)


def build_from_dataset(cfg: DiscreteCQLConfig, dataset: Any, *, device: torch.device | str = "cpu",
                       seed: int | None = None) -> AlgoParts:
    """:func:`build` with shapes and ``n`` read from an ``OfflineDataset``."""
    return build(cfg, **dataset_shapes(dataset), device=device, seed=seed,
                 observation_scaler=observation_scaler_for(cfg, dataset, device),
                 reward_scaler=reward_scaler_for(cfg, dataset))
