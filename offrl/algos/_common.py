"""Pieces the algorithm builders share: MLPs, initialisation, seeding, and the bundle they return."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict.nn import NormalParamExtractor
from torch import nn
from torchrl.modules import MLP

from offrl.config.algos import ACTOR_STDS

__all__ = ["ACTOR_STDS", "AlgoParts", "ClampedExpScale", "actor_std_tail", "fused_adam", "make_mlp", "named_adam",
           "orthogonal_init_", "seeded"]


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


class ClampedExpScale(nn.Module):
    """``[loc, log_std] -> (loc, max(exp(clamp(log_std, lo, hi)), scale_lb))``: the std of d3rlpy's
    ``NormalPolicy`` and of the CQL authors' (rlkit's) ``TanhGaussianPolicy``: log std clamped to [-20, 2].
    A drop-in for tensordict's ``NormalParamExtractor`` (parameter-free, so the fused losses
    run it as the actor's tail)."""

    def __init__(self, min_log_std: float = -20.0, max_log_std: float = 2.0, scale_lb: float = 0.0) -> None:
        super().__init__()
        self.min_log_std, self.max_log_std, self.scale_lb = float(min_log_std), float(max_log_std), float(scale_lb)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_std = x.chunk(2, -1)
        return loc, log_std.clamp(self.min_log_std, self.max_log_std).exp().clamp_min(self.scale_lb)


def actor_std_tail(actor_std: str, scale_lb: float) -> nn.Module:
    """The module after a Gaussian actor's MLP that splits ``[loc, raw]`` into ``(loc, scale)``:
    ``"softplus"``: torchrl's and tensordict's ``biased_softplus_1.0`` (``softplus(raw + b) + 0.01``, 1 at raw 0);
    ``"exp"``: :class:`ClampedExpScale` (d3rlpy). Both floored at ``scale_lb``."""
    if actor_std == "softplus":
        return NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=scale_lb)
    if actor_std == "exp":
        return ClampedExpScale(scale_lb=scale_lb)
    raise ValueError(f"actor_std must be one of {ACTOR_STDS}, got {actor_std!r}")


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
    carries per-network learning rates, and gradient norms are logged per group."""
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
