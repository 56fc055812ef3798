"""Off-policy diagnostics: what the critic believes, checked against the data and the environment.

Logged at every evaluation (columns ``diag_*`` in ``metrics.csv``):

- ``diag_td_error``: mean squared TD error ``(Q(s,a) - r - γ(1-terminated)V(s'))²`` on held-out dataset
  transitions (a truncated transition bootstraps, as in training).
- ``diag_q_data`` / ``diag_q_policy``: mean Q on the dataset's actions vs on the policy's actions at the same
  states. CQL pushes the second down relative to the first; a DQN on offline data lets it run away.
- ``diag_v_s0`` vs ``diag_mc_return_s0``: the critic's value of the dataset's initial states (rows with
  ``step == 0``) vs their discounted Monte-Carlo return under the behaviour policy.
- after an env evaluation, ``diag_v_s0_eval`` vs ``diag_achieved_return_s0``: V on the evaluation episodes'
  own initial states vs the discounted return the policy really achieved from them (the over-estimation
  gap CQL exists to close).

``V(s) = Q(s, π(s))``: the deterministic actor's action for continuous control, ``max_a Q(s, a)`` for
discrete (the greedy policy DQN and discrete CQL act with). An ensemble of critics (CQL's two Q nets) is
reduced with ``min``, the pessimistic value the algorithm itself bootstraps with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

__all__ = ["Critic", "critic_from_loss", "eval_diagnostics", "heldout_split", "offline_diagnostics"]

Observation = Any  # a Tensor, or a TensorDict for Dict observation spaces


class Critic:
    """``q(observation, action) -> [B]`` and ``v(observation) -> [B]`` over batched tensors.

    Build it from plain callables, or from a torchrl loss module with :func:`critic_from_loss`.
    """

    def __init__(
        self,
        q: Callable[[Observation, torch.Tensor], torch.Tensor],
        v: Callable[[Observation], torch.Tensor],
    ) -> None:
        self._q, self._v = q, v

    @torch.no_grad()
    def q(self, observation: Observation, action: torch.Tensor) -> torch.Tensor:
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            return torch.as_tensor(self._q(observation, action)).reshape(-1).float()

    @torch.no_grad()
    def v(self, observation: Observation) -> torch.Tensor:
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            return torch.as_tensor(self._v(observation)).reshape(-1).float()


def _td(observation: Observation, **extra: torch.Tensor) -> TensorDict:
    return TensorDict({"observation": observation, **extra}, batch_size=[observation.shape[0]])


def _gather(action_value: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Q of the taken action from ``[B, n]`` action values; ``action`` an index ([B] / [B,1]) or one-hot."""
    if action.ndim == action_value.ndim and action.shape[-1] == action_value.shape[-1] and action.shape[-1] > 1:
        action = action.float().argmax(-1)
    return action_value.gather(-1, action.long().reshape(-1, 1)).squeeze(-1)


def critic_from_loss(loss: Any, observation_scaler: Any = None) -> Critic:
    """A :class:`Critic` over the current parameters of a torchrl ``CQLLoss``, ``DiscreteCQLLoss`` or
    ``DQNLoss`` (the losses hold functional params; they are swapped into the network for each call).
    ``observation_scaler`` (default: the one the loss carries, :mod:`offrl.algos.scaled`): the critic takes
    raw observations and scales them as the networks saw them in training."""
    critic = _loss_critic(loss)
    if observation_scaler is None:
        observation_scaler = getattr(loss, "observation_scaler", None)
    if observation_scaler is None:
        return critic
    return Critic(lambda obs, action: critic._q(observation_scaler(obs), action),
                  lambda obs: critic._v(observation_scaler(obs)))


