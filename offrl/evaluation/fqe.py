"""Fitted Q Evaluation (Le et al. 2019) of a deterministic policy on logged transitions, with a bootstrap
confidence interval over episodes: no env needed.

FQE regresses ``Q(s, a)`` on ``r + γ (1 - terminated) Q(s', π(s'))`` over the data, again and again, then
estimates the policy's discounted return as the mean of ``Q(s0, π(s0))`` over the episodes' initial states.
Here the function class is linear in random Fourier features of (standardized observation, action)
(Rahimi & Recht 2007; discrete actions: one block of state features per action), so each FQE iteration is
a ridge regression ``w <- (G + λI)^-1 (c + γ C w)`` over the data's moments (``G = E[φφᵀ]``,
``C = E[φ φ'ᵀ]``, ``c = E[φ r]``, ``φ' = φ(s', π(s'))``). Where that map contracts, FQE converges to the
solution of ``(G + λI - γC) w = c``, computed directly (LSTD-Q): no iteration count to tune, no
under-trained critic, and seconds on a CPU. The policy is deterministic, so ``π(s')`` and ``π(s0)`` are
computed once.

The interval: ``bootstrap`` extra fits, each on a resample (with replacement) of whole episodes; each fit's
estimate is the mean over its resample's initial states, and the 95% CI is the 2.5/97.5 percentiles of
those estimates (Hao et al. 2021, "Bootstrapping FQE"). It counts the data's sampling error, not FQE's bias
(a policy that leaves the data is extrapolated: docs/ope.md says where that was measured).

Diagnostics of the point fit: its TD error on the data (mean squared, in reward units², and relative to the
targets' variance), the spectral radius of the FQE iteration's map (``>= 1``: the iteration diverges; the
policy reaches states the data does not cover), and ``diverged``: that, a non-finite value, or an estimate
outside the values the rewards allow (``[min(r_min, 0), max(r_max, 0)] / (1 - γ)``, widened by 10%).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["FQEResult", "fit_fqe"]


@dataclass
class FQEResult:
    """Estimated discounted return of a policy at the data's initial states, with its bootstrap CI."""

    value: float  # mean Q(s0, π(s0)) of the point fit (all episodes)
    ci_low: float
    ci_high: float
    bootstrap: np.ndarray = field(repr=False)  # one estimate per bootstrap fit
    td_error: float = math.nan  # mean squared TD error of the point fit on the data (reward units²)
    td_error_relative: float = math.nan  # td_error / variance of the TD targets
    diverged: bool = False
    diverged_reason: str | None = None
    gamma: float = 0.99
    episodes: int = 0
    transitions: int = 0
    seconds: float = 0.0
    spectral_radius: float = math.nan  # of the FQE iteration's linear map: < 1 contracts, >= 1 diverges
    features: int = 0
    unstable_bootstrap_fits: int = 0  # resampled fits whose estimate the rewards do not allow (a wide CI)

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {"value": num(self.value), "ci_low": num(self.ci_low), "ci_high": num(self.ci_high),
                "bootstrap_fits": len(self.bootstrap),
                "unstable_bootstrap_fits": self.unstable_bootstrap_fits, "td_error": num(self.td_error),
                "td_error_relative": num(self.td_error_relative), "diverged": self.diverged,
                "diverged_reason": self.diverged_reason, "gamma": self.gamma, "episodes": self.episodes,
                "transitions": self.transitions, "features": self.features,
                "spectral_radius": num(self.spectral_radius), "seconds": round(self.seconds, 2)}


