"""Pieces the algorithm builders share: MLPs, initialisation, seeding, and the bundle they return."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchrl.modules import MLP

__all__ = ["AlgoParts", "fused_adam", "make_mlp", "named_adam", "orthogonal_init_", "seeded"]


@dataclass
class AlgoParts:
    """Everything a trainer needs for one algorithm, built once from a config dataclass.

    ``policy`` is deterministic (evaluation); ``exploration_policy`` is what a collector runs.
    ``trainer_kwargs`` are algorithm-specific trainer arguments (e.g. ``bc_steps`` for CQL).
    """

    loss_module: Any
    optimizer: torch.optim.Optimizer
    target_net_updater: Any
    policy: Any
    exploration_policy: Any
    config: Any
    greedy_module: Any = None
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def observation_scaler(self) -> Any:
        """The fitted :class:`offrl.data.scaling.ObservationScaler` the loss module carries
        (``config.observation_scaler``, :mod:`offrl.algos.scaled`), or None."""
        return getattr(self.loss_module, "observation_scaler", None)

    @property
    def reward_scaler(self) -> Any:
        """The :class:`offrl.data.reward_scaling.RewardScaler` the loss module carries (``config.reward_scaler``,
        ``reward_scale``, ``reward_bias``), or None: rewards as stored."""
        return getattr(self.loss_module, "reward_scaler", None)


def make_mlp(in_features: int, out_features: int, hidden: Sequence[int], activation: str = "relu",
             device: torch.device | str = "cpu") -> MLP:
    """A torchrl ``MLP`` with explicit sizes (no lazy layers, so parameters exist before the loss copies them)."""
    act = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "silu": nn.SiLU}.get(activation)
    if act is None:
        raise ValueError(f"unknown activation {activation!r}")
    return MLP(in_features=in_features, out_features=out_features, num_cells=list(hidden),
               activation_class=act, device=device)


def orthogonal_init_(module: nn.Module, last_gain: float = 1e-2) -> None:
    """Orthogonal weights (gain sqrt 2), zero biases, a small last layer (CORL's ``orthogonal_init``)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    for i, lin in enumerate(linears):
        gain = last_gain if i == len(linears) - 1 else math.sqrt(2.0)
        nn.init.orthogonal_(lin.weight, gain=gain)
        nn.init.zeros_(lin.bias)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Build networks from ``seed`` without touching the caller's global torch RNG (None: use it)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def named_adam(groups: dict[str, list[torch.Tensor]], lrs: dict[str, float], **kwargs: Any) -> torch.optim.Adam:
    """One Adam over named param groups (one per network), so the seed API's single ``optimizer`` still
    carries per-network learning rates, and gradient clipping / norms can be per group."""
    param_groups = [{"params": list(params), "lr": lrs[name], "name": name}
                    for name, params in groups.items() if len(params)]
    return fused_adam(param_groups, **kwargs)


def fused_adam(params: Any, **kwargs: Any) -> torch.optim.Adam:
    """``torch.optim.Adam`` with the fused kernel (one kernel for all tensors; foreach where a device or
    dtype has no fused kernel). The default for-loop Adam on CPU launches ~10 ops per parameter tensor,
    which dominates small updates like DQN's; results equal it up to float rounding."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, foreach=True, **kwargs)
