"""DQN on datasets or online: torchrl's ``DQNLoss`` (or its fused forward, :class:`FusedDQNLoss`, when
``DQNConfig.fused``) with double-DQN targets by default (van Hasselt et al. 2016), an optional dueling head,
and a Hard or Soft target update. For collectors the policy is wrapped with an ``EGreedyModule`` whose
epsilon the trainer anneals.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict.nn import TensorDictSequential
from torchrl.modules import EGreedyModule
from torchrl.objectives import DQNLoss

from offrl.algos._common import AlgoParts, named_adam, seeded
from offrl.algos._spec import dataset_shapes
from offrl.algos.fused_q import FusedDQNLoss
from offrl.algos.qnets import categorical_spec, make_q_network, target_updater
from offrl.algos.scaled import attach_scalers, observation_scaler_for, reward_scaler_for
from offrl.config.algos import DQNConfig
from offrl.errors import UserError

__all__ = ["DQNConfig", "build", "build_from_dataset"]


def build(cfg: DQNConfig, *, observation_shape: tuple[int, ...], action_spec: Any,
          device: torch.device | str = "cpu", seed: int | None = None, observation_scaler: Any = None,
          reward_scaler: Any = None) -> AlgoParts:
    """Q-network, ``DQNLoss`` (:class:`FusedDQNLoss` when ``cfg.fused``), Adam (group ``value``), target
    updater and an ``EGreedyModule``; ``observation_scaler`` as in :func:`offrl.algos.cql.build`."""
    if len(observation_shape) != 1:
        raise UserError(f"the Q-network's MLP needs flat observations, got shape {tuple(observation_shape)}")
    if cfg.eps_end > cfg.eps_init:
        raise UserError(f"DQN eps_end ({cfg.eps_end}) must not exceed eps_init ({cfg.eps_init})")
    spec = categorical_spec(action_spec)
    with seeded(seed):
        qnet = make_q_network(int(observation_shape[0]), spec, cfg.hidden_sizes, cfg.activation, cfg.dueling,
                              device)
        loss_cls = FusedDQNLoss if cfg.fused else DQNLoss
        loss = loss_cls(qnet, loss_function=cfg.loss_function, delay_value=True, double_dqn=cfg.double_dqn,
                        action_space=spec)
    loss.make_value_estimator(gamma=cfg.gamma)
    optimizer = named_adam({"value": list(loss.value_network_params.values(True, True))}, {"value": cfg.lr})
    greedy = EGreedyModule(spec, eps_init=float(cfg.eps_init), eps_end=float(cfg.eps_end),
                           annealing_num_steps=cfg.annealing_num_steps, device=device)
    return attach_scalers(AlgoParts(
        loss_module=loss, optimizer=optimizer, target_net_updater=target_updater(cfg, loss), policy=qnet,
        exploration_policy=TensorDictSequential(qnet, greedy), config=cfg, greedy_module=greedy,
    ), observation_scaler, reward_scaler)


def build_from_dataset(cfg: DQNConfig, dataset: Any, *, device: torch.device | str = "cpu",
                       seed: int | None = None) -> AlgoParts:
    """:func:`build` with shapes and ``n`` read from an ``OfflineDataset``."""
    return build(cfg, **dataset_shapes(dataset), device=device, seed=seed,
                 observation_scaler=observation_scaler_for(cfg, dataset, device),
                 reward_scaler=reward_scaler_for(cfg, dataset))
