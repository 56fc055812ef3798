"""Reward scaling: ``r -> reward_scale * T(r) + reward_bias``, with ``T`` one of d3rlpy's reward scalers.

``T`` (``reward_scaler``), fitted on the dataset's rewards in float64:

* ``none``: ``T(r) = r`` (with ``reward_scale``/``reward_bias`` alone: CORL's and the CQL / Cal-QL authors'
  ``reward_scale``/``reward_bias``, d3rlpy's ``MultiplyRewardScaler`` and ``ConstantShiftRewardScaler``);
* ``standard``: ``(r - mean) / (std + 1e-3)`` (d3rlpy ``StandardRewardScaler``);
* ``min_max``: ``(r - min) / (max - min)``, the data's rewards onto ``[0, 1]`` (d3rlpy ``MinMaxRewardScaler``);
* ``return_based``: ``r / (max episode return - min episode return)`` over the dataset's episodes
  (d3rlpy ``ReturnBasedRewardScaler``; CORL's MuJoCo reward normalisation is this with ``reward_scale=1000``).

``reward_scale`` is d3rlpy's ``multiplier``. Every choice is affine, ``r' = a r + b``, so a discounted return
over ``n`` steps maps to ``a G + b (1 - gamma^n) / (1 - gamma)`` (:meth:`RewardScaler.returns`), and a value
learnt on scaled rewards maps back with the inverse (:meth:`RewardScaler.unscale_value`): that is how the
critic diagnostics put V(s0) in the env's units, beside the data's and the policy's returns.
The stored data stays raw; a trainer scales each sampled batch's reward.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase

from offrl.config.ranges import REWARD_SCALERS
from offrl.errors import UserError

__all__ = ["RewardScaler", "checked_reward_scaler", "fit_reward_scaler"]

_STD_EPS = 1e-3  # d3rlpy StandardRewardScaler's eps


class RewardScaler:
    """``reward * multiplier + shift`` (``multiplier > 0``); ``kind`` and ``fitted`` say where they came from."""

    def __init__(self, kind: str, multiplier: float, shift: float, fitted: str = "") -> None:
        self.kind = kind
        self.multiplier = float(multiplier)
        self.shift = float(shift)
        self.fitted = fitted

    def __call__(self, reward: torch.Tensor) -> torch.Tensor:
        out = reward * torch.tensor(self.multiplier, dtype=reward.dtype, device=reward.device)
        return out + torch.tensor(self.shift, dtype=reward.dtype, device=reward.device) if self.shift else out

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, RewardScaler) and self.multiplier == other.multiplier
                and self.shift == other.shift)

    def __hash__(self) -> int:
        return hash((self.multiplier, self.shift))

    def __repr__(self) -> str:
        return f"RewardScaler({self.describe()})"

    def describe(self) -> str:
        fitted = f" ({self.fitted})" if self.fitted else ""
        return f"reward -> {self.multiplier:.6g} * reward {'+' if self.shift >= 0 else '-'} {abs(self.shift):.6g}" \
               f"{fitted}"

    def returns(self, discounted: Any, steps: Any, gamma: float) -> np.ndarray:
        """Discounted returns over ``steps`` rewards each, as they read with scaled rewards."""
        return self.multiplier * np.asarray(discounted, dtype=np.float64) + self.shift * _horizon(steps, gamma)

    def unscale_value(self, mean_value: float, steps: Any, gamma: float) -> float:
        """The mean of values learnt on scaled rewards, back in the env's units, for states whose returns run
        ``steps`` rewards each (``inf`` where the episode was truncated: the critic bootstraps through a
        truncation, so the shift adds ``1 / (1 - gamma)`` there): the inverse of :meth:`returns`, averaged."""
        if not self.shift:
            return float(mean_value) / self.multiplier
        return (float(mean_value) - self.shift * float(np.mean(_horizon(steps, gamma)))) / self.multiplier

    def scale_batch(self, batch: TensorDictBase, reward_key: Any = ("next", "reward")) -> TensorDictBase:
        """``batch`` with its reward scaled (new tensors in a shallow copy: the buffer is never written).
        ``mc_return`` (Cal-QL's bound) is multiplied too; with a shift its value depends on the steps to the
        end of the episode, which a row does not carry, so it is left out of the batch (Cal-QL refuses
        shifts, :meth:`offrl.algos.calql_loss.CalQLLoss.from_cql`)."""
        out = batch.copy()
        reward = batch.get(reward_key, None)
        if reward is not None:
            out.set(reward_key, self(reward))
        mc_return = batch.get("mc_return", None)
        if mc_return is not None:
            if self.shift:
                out = out.exclude("mc_return")
            else:
                out.set("mc_return", self(mc_return))
        return out


def _horizon(steps: Any, gamma: float) -> np.ndarray:
    """``sum_{k < n} gamma^k`` for each ``n`` of ``steps``: what a constant reward of 1 adds to a return."""
    n = np.asarray(steps, dtype=np.float64)
    return n if gamma == 1.0 else (1.0 - np.power(gamma, n)) / (1.0 - gamma)


def checked_reward_scaler(scaler: Any, loss_module: Any = None) -> RewardScaler | None:
    """A trainer's ``reward_scaler`` argument; None: the one ``loss_module`` carries (:mod:`offrl.algos.scaled`)."""
    scaler = scaler if scaler is not None else getattr(loss_module, "reward_scaler", None)
    if scaler is None or isinstance(scaler, RewardScaler):
        return scaler
    raise UserError("reward_scaler must be an offrl.data.reward_scaling.RewardScaler (AlgoParts.reward_scaler), "
                    f"got {type(scaler).__name__}")


def _episode_returns(reward: torch.Tensor, episode: torch.Tensor) -> torch.Tensor:
    ids = episode.reshape(-1).long()
    ids = ids - ids.min()
    totals = torch.zeros(int(ids.max()) + 1, dtype=torch.float64).index_add_(0, ids, reward)
    return totals[torch.bincount(ids) > 0]


def fit_reward_scaler(kind: str, dataset: Any, *, scale: float = 1.0, bias: float = 0.0,
                      section: str = "algo") -> RewardScaler | None:
    """``<section>.reward_scaler`` ``kind`` fitted on ``dataset``'s rewards, then ``* scale + bias``; None when
    nothing changes the rewards (``none``, scale 1, bias 0). ``dataset`` may be None for ``none``."""
    if kind not in REWARD_SCALERS:
        raise UserError(f"{section}.reward_scaler: use one of {', '.join(REWARD_SCALERS)}, got {kind!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise UserError(f"{section}.reward_scale: must be a finite number > 0, got {scale}")
    if not math.isfinite(bias):
        raise UserError(f"{section}.reward_bias: must be a finite number, got {bias}")
    if kind == "none":
        if scale == 1.0 and bias == 0.0:
            return None
        return RewardScaler(kind, scale, bias)
    if dataset is None:
        raise UserError(f"{section}.reward_scaler={kind} is fitted on a dataset's rewards, and a run trained online "
                        f"from scratch has none; use {section}.reward_scaler=none (reward_scale/reward_bias need "
                        "no data) or train from a dataset")
    name = getattr(dataset, "name", "the dataset")
    reward = torch.as_tensor(dataset.data.get(("next", "reward"))).reshape(-1).to(torch.float64)
    if reward.numel() == 0 or not torch.isfinite(reward).all():
        raise UserError(f"{section}.reward_scaler={kind}: {name} has no rewards or non-finite ones; clean the "
                        "data (`offrl datasets info` lists them) or use reward_scaler=none")
    if kind == "standard":
        mean, std = float(reward.mean()), float(reward.std(correction=0))
        a, b, fitted = 1.0 / (std + _STD_EPS), -mean / (std + _STD_EPS), f"mean {mean:.6g}, std {std:.6g}"
    elif kind == "min_max":
        lo, hi = float(reward.min()), float(reward.max())
        if hi == lo:
            raise UserError(f"{section}.reward_scaler=min_max: every reward of {name} is {lo:g}, so there is no "
                            "range to map; use reward_scaler=none")
        a, b, fitted = 1.0 / (hi - lo), -lo / (hi - lo), f"min {lo:.6g}, max {hi:.6g}"
    else:  # return_based
        returns = _episode_returns(reward, dataset.data.get("episode"))
        lo, hi = float(returns.min()), float(returns.max())
        if hi == lo:
            raise UserError(f"{section}.reward_scaler=return_based: every episode of {name} returns {lo:g} "
                            f"({returns.numel()} episodes), so there is no range to divide by; use "
                            "reward_scaler=none with reward_scale")
        a, b, fitted = 1.0 / (hi - lo), 0.0, f"episode returns {lo:.6g} to {hi:.6g}"
    return RewardScaler(kind, scale * a, scale * b + bias, fitted)