def _loss_critic(loss: Any) -> Critic:
    if hasattr(loss, "qvalue_network_params"):  # CQLLoss (and SAC-like losses): actor + Q ensemble
        qnet, qparams = loss.qvalue_network, loss.qvalue_network_params
        actor, aparams = loss.actor_network, loss.actor_network_params
        q_key = loss.tensor_keys.state_action_value

        def q(obs: Observation, action: torch.Tensor) -> torch.Tensor:
            values = []
            for i in range(qparams.shape[0]):  # stacked params, one slice per critic of the ensemble
                with qparams[i].to_module(qnet):
                    values.append(qnet(_td(obs, action=action))[q_key].reshape(-1))
            return torch.stack(values).min(0).values

        def v(obs: Observation) -> torch.Tensor:
            with aparams.to_module(actor):
                action = actor(_td(obs))["action"]
            return q(obs, action)

        return Critic(q, v)
    if hasattr(loss, "value_network_params"):  # DQNLoss / DiscreteCQLLoss: one net, [B, n] action values
        net, params = loss.value_network, loss.value_network_params
        av_key = loss.tensor_keys.action_value

        def action_values(obs: Observation) -> torch.Tensor:
            with params.to_module(net):
                return net(_td(obs))[av_key]

        return Critic(lambda obs, a: _gather(action_values(obs), a), lambda obs: action_values(obs).max(-1).values)
    raise TypeError(f"cannot read a critic from {type(loss).__name__}: expected CQLLoss, DiscreteCQLLoss or DQNLoss")


def _mean(x: torch.Tensor) -> float:
    return float(x.mean()) if x.numel() else math.nan


def offline_diagnostics(
    critic: Critic | Any, heldout: TensorDictBase, *, gamma: float, s0: TensorDictBase | None = None
) -> dict[str, float]:
    """TD error, Q on data vs policy actions (on ``heldout``, TED layout) and V(s0) vs the dataset's
    discounted MC return (on ``s0``, rows with ``step == 0`` and ``mc_return``). No env needed."""
    critic = critic if isinstance(critic, Critic) else critic_from_loss(critic)
    obs, action = heldout["observation"], heldout["action"]
    reward = heldout["next", "reward"].reshape(-1).float()
    terminated = heldout["next", "terminated"].reshape(-1).float()
    q_data = critic.q(obs, action)
    target = reward + gamma * (1.0 - terminated) * critic.v(heldout["next", "observation"])
    out = {
        "diag_td_error": _mean((q_data - target) ** 2),
        "diag_q_data": _mean(q_data),
        "diag_q_policy": _mean(critic.v(obs)),
    }
    if s0 is not None and s0.shape[0] > 0:
        out["diag_v_s0"] = _mean(critic.v(s0["observation"]))
        out["diag_mc_return_s0"] = _mean(s0["mc_return"].float())
    return out


def eval_diagnostics(critic: Critic | Any, result: Any) -> dict[str, float]:
    """After an env evaluation: V of the episodes' initial states vs the discounted return achieved."""
    critic = critic if isinstance(critic, Critic) else critic_from_loss(critic)
    s0 = result.initial_observations
    if isinstance(s0, dict):
        s0 = TensorDict({k: torch.as_tensor(v) for k, v in s0.items()}, batch_size=[len(result.returns)])
    else:
        s0 = torch.as_tensor(np.asarray(s0, dtype=np.float32))
    return {
        "diag_v_s0_eval": _mean(critic.v(s0)),
        "diag_achieved_return_s0": float(np.mean(result.discounted_returns)),
    }


def heldout_split(
    data: TensorDictBase, *, fraction: float = 0.05, max_transitions: int = 4096, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split transition indices by whole episodes into (train, heldout), seeded.

    Whole episodes keep neighbouring (nearly identical) transitions on one side. The held-out side gets
    about ``fraction`` of the episodes (at least one, capped near ``max_transitions`` rows); it is only truly
    held out if the trainer samples from the train indices.
    """
    episode = data["episode"].reshape(-1)
    ids = torch.unique(episode)
    gen = torch.Generator().manual_seed(seed)
    order = ids[torch.randperm(len(ids), generator=gen)]
    n_hold = max(1, int(round(fraction * len(ids)))) if len(ids) > 1 else 0
    counts = torch.bincount(episode - episode.min())
    chosen, rows = [], 0
    for e in order[:n_hold].tolist():
        if chosen and rows + int(counts[e - int(episode.min())]) > max_transitions:
            break
        chosen.append(e)
        rows += int(counts[e - int(episode.min())])
    mask = torch.isin(episode, torch.tensor(chosen, dtype=episode.dtype))
    return torch.nonzero(~mask).reshape(-1), torch.nonzero(mask).reshape(-1)
