"""Evaluation of multi-agent Q-learners: deterministic rollouts of the greedy joint policy in a
multi-agent env (:mod:`offrl.data.marl_envs`), scored by the team return.

The team return of an episode is the sum over its steps of the agents' mean reward (the quantity QMIX and
VDN optimise, torchrl's aggregated reward); per-agent returns are reported beside it. Episode ``i`` resets
the env with ``seed + i``; the normalized score uses the references when known (random and expert team
returns), as for single-agent runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from offrl.data.marl_envs import make_marl_env
from offrl.evaluation.findings import mean_ci

__all__ = ["MarlEvalResult", "evaluate_marl"]


@dataclass
class MarlEvalResult:
    """Team and per-agent returns of K evaluation episodes."""

    team_returns: np.ndarray  # [K]
    agent_returns: np.ndarray  # [K, n_agents]
    lengths: np.ndarray
    ref: tuple[float, float] | None = None

    def normalized_episodes(self) -> np.ndarray:
        """Each episode's normalized team return (NaN without references)."""
        if self.ref is None or self.ref[0] is None or self.ref[1] is None or self.ref[0] == self.ref[1]:
            return np.full(len(self.team_returns), math.nan)
        lo, hi = self.ref
        return 100.0 * (self.team_returns - lo) / (hi - lo)

    def normalized(self) -> float:
        return float(np.mean(self.normalized_episodes()))

    def metrics(self) -> dict[str, float]:
        """The single-agent eval columns for the team return (``eval_return_mean``, ``eval_return_std``,
        ``eval_length_mean``, ``eval_normalized_score``, ``eval_episodes`` and the Student-t 95% intervals
        ``eval_return_ci_low/high``, ``eval_normalized_ci_low/high``) and ``eval_agent<i>_return_mean``."""
        return_ci, normalized_ci = mean_ci(self.team_returns)[1:], mean_ci(self.normalized_episodes())[1:]
        out = {"eval_return_mean": float(np.mean(self.team_returns)),
               "eval_return_std": float(np.std(self.team_returns)),
               "eval_length_mean": float(np.mean(self.lengths)),
               "eval_normalized_score": self.normalized(),
               "eval_episodes": float(len(self.team_returns)),
               "eval_return_ci_low": return_ci[0], "eval_return_ci_high": return_ci[1],
               "eval_normalized_ci_low": normalized_ci[0], "eval_normalized_ci_high": normalized_ci[1]}
        for i, value in enumerate(self.agent_returns.mean(0).tolist()):
            out[f"eval_agent{i}_return_mean"] = float(value)
        return out


def evaluate_marl(policy: Any, env_id: str, *, episodes: int = 10, seed: int = 0, device: Any = "cpu",
                  ref: tuple[float, float] | None = None, max_steps: int = 1000) -> MarlEvalResult:
    """Roll out ``policy`` (a module writing ``("agents", "action")``; None: uniformly random actions)
    greedily for ``episodes`` episodes of ``env_id``."""
    env = make_marl_env(env_id, device=str(device))
    team, agents, lengths = [], [], []
    try:
        with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
            for i in range(int(episodes)):
                env.set_seed(int(seed) + i)
                td = env.rollout(max_steps, policy, break_when_any_done=True)
                reward = td.get(("next", "agents", "reward")).float()  # [T, n_agents, 1]
                per_agent = reward.sum(0).squeeze(-1)
                agents.append(per_agent.cpu().numpy())
                team.append(float(per_agent.mean()))
                lengths.append(int(td.shape[0]))
    finally:
        env.close()
    return MarlEvalResult(np.asarray(team), np.stack(agents), np.asarray(lengths), ref)
