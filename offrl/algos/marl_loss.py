"""The multi-agent Q losses: torchrl's ``QMixerLoss`` (QMIX, VDN) and ``DQNLoss`` on per-agent keys
(independent Q-learning), each with an optional per-agent CQL penalty for offline data.

The penalty is CQL(H) (Kumar et al. 2020) on each agent's local Q-values,
``E_{batch, agents}[logsumexp_a Q_i(o_i, a) - Q_i(o_i, a_i^data)]``, weighted by ``min_q_weight``: the
``iql+cql`` / ``qmix+cql`` baselines of OG-MARL (Formanek et al. 2023). Both losses compute the TD target
themselves, from the *target* parameters (local network and mixer), bootstrapping through ``terminated``
only: a time-limit truncation keeps the bootstrap. Outputs: ``loss`` (TD), ``loss_cql`` (weighted
penalty) and ``cql_gap`` (unweighted, detached); the trainer sums the ``loss*`` terms.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import DQNLoss
from torchrl.objectives.multiagent import QMixerLoss
from torchrl.objectives.utils import distance_loss

__all__ = ["ConservativeIQLLoss", "ConservativeQMixerLoss", "cql_gap"]


def cql_gap(q_all: torch.Tensor, q_data: torch.Tensor) -> torch.Tensor:
    """``mean(logsumexp_a Q(o, a) - Q(o, a_data))`` over every leading dimension (batch and agents)."""
    return (torch.logsumexp(q_all, dim=-1) - q_data).mean()


def _gather(q_all: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Q of the taken actions: int indices ``[..., n_agents]`` or one-hot ``[..., n_agents, n]``."""
    if torch.is_floating_point(action) or action.dtype == torch.bool:
        return (q_all * action.to(q_all.dtype)).sum(-1)
    if action.ndim == q_all.ndim:
        action = action.squeeze(-1)
    return q_all.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)


def _next_local_q(network: Any, params: Any, target_params: Any, nxt: TensorDictBase, action_value_key: Any,
                  double_q: bool) -> torch.Tensor:
    """Each agent's bootstrap value at the next step, ``[B, n_agents]``, from the target parameters:
    ``max_a target_Q_i(o'_i, a)``, or with ``double_q`` ``target_Q_i(o'_i, argmax_a Q_i(o'_i, a))`` (the
    online parameters pick the action, Van Hasselt et al. 2016; PyMARL's ``double_q``)."""
    with target_params.to_module(network, preserve_module_state=False):
        q_target = network(nxt.clone(False)).get(action_value_key)
    if not double_q:
        return q_target.max(-1).values
    with params.to_module(network, preserve_module_state=False):
        q_online = network(nxt.clone(False)).get(action_value_key)
    return q_target.gather(-1, q_online.argmax(-1, keepdim=True)).squeeze(-1)


def _outputs(td_loss: torch.Tensor, gap: torch.Tensor, weight: float) -> TensorDict:
    return TensorDict({"loss": td_loss, "loss_cql": gap * weight, "cql_gap": gap.detach()}, [])


class ConservativeQMixerLoss(QMixerLoss):
    """``QMixerLoss`` (QMIX with a ``QMixer``, VDN with a ``VDNMixer``) plus the per-agent CQL penalty.

    ``Q_tot = mixer(Q_1(o_1, a_1), ..., Q_n(o_n, a_n), state)`` regresses on
    ``r + gamma * (1 - terminated) * target_mixer(max_a target_Q_i(o'_i, a), state')`` (Rashid et al. 2018).
    """

    def __init__(self, local_value_network: Any, mixer_network: Any, *, min_q_weight: float = 0.0,
                 double_q: bool = False, **kwargs: Any) -> None:
        super().__init__(local_value_network, mixer_network, **kwargs)
        self.min_q_weight = float(min_q_weight)
        self.double_q = bool(double_q)

    def forward(self, tensordict: TensorDictBase) -> TensorDict:  # type: ignore[override]
        keys = self.tensor_keys
        td = tensordict.clone(False)
        with self.local_value_network_params.to_module(self.local_value_network, preserve_module_state=False):
            self.local_value_network(td)
        q_all = td.get(keys.action_value)  # [B, n_agents, n_actions]
        q_data = _gather(q_all, tensordict.get(keys.action))  # [B, n_agents]
        td.set(keys.local_value, q_data.unsqueeze(-1))
        with self.mixer_network_params.to_module(self.mixer_network, preserve_module_state=False):
            self.mixer_network(td)
        q_tot = td.get(keys.global_value).reshape(q_data.shape[0])
        with torch.no_grad():
            nxt = tensordict.get("next").clone(False)
            next_q = _next_local_q(self.local_value_network, self.local_value_network_params,
                                   self.target_local_value_network_params, nxt, keys.action_value, self.double_q)
            nxt.set(keys.local_value, next_q.unsqueeze(-1))
            with self.target_mixer_network_params.to_module(self.mixer_network, preserve_module_state=False):
                self.mixer_network(nxt)
            next_tot = nxt.get(keys.global_value).reshape(q_tot.shape)
            reward = tensordict.get(("next", keys.reward)).reshape(q_tot.shape)
            not_terminated = (~tensordict.get(("next", keys.terminated)).reshape(q_tot.shape)).to(reward.dtype)
            target = reward + self.value_estimator.gamma * not_terminated * next_tot
            tensordict.set(keys.priority, (q_tot - target).pow(2).unsqueeze(-1), inplace=True)
        td_loss = distance_loss(q_tot, target, self.loss_function).mean()
        return _outputs(td_loss, cql_gap(q_all, q_data), self.min_q_weight)


class ConservativeIQLLoss(DQNLoss):
    """``DQNLoss`` on per-agent keys (independent Q-learning: each agent regresses its own
    ``Q_i(o_i, a_i)`` on ``r_i + gamma * (1 - terminated_i) * max_a target_Q_i(o'_i, a)``), plus the
    per-agent CQL penalty. Rewards and termination flags are per agent (the trainer broadcasts team ones)."""

    def __init__(self, value_network: Any, *, min_q_weight: float = 0.0, double_q: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(value_network, **kwargs)
        self.min_q_weight = float(min_q_weight)
        self.double_q = bool(double_q)

    def forward(self, tensordict: TensorDictBase) -> TensorDict:  # type: ignore[override]
        keys = self.tensor_keys
        td = tensordict.clone(False)
        with self.value_network_params.to_module(self.value_network, preserve_module_state=False):
            self.value_network(td)
        q_all = td.get(keys.action_value)  # [B, n_agents, n_actions]
        q_data = _gather(q_all, tensordict.get(keys.action))  # [B, n_agents]
        with torch.no_grad():
            nxt = tensordict.get("next").select(*self.value_network.in_keys)
            next_q = _next_local_q(self.value_network, self.value_network_params, self.target_value_network_params,
                                   nxt, keys.action_value, self.double_q)
            reward = tensordict.get(("next", keys.reward)).reshape(q_data.shape)
            not_terminated = (~tensordict.get(("next", keys.terminated)).reshape(q_data.shape)).to(reward.dtype)
            target = reward + self.value_estimator.gamma * not_terminated * next_q
            tensordict.set(keys.priority, (q_data - target).pow(2).mean(-1, keepdim=True), inplace=True)
        td_loss = distance_loss(q_data, target, self.loss_function).mean()
        return _outputs(td_loss, cql_gap(q_all, q_data), self.min_q_weight)
