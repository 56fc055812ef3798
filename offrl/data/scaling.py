"""Observation scaling fitted on a dataset: ``obs -> (obs - loc) / scale``, d3rlpy's observation scalers.

* ``standard``: ``loc`` the mean and ``scale`` the standard deviation + 1e-3 of every observation dimension
  (d3rlpy ``StandardObservationScaler``; CORL's state normalization);
* ``min_max``: maps ``[min, max]`` to ``[-1, 1]`` (d3rlpy ``MinMaxObservationScaler``); a constant dimension
  maps to 0.

The statistics come from every transition's ``observation`` of the dataset (what d3rlpy fits on), in float64,
so a run, its resume and a policy restored from it all fit the same scaler from the same (digest-pinned)
data. The stored data stays raw: training batches are scaled when sampled, and the policy scales the
env's observations itself (:mod:`offrl.algos.scaled`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import nn

from offrl.config.ranges import OBSERVATION_SCALERS
from offrl.errors import UserError

__all__ = ["ObservationScaler", "ObservationSpread", "checked_scaler", "fit_observation_scaler",
           "observation_spread"]

_STD_EPS = 1e-3  # d3rlpy StandardObservationScaler's eps, CORL's normalize_states eps
_CHUNK = 1 << 18  # rows per float64 pass: bounded memory on large memmapped datasets


@dataclass(frozen=True)
class ObservationSpread:
    """How far apart the observation dimensions' scales are (population std per dimension)."""

    std_min: float  # over the non-constant dimensions
    std_max: float
    constant: int  # dimensions with one value throughout

    @property
    def ratio(self) -> float:
        return self.std_max / self.std_min if self.std_min > 0 else 1.0

    def describe(self) -> str:
        const = f"; {self.constant} constant" if self.constant else ""
        return f"std {self.std_min:.3g} to {self.std_max:.3g} per dimension ({self.ratio:.0f}x apart{const})"


class ObservationScaler(nn.Module):
    """``(obs - loc) / scale`` with ``loc`` and ``scale`` as buffers (float32, the observation's shape)."""

    def __init__(self, kind: str, loc: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.kind = kind
        self.register_buffer("loc", loc.detach().clone().float())
        self.register_buffer("scale", scale.detach().clone().float())

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return (observation.to(self.loc.dtype) - self.loc) / self.scale

    def scale_batch(self, batch: TensorDictBase, observation_key: Any = "observation") -> TensorDictBase:
        """``batch`` with ``observation_key`` and ``("next", observation_key)`` scaled: new tensors in a
        shallow copy, so a buffer's storage (which a draw may return views of) is never written."""
        out = batch.copy()
        nested = observation_key if isinstance(observation_key, tuple) else (observation_key,)
        for key in (observation_key, ("next", *nested)):
            value = batch.get(key, None)
            if value is not None:
                out.set(key, self(value))
        return out

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, dims={self.loc.numel()}"


def checked_scaler(scaler: Any, device: Any, loss_module: Any = None) -> ObservationScaler | None:
    """A trainer's ``observation_scaler`` argument on ``device``; None: the one ``loss_module`` carries (a
    built algorithm's, :mod:`offrl.algos.scaled`), if any. Anything but a scaler is a user error."""
    scaler = scaler if scaler is not None else getattr(loss_module, "observation_scaler", None)
    if scaler is None:
        return None
    if not isinstance(scaler, ObservationScaler):
        raise UserError("observation_scaler must be an offrl.data.scaling.ObservationScaler (AlgoParts."
                        f"observation_scaler), got {type(scaler).__name__}")
    return scaler.to(device)


def _moments(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, population std, min, max) over the rows of ``obs``, accumulated in float64 chunk by chunk."""
    n = obs.shape[0]
    total = torch.zeros(obs.shape[1:], dtype=torch.float64)
    lo = hi = None
    for start in range(0, n, _CHUNK):
        part = torch.as_tensor(obs[start:start + _CHUNK]).to(torch.float64)
        total += part.sum(0)
        part_lo, part_hi = part.amin(0), part.amax(0)
        lo = part_lo if lo is None else torch.minimum(lo, part_lo)
        hi = part_hi if hi is None else torch.maximum(hi, part_hi)
    mean = total / n
    square = torch.zeros_like(total)
    for start in range(0, n, _CHUNK):  # second pass: no cancellation in E[x^2] - E[x]^2
        part = torch.as_tensor(obs[start:start + _CHUNK]).to(torch.float64)
        square += (part - mean).square().sum(0)
    assert lo is not None and hi is not None
    return mean, (square / n).sqrt(), lo, hi


def observation_spread(dataset: Any) -> ObservationSpread | None:
    """The spread of ``dataset``'s flat floating-point observations (None for other layouts)."""
    obs = dataset.data.get("observation", None)
    if obs is None or obs.ndim != 2 or obs.shape[0] == 0 or not torch.is_floating_point(obs):
        return None
    std = _moments(obs)[1]
    live = std[std > 0]
    if not torch.isfinite(std).all() or live.numel() == 0:
        return None
    return ObservationSpread(float(live.min()), float(live.max()), int((std == 0).sum()))


def fit_observation_scaler(kind: str, dataset: Any, *, option: str = "observation_scaler") -> ObservationScaler | None:
    """The scaler ``kind`` (``none``, ``standard``, ``min_max``) fitted on ``dataset``'s observations; None for
    ``none``. ``option`` is how the user named the setting (for the error lines)."""
    if kind not in OBSERVATION_SCALERS:
        raise UserError(f"{option}: use one of {', '.join(OBSERVATION_SCALERS)}, got {kind!r}")
    if kind == "none":
        return None
    if dataset is None:
        raise UserError(f"{option}={kind} is fitted on a dataset's observations, and a run trained online from "
                        "scratch has none; drop it or train from a dataset")
    obs = dataset.data.get("observation")
    name = getattr(dataset, "name", "the dataset")
    if obs.ndim != 2 or obs.shape[0] == 0:
        raise UserError(f"{option}={kind}: needs flat observations [N, dim], {name} has shape {tuple(obs.shape)}; "
                        "use observation_scaler=none")
    if obs.dtype == torch.bool:
        raise UserError(f"{option}={kind}: {name}'s observations are booleans; use observation_scaler=none")
    mean, std, lo, hi = _moments(obs)
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        raise UserError(f"{option}={kind}: {name} has non-finite observations; clean the data "
                        "(`offrl datasets info` lists them) or use observation_scaler=none")
    if kind == "standard":
        return ObservationScaler(kind, mean, std + _STD_EPS)
    half = (hi - lo) / 2
    return ObservationScaler(kind, (hi + lo) / 2, torch.where(half > 0, half, torch.ones_like(half)))