def _episode_counts(episode: torch.Tensor, heads: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(episode index of each row [N], counts [H, E]): head 0 counts every episode once, head h > 0 is a
    with-replacement resample of the episodes."""
    ids, inverse = torch.unique(episode, return_inverse=True)
    n_ep = len(ids)
    counts = torch.ones(heads, n_ep, dtype=torch.float64)
    if heads > 1:
        draws = torch.randint(n_ep, (heads - 1, n_ep), generator=gen)
        counts[1:] = torch.stack([torch.bincount(d, minlength=n_ep) for d in draws]).double()
    return inverse, counts


class _Features:
    """Random Fourier features of (observation, action) (Rahimi & Recht 2007) plus a constant: continuous
    actions are inputs; discrete ones select one block of state features per action."""

    def __init__(self, obs_dim: int, act_dim: int, n_actions: int | None, features: int, bandwidth: float,
                 gen: torch.Generator) -> None:
        self.n_actions = n_actions
        in_dim = obs_dim + (0 if n_actions is not None else act_dim)
        per = features if n_actions is None else max(8, features // n_actions)
        self.w = torch.randn(in_dim, per, generator=gen, dtype=torch.float64) / bandwidth
        self.b = torch.rand(per, generator=gen, dtype=torch.float64) * 2 * math.pi
        self.scale = math.sqrt(2.0)  # unit-variance features: the ridge is relative to them
        self.dim = (per + 1) * (n_actions or 1)

    def __call__(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = obs if self.n_actions is not None else torch.cat([obs, action], -1)
        phi = torch.cat([torch.cos(x @ self.w + self.b) * self.scale, torch.ones(len(x), 1, dtype=x.dtype)], -1)
        if self.n_actions is None:
            return phi
        out = torch.zeros(len(x), self.n_actions, phi.shape[1], dtype=phi.dtype)
        out[torch.arange(len(x)), action.long().reshape(-1)] = phi
        return out.reshape(len(x), -1)


def fit_fqe(
    data: Any,
    policy: Callable[[torch.Tensor], torch.Tensor],
    *,
    gamma: float,
    n_actions: int | None = None,
    action_low: Any = None,
    action_high: Any = None,
    features: int = 512,
    bandwidth: float = 1.0,
    ridge: float = 1e-3,
    bootstrap: int = 20,
    seed: int = 0,
) -> FQEResult:
    """FQE of ``policy`` (observation batch -> actions, deterministic) on ``data`` (TED rows: ``observation``,
    ``action``, ``episode``, ``step``, ``("next", "observation"|"reward"|"terminated")``).

    ``n_actions``: discrete policies (actions are indices); otherwise continuous actions are scaled from
    ``[action_low, action_high]`` to ``[-1, 1]``. Observations are standardized by the data's mean and std.
    """
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    obs = data["observation"].double().reshape(len(data), -1)
    nxt = data["next", "observation"].double().reshape(len(data), -1)
    reward = data["next", "reward"].double().reshape(-1)
    alive = 1.0 - data["next", "terminated"].double().reshape(-1)
    episode = data["episode"].reshape(-1)
    first = data["step"].reshape(-1) == 0
    if not bool(first.any()):  # no episode starts in the data: each episode's first row
        first = torch.ones_like(episode, dtype=torch.bool)
        first[1:] = episode[1:] != episode[:-1]
    s0_rows = torch.nonzero(first).reshape(-1)
    mean, std = obs.mean(0), obs.std(0).clamp_min(1e-3)
    with torch.no_grad():
        a_next, a_s0 = policy(nxt.float()), policy(obs[s0_rows].float())
    if n_actions is not None:
        act, act_next, act_s0 = data["action"].long().reshape(-1), a_next.long().reshape(-1), a_s0.long().reshape(-1)
        act_dim = 1
    else:
        low = torch.as_tensor(np.asarray(action_low, dtype=np.float64)).reshape(-1)
        high = torch.as_tensor(np.asarray(action_high, dtype=np.float64)).reshape(-1)

        def unit(a: torch.Tensor) -> torch.Tensor:
            return (2 * (a.double().reshape(a.shape[0], -1) - low) / (high - low) - 1).clamp(-1, 1)

        act, act_next, act_s0 = unit(data["action"]), unit(a_next), unit(a_s0)
        act_dim = low.numel()
    feat = _Features(obs.shape[1], act_dim, n_actions, features, bandwidth, gen)
    phi = feat((obs - mean) / std, act)
    phi_next = feat((nxt - mean) / std, act_next) * alive.unsqueeze(1)
    phi_s0 = feat((obs[s0_rows] - mean) / std, act_s0)
    heads = 1 + int(bootstrap)
    inverse, counts = _episode_counts(episode, heads, gen)
    # each head's moments weigh every row by its episode's count in that head's resample: sums of
    # per-episode moments, one episode at a time (memory D², not E·D²)
    dim = feat.dim
    gram = torch.zeros(heads, dim, dim, dtype=torch.float64)
    cross = torch.zeros_like(gram)
    rhs = torch.zeros(heads, dim, dtype=torch.float64)
    order = torch.argsort(inverse, stable=True)
    bounds = torch.cumsum(torch.bincount(inverse, minlength=counts.shape[1]), 0).tolist()
    start = 0
    for e, end in enumerate(bounds):
        rows = order[start:end]
        start = end
        f = phi[rows]
        c = counts[:, e]
        gram.add_(c.reshape(-1, 1, 1) * (f.T @ f).unsqueeze(0))
        cross.add_(c.reshape(-1, 1, 1) * (f.T @ phi_next[rows]).unsqueeze(0))
        rhs.add_(c.reshape(-1, 1) * (f.T @ reward[rows]).unsqueeze(0))
    total = (counts * torch.bincount(inverse, minlength=counts.shape[1]).double()).sum(1)
    gram, cross, rhs = gram / total.reshape(-1, 1, 1), cross / total.reshape(-1, 1, 1), rhs / total.reshape(-1, 1)
    eye = torch.eye(dim, dtype=torch.float64)
    # FQE with a linear class iterates the ridge regression w <- (G + λI)^-1 (c + γ C w); where the map
    # contracts it converges to the solution of (G + λI - γ C) w = c, solved here directly (LSTD-Q).
    w = torch.linalg.solve(gram + ridge * eye - gamma * cross, rhs.unsqueeze(-1))
    radius = float(torch.linalg.eigvals(gamma * torch.linalg.solve(gram[0] + ridge * eye, cross[0])).abs().max())
    ep_s0 = inverse[s0_rows]
    v0 = (phi_s0 @ w.squeeze(-1).T).T  # [H, S]
    w_s0 = counts[:, ep_s0]
    estimates = ((v0 * w_s0).sum(1) / w_s0.sum(1).clamp_min(1)).numpy()
    td_all = phi @ w[0, :, 0] - (reward + gamma * phi_next @ w[0, :, 0])
    td = float((td_all ** 2).mean())
    td_rel = td / max(float((reward + gamma * phi_next @ w[0, :, 0]).var()), 1e-12)
    value = float(estimates[0])
    boot = estimates[1:]
    lo_hi = np.percentile(boot, [2.5, 97.5]) if len(boot) else (math.nan, math.nan)
    r_min, r_max = float(reward.min()), float(reward.max())
    v_lo, v_hi = min(r_min, 0.0) / (1 - gamma), max(r_max, 0.0) / (1 - gamma)
    margin = 0.1 * (v_hi - v_lo)
    unstable = int(np.sum(~np.isfinite(boot) | (boot < v_lo - margin) | (boot > v_hi + margin)))
    reason = None
    if not np.all(np.isfinite(estimates)) or not math.isfinite(td):
        reason = "non-finite values"
    elif radius >= 1.0:
        reason = f"the FQE iteration does not contract (spectral radius {radius:.3g} >= 1)"
    elif not (v_lo - margin <= value <= v_hi + margin):
        reason = f"estimate {value:.4g} outside the range the rewards allow [{v_lo:.4g}, {v_hi:.4g}]"
    return FQEResult(value=value, ci_low=float(lo_hi[0]), ci_high=float(lo_hi[1]), bootstrap=boot, td_error=td,
                     td_error_relative=td_rel, diverged=reason is not None, diverged_reason=reason, gamma=gamma,
                     episodes=int(counts.shape[1]), transitions=len(obs),
                     seconds=time.perf_counter() - t0, spectral_radius=radius, features=dim,
                     unstable_bootstrap_fits=unstable)
