"""Scripted behaviour policies for ``mpe2``'s ``simple_spread`` (discrete moves), and the rollouts that
record them into the multi-agent layout.

Each agent reads only its own observation ``[vel(2), pos(2), landmarks - pos (2N), others - pos
(2(N-1)), comm]`` and steers to its landmark: it picks the move (1: -x, 2: +x, 3: -y, 4: +y) along the
axis where ``landmark - pos - 0.4 * vel`` is largest (``0.4 * vel`` is how far the damped velocity still
carries it: ``dt / damping``), or stays (0) when that is within ``0.05``. Which landmark:

- ``assign``: the assignment of agents to landmarks with the smallest total distance, which every agent
  computes alike from its relative positions (the cooperative expert: no two agents chase one landmark);
- ``fixed``: agent ``i`` goes to landmark ``i`` whatever the distances (a mediocre team: agents cross
  the field and bump into each other);
- ``random``: uniformly random moves.

``epsilon`` replaces an agent's move by a uniformly random one with that probability (per agent, per
step), drawn from ``numpy.random.default_rng(seed)``; episode ``i`` resets the env with
``seed * 1_000_000 + i``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MARL_POLICIES", "MarlEpisode", "marl_episodes", "spread_actions"]

MARL_POLICIES = ("random", "fixed", "assign")
N_MOVES = 5
_CARRY = 0.4  # dt / damping of mpe2's world: the distance a velocity still carries an agent
_STOP = 0.05


@dataclass
class MarlEpisode:
    """One recorded episode: ``observations`` / ``state`` have one row more than the per-step arrays."""

    observations: np.ndarray  # [T + 1, n, obs]
    state: np.ndarray  # [T + 1, S]
    actions: np.ndarray  # [T, n]
    rewards: np.ndarray  # [T, n]
    terminals: np.ndarray  # [T]
    timeouts: np.ndarray  # [T]


def _targets(obs: np.ndarray, policy: str) -> np.ndarray:
    """Landmark index of every agent ``[n]`` from the agents' observations ``[n, obs]``."""
    n = obs.shape[0]
    if policy == "fixed":
        return np.arange(n)
    # Agent 0's view: landmarks and the other agents relative to it; every agent's view gives the same
    # geometry, so each computes this same assignment from its own observation (here: agent 0's).
    landmarks = obs[0, 4:4 + 2 * n].reshape(n, 2)
    agents = np.vstack([np.zeros(2), obs[0, 4 + 2 * n:4 + 2 * n + 2 * (n - 1)].reshape(n - 1, 2)])
    cost = np.linalg.norm(landmarks[None, :, :] - agents[:, None, :], axis=-1)  # [agent, landmark]
    best = min(itertools.permutations(range(n)), key=lambda p: (sum(cost[i, p[i]] for i in range(n)), p))
    return np.asarray(best)


def spread_actions(obs: np.ndarray, policy: str) -> np.ndarray:
    """The scripted move of every agent ``[n]`` (int64) from their observations ``[n, obs]``."""
    n = obs.shape[0]
    target = _targets(obs, policy)
    landmarks = obs[:, 4:4 + 2 * n].reshape(n, n, 2)
    err = landmarks[np.arange(n), target] - _CARRY * obs[:, 0:2]  # [n, 2]
    axis = np.argmax(np.abs(err), axis=1)
    value = err[np.arange(n), axis]
    move = np.where(axis == 0, np.where(value < 0, 1, 2), np.where(value < 0, 3, 4))
    return np.where(np.abs(value) < _STOP, 0, move).astype(np.int64)


def marl_episodes(env: Any, policy: str | Callable[[np.ndarray], np.ndarray], episodes: int, seed: int, *,
                  epsilon: float | tuple[float, float] = 0.0, reset_seed: int | None = None) -> Iterator[MarlEpisode]:
    """Roll ``policy`` (a scripted policy's name, or a function of the agents' observations ``[n, obs]``
    returning their moves ``[n]``) out in a PettingZoo parallel env (``mpe2`` ``simple_spread``) for
    ``episodes`` episodes. ``epsilon``: a number or a ``[start, end]`` per-episode linear schedule.
    Episode ``i`` resets with ``reset_seed + i`` (default ``seed * 1_000_000``)."""
    rng = np.random.default_rng(seed)
    base = seed * 1_000_000 if reset_seed is None else reset_seed
    agents = list(env.possible_agents)
    for i in range(int(episodes)):
        eps = (float(epsilon[0] + (epsilon[1] - epsilon[0]) * i / max(episodes - 1, 1))
               if isinstance(epsilon, tuple) else float(epsilon))
        obs_d, _ = env.reset(seed=base + i)
        obs = [np.stack([obs_d[a] for a in agents]).astype(np.float32)]
        state = [np.asarray(env.state(), np.float32)]
        actions, rewards, terms, truncs = [], [], [], []
        while env.agents:
            o = obs[-1]
            if policy == "random":
                act = rng.integers(0, N_MOVES, size=len(agents))
            else:
                act = policy(o) if callable(policy) else spread_actions(o, policy)
                if eps > 0:
                    explore = rng.random(len(agents)) < eps
                    act = np.where(explore, rng.integers(0, N_MOVES, size=len(agents)), act)
            obs_d, rew, term, trunc, _ = env.step({a: int(x) for a, x in zip(agents, act, strict=True)})
            obs.append(np.stack([obs_d[a] for a in agents]).astype(np.float32))
            state.append(np.asarray(env.state(), np.float32))
            actions.append(np.asarray(act, np.int64))
            rewards.append(np.asarray([rew[a] for a in agents], np.float32))
            terms.append(all(term[a] for a in agents))
            truncs.append(all(trunc[a] for a in agents) and not terms[-1])
        yield MarlEpisode(np.stack(obs), np.stack(state), np.stack(actions), np.stack(rewards),
                          np.asarray(terms), np.asarray(truncs))
