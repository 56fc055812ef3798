"""How much of the action space a dataset covers around its states: the statistic behind CQL's narrow-data setting.

``action_spread`` is the mean, over sampled states, of the standard deviation of the actions taken at that
state's nearest neighbours (observations standardised per dimension, actions rescaled to ``[-1, 1]``), divided
by the standard deviation of a uniform policy on ``[-1, 1]`` (``1 / sqrt(3)``). A uniformly random behaviour
scores about 1; a deterministic one (an expert, a scripted controller) close to 0, because neighbouring states
took nearly the same action. On offrl's Pendulum datasets: expert 0.08, mixed 0.84, random 0.99, medium 1.06.

Below :data:`NARROW_SPREAD` the data is *narrow*: CQL's penalty then leaves the critic almost no signal
off the data's actions and the actor needs to be held on them (``cql.actor_bc_weight``; docs/cql.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Coverage", "NARROW_SPREAD", "action_coverage"]

#: An action spread below this (a quarter of a uniform policy's) marks the data as narrow.
NARROW_SPREAD = 0.25
_QUERIES, _REFERENCE, _NEIGHBOURS = 1_000, 20_000, 10


@dataclass(frozen=True)
class Coverage:
    """``action_spread`` (see the module docstring) and whether it marks the data as narrow."""

    action_spread: float

    @property
    def narrow(self) -> bool:
        return self.action_spread < NARROW_SPREAD

    def describe(self) -> str:
        kind = "narrow" if self.narrow else "broad"
        return (f"{kind} data, action spread {self.action_spread:.2f}: actions at neighbouring states vary "
                f"{self.action_spread:.0%} as much as a uniform policy's; narrow below {NARROW_SPREAD}")


def action_coverage(dataset: Any, *, seed: int = 0) -> Coverage | None:
    """The :class:`Coverage` of a continuous-action ``OfflineDataset`` (None for discrete actions or fewer than
    ``2 * neighbours`` transitions). Deterministic for a given dataset and ``seed``; ~0.1 s for 1,000 states
    against 20,000."""
    space = dataset.action_space
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    data = dataset.data
    n = int(data.batch_size[0])
    if low is None or high is None or n < 2 * (_NEIGHBOURS + 1):
        return None
    low = torch.as_tensor(low, dtype=torch.float32).reshape(-1)
    high = torch.as_tensor(high, dtype=torch.float32).reshape(-1)
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        return None
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randperm(n, generator=gen)[:_REFERENCE]
    queries = ref[torch.randperm(ref.numel(), generator=gen)[:_QUERIES]]
    obs = _flat_rows(data["observation"][ref])
    mean, std = obs.mean(0), obs.std(0).clamp_min(1e-6)
    obs = (obs - mean) / std
    q_obs = (_flat_rows(data["observation"][queries]) - mean) / std
    actions = data["action"][ref].reshape(ref.numel(), -1).float()
    unit = ((actions - (high + low) / 2) / ((high - low) / 2).clamp_min(1e-12)).clamp(-1, 1)
    k = min(_NEIGHBOURS, ref.numel() - 1)
    # k + 1 nearest: the query itself is among the reference states (distance 0) and is dropped
    idx = torch.cdist(q_obs, obs).topk(k + 1, largest=False).indices[:, 1:]
    spread = unit[idx].std(1).mean().item() * math.sqrt(3.0)
    return Coverage(action_spread=round(spread, 4))


def _flat_rows(obs: Any) -> torch.Tensor:
    """One float vector per row: a tensor's values, or a Dict observation's leaves concatenated in key order."""
    if isinstance(obs, torch.Tensor):
        return obs.reshape(obs.shape[0], -1).float()
    rows = int(obs.batch_size[0])
    leaves = [obs.get(key) for key in sorted(obs.keys(include_nested=True, leaves_only=True), key=str)]
    return torch.cat([leaf.reshape(rows, -1).float() for leaf in leaves], dim=1)
