"""Discrete CQL: a Q-network over ``n`` actions trained with torchrl's ``DiscreteCQLLoss`` (Kumar et al.
2020, CQL(H) for discrete actions: ``logsumexp_a Q(s, a) - Q(s, a_data)``), weighted by ``min_q_weight``.

Actions are int64 indices ``[N]`` (the dataset layout), so the Q actor uses a ``Categorical`` spec.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import dispatch
from torchrl.data import Categorical
from torchrl.modules import QValueActor
from torchrl.objectives import DiscreteCQLLoss, HardUpdate, SoftUpdate
from torchrl.objectives.utils import distance_loss

from offrl.algos._common import AlgoParts, make_mlp, named_adam, seeded
from offrl.config.algos import DiscreteCQLConfig
from offrl.errors import UserError

__all__ = ["DiscreteCQLConfig", "WeightedDiscreteCQLLoss", "build", "build_from_dataset",
           "categorical_spec", "make_q_network"]


class WeightedDiscreteCQLLoss(DiscreteCQLLoss):
    """``DiscreteCQLLoss`` with two fixes for torchrl 0.14:

    * the TD target uses the *target* network: torchrl's value estimator holds a stateful copy of the online
      network and ignores the target parameters it is given, so Q-values chase themselves and diverge
      (on CartPole data they pass 1e5 within 2,000 steps, while returns bound them by 100);
    * the penalty is weighted by ``min_q_weight`` (torchrl adds it unweighted). ``cql_gap`` is the unweighted
      ``E[logsumexp_a Q(s, a) - Q(s, a_data)]``.
    """

    def __init__(self, value_network: Any, *, min_q_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(value_network, **kwargs)
        self.min_q_weight = float(min_q_weight)

    def value_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict]:  # type: ignore[override]
        keys = self.tensor_keys
        td_copy = tensordict.clone(False)
        with self.value_network_params.to_module(self.value_network, preserve_module_state=False):
            self.value_network(td_copy)
        pred_val = td_copy.get(keys.action_value)
        action = tensordict.get(keys.action)
        if self.action_space == "categorical":
            pred_val_index = pred_val.gather(-1, action.unsqueeze(-1) if action.ndim < pred_val.ndim
                                             else action).squeeze(-1)
        else:
            pred_val_index = (pred_val * action.to(pred_val.dtype)).sum(-1)
        with torch.no_grad():
            next_td = tensordict.get("next").select(*self.value_network.in_keys).clone(False)
            with self.target_value_network_params.to_module(self.value_network, preserve_module_state=False):
                self.value_network(next_td)
            next_value = next_td.get(keys.action_value).max(-1).values
            reward = tensordict.get(("next", keys.reward)).squeeze(-1)
            # only a true termination cuts the bootstrap; a time-limit truncation keeps it
            not_terminated = (~tensordict.get(("next", keys.terminated)).squeeze(-1)).to(reward.dtype)
            target_value = reward + self.value_estimator.gamma * not_terminated * next_value
        td_error = (pred_val_index - target_value).pow(2).unsqueeze(-1)
        tensordict.set(keys.priority, td_error.detach(), inplace=True)
        tensordict.set(keys.pred_val, pred_val, inplace=True)
        loss = 0.5 * distance_loss(pred_val_index, target_value, self.loss_function)
        loss = self._reduce_loss(loss, tensordict=tensordict)
        metadata = {"td_error": td_error.mean(0).detach(), "pred_value": pred_val.mean().detach(),
                    "target_value": target_value.mean()}
        return loss, metadata

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:  # type: ignore[override]
        out = super().forward(tensordict)
        out.set("cql_gap", out.get("loss_cql").detach())
        out.set("loss_cql", out.get("loss_cql") * self.min_q_weight)
        return out


def categorical_spec(action_spec: Any) -> Categorical:
    """The ``Categorical`` spec of a discrete action space (a ``Categorical``, a ``OneHot`` or an int ``n``)."""
    if isinstance(action_spec, int):
        return Categorical(action_spec)
    n = getattr(getattr(action_spec, "space", None), "n", None)
    if n is None or getattr(action_spec, "dtype", torch.int64).is_floating_point:
        raise UserError("this algorithm needs a discrete action space (int64 action indices); use algo 'cql' "
                        "for continuous actions")
    return Categorical(int(n), device=action_spec.device)


def make_q_network(obs_dim: int, spec: Categorical, hidden: tuple[int, ...], activation: str, dueling: bool,
                   device: torch.device | str) -> QValueActor:
    """A ``QValueActor`` (greedy argmax over an MLP or dueling MLP) reading ``observation``."""
    n = int(spec.space.n)
    if dueling:
        from torch import nn
        from torchrl.modules.models.models import DuelingMlpDQNet

        act = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "silu": nn.SiLU}[activation]
        net: torch.nn.Module = DuelingMlpDQNet(
            n, mlp_kwargs_feature={"in_features": obs_dim, "num_cells": list(hidden[:-1]),
                                   "out_features": hidden[-1], "activation_class": act,
                                   "activate_last_layer": True},
            mlp_kwargs_output={"in_features": hidden[-1], "depth": 1, "num_cells": hidden[-1],
                               "activation_class": act},
            device=device,
        )
    else:
        net = make_mlp(obs_dim, n, hidden, activation, device)
    return QValueActor(net, in_keys=["observation"], spec=spec)


def _target_updater(cfg: Any, loss: Any) -> HardUpdate | SoftUpdate:
    if cfg.target_update == "hard":
        return HardUpdate(loss, value_network_update_interval=cfg.target_update_interval)
    if cfg.target_update == "soft":
        return SoftUpdate(loss, tau=cfg.tau)
    raise UserError(f"target_update must be 'hard' or 'soft', got {cfg.target_update!r}")


def build(cfg: DiscreteCQLConfig, *, observation_shape: tuple[int, ...], action_spec: Any,
          device: torch.device | str = "cpu", seed: int | None = None) -> AlgoParts:
    """Q-network, :class:`WeightedDiscreteCQLLoss`, Adam (group ``value``) and a Hard/Soft target update."""
    if len(observation_shape) != 1:
        raise UserError(f"the Q-network's MLP needs flat observations, got shape {tuple(observation_shape)}")
    spec = categorical_spec(action_spec)
    with seeded(seed):
        qnet = make_q_network(int(observation_shape[0]), spec, cfg.hidden_sizes, cfg.activation, cfg.dueling,
                              device)
        loss_cls = WeightedDiscreteCQLLoss
        if cfg.fused:  # imported here: fused_offline subclasses this module's loss
            from offrl.algos.fused_offline import FusedWeightedDiscreteCQLLoss as loss_cls
        loss = loss_cls(qnet, min_q_weight=cfg.min_q_weight, loss_function=cfg.loss_function,
                        delay_value=True, action_space=spec)
    loss.make_value_estimator(gamma=cfg.gamma)
    optimizer = named_adam({"value": list(loss.value_network_params.values(True, True))}, {"value": cfg.lr})
    return AlgoParts(loss_module=loss, optimizer=optimizer, target_net_updater=_target_updater(cfg, loss),
                     policy=qnet, exploration_policy=qnet, config=cfg)


def build_from_dataset(cfg: DiscreteCQLConfig, dataset: Any, *, device: torch.device | str = "cpu",
                       seed: int | None = None) -> AlgoParts:
    """:func:`build` with shapes and ``n`` read from an ``OfflineDataset``."""
    from offrl.algos._spec import action_spec_from_dataset

    obs = dataset.data.get("observation")
    return build(cfg, observation_shape=tuple(obs.shape[1:]), action_spec=action_spec_from_dataset(dataset),
                 device=device, seed=seed)
