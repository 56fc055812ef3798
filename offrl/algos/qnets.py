"""The Q-networks and target updaters the discrete algorithms (DQN, discrete CQL) share."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchrl.data import Categorical
from torchrl.modules import QValueActor
from torchrl.modules.models.models import DuelingMlpDQNet
from torchrl.objectives import HardUpdate, SoftUpdate

from offrl.algos._common import make_mlp
from offrl.errors import UserError

__all__ = ["categorical_spec", "make_q_network", "target_updater"]


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


def target_updater(cfg: Any, loss: Any) -> HardUpdate | SoftUpdate:
    """A ``HardUpdate`` every ``cfg.target_update_interval`` steps or a ``SoftUpdate`` with ``cfg.tau``."""
    if cfg.target_update == "hard":
        return HardUpdate(loss, value_network_update_interval=cfg.target_update_interval)
    if cfg.target_update == "soft":
        return SoftUpdate(loss, tau=cfg.tau)
    raise UserError(f"target_update must be 'hard' or 'soft', got {cfg.target_update!r}")

