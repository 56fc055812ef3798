"""Fitted Q Evaluation (Le et al. 2019) of a deterministic policy on logged transitions, with a bootstrap
confidence interval over episodes: no env needed.

FQE regresses ``Q(s, a)`` on ``r + γ (1 - terminated) Q(s', π(s'))`` over the data, again and again, then
estimates the policy's discounted return as the mean of ``Q(s0, π(s0))`` over the episodes' initial states.
As in the DOPE benchmark (Fu et al. 2021) and d3rlpy's FQE, ``Q`` is a neural network (two ReLU layers;
discrete actions: one output per action) trained by minibatch Adam on the squared TD error against a
target network that is synced every ``target_sync`` steps, so ``steps / target_sync`` Bellman backups are
made. Inputs are standardized observations (and continuous actions scaled to ``[-1, 1]``); the network
predicts ``Q (1 - γ) / max|r|``, and each target is clipped to the values the rewards allow
(``[min(r_min, 0), max(r_max, 0)] / (1 - γ)``): a policy that leaves the data cannot blow the fit up.
``π(s')`` and ``π(s0)`` are computed once (the policy is deterministic). Torch's global RNG is untouched.

The interval: ``bootstrap`` resamples (with replacement) of whole episodes. Each resample refits the
network's last layer by ``refit_iterations`` FQE iterations (ridge regressions on the network's
penultimate features, the same clipped targets), starting from the trained layer; its estimate is the mean
over its resample's initial states. The same refit on every episode once gives the refits' centre; the 95%
CI is the network's estimate plus the 2.5/97.5 percentiles of the resampled refits' shifts from that
centre (Hao et al. 2021,
"Bootstrapping FQE", with the representation held fixed: a full neural refit per resample costs 20× the
CPU). It counts the data's sampling error, not FQE's bias (a policy that leaves the data is extrapolated:
docs/ope.md says where that was measured).

Diagnostics of the point fit: its TD error on the data (mean squared, in reward units², and relative to the
targets' variance); the spectral radius of the last layer's FQE map without clipping
(``γ (G + λI)⁻¹ C`` on the penultimate features; ``>= 1``: unclipped, the iteration would diverge, the
policy reaches states the data does not pin down); ``clipped_fraction``, the share of targets the clip
changed; and ``diverged``: a non-finite value or an estimate outside the values the rewards allow (widened
by 10%). The radius and the clipped share are warnings, not verdicts: near the top of the value range the
radius sits near 1 and the clip trims targets of good policies too (docs/ope.md has the measurements).
"""

from __future__ import annotations

import copy
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
    spectral_radius: float = math.nan  # of the last layer's unclipped FQE map: < 1 contracts, >= 1 diverges
    features: int = 0  # dimension of the last layer's features (all action blocks)
    unstable_bootstrap_fits: int = 0  # resampled fits whose estimate the rewards do not allow (a wide CI)
    clipped_fraction: float = 0.0  # share of the point fit's TD targets changed by the clip
    steps: int = 0  # gradient steps of the network

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {"value": num(self.value), "ci_low": num(self.ci_low), "ci_high": num(self.ci_high),
                "bootstrap_fits": len(self.bootstrap),
                "unstable_bootstrap_fits": self.unstable_bootstrap_fits, "td_error": num(self.td_error),
                "td_error_relative": num(self.td_error_relative), "diverged": self.diverged,
                "diverged_reason": self.diverged_reason, "gamma": self.gamma, "episodes": self.episodes,
                "transitions": self.transitions, "features": self.features,
                "spectral_radius": num(self.spectral_radius), "clipped_fraction": round(self.clipped_fraction, 4),
                "steps": self.steps, "seconds": round(self.seconds, 2)}


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


class _QNet(torch.nn.Module):
    """Two ReLU layers, then a linear layer: Q of each action (discrete) or of the input action."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(in_dim, hidden), torch.nn.ReLU(),
                                        torch.nn.Linear(hidden, hidden), torch.nn.ReLU())
        self.head = torch.nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, action: torch.Tensor | None) -> torch.Tensor:
        q = self.head(self.body(x))
        return q.squeeze(-1) if action is None else q.gather(-1, action.unsqueeze(-1)).squeeze(-1)

    def features(self, x: torch.Tensor, action: torch.Tensor | None, n_actions: int | None) -> torch.Tensor:
        """The last layer's input with a constant, one block per action: ``forward == features @ last_weights``."""
        h = torch.cat([self.body(x), torch.ones(len(x), 1)], -1).double()
        if n_actions is None:
            return h
        out = torch.zeros(len(x), n_actions, h.shape[1], dtype=h.dtype)
        out[torch.arange(len(x)), action] = h
        return out.reshape(len(x), -1)

    def last_weights(self) -> torch.Tensor:
        return torch.cat([self.head.weight, self.head.bias.unsqueeze(-1)], -1).detach().double().reshape(-1)


def fit_fqe(
    data: Any,
    policy: Callable[[torch.Tensor], torch.Tensor],
    *,
    gamma: float,
    n_actions: int | None = None,
    action_low: Any = None,
    action_high: Any = None,
    hidden: int = 64,
    steps: int = 3000,
    target_sync: int = 10,
    lr: float = 1e-3,
    batch_size: int = 256,
    ridge: float = 1e-3,
    refit_iterations: int = 100,
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
    n = len(data)
    obs = data["observation"].float().reshape(n, -1)
    nxt = data["next", "observation"].float().reshape(n, -1)
    reward = data["next", "reward"].double().reshape(-1)
    alive = 1.0 - data["next", "terminated"].double().reshape(-1)
    episode = data["episode"].reshape(-1)
    first = data["step"].reshape(-1) == 0
    if not bool(first.any()):  # no episode starts in the data: each episode's first row
        first = torch.ones_like(episode, dtype=torch.bool)
        first[1:] = episode[1:] != episode[:-1]
    s0_rows = torch.nonzero(first).reshape(-1)
    mean, std = obs.mean(0), obs.std(0).clamp_min(1e-3) if n > 1 else torch.ones(obs.shape[1])
    with torch.no_grad():
        a_next, a_s0 = policy(nxt), policy(obs[s0_rows])
    z, z_next, z_s0 = (obs - mean) / std, (nxt - mean) / std, (obs[s0_rows] - mean) / std
    if n_actions is not None:
        act, act_next, act_s0 = data["action"].long().reshape(-1), a_next.long().reshape(-1), a_s0.long().reshape(-1)
        x, x_next, x_s0 = z, z_next, z_s0
    else:
        low = torch.as_tensor(np.asarray(action_low, dtype=np.float32)).reshape(-1)
        high = torch.as_tensor(np.asarray(action_high, dtype=np.float32)).reshape(-1)

        def unit(a: torch.Tensor) -> torch.Tensor:
            return (2 * (a.float().reshape(a.shape[0], -1) - low) / (high - low) - 1).clamp(-1, 1)

        x, x_next, x_s0 = (torch.cat([z, unit(data["action"])], -1), torch.cat([z_next, unit(a_next)], -1),
                           torch.cat([z_s0, unit(a_s0)], -1))
        act = act_next = act_s0 = None
    # value units: the network predicts Q (1 - γ) / max|r|, within [lo, hi] for any policy
    r_scale = float(reward.abs().max()) or 1.0
    to_value = r_scale / (1 - gamma)
    lo, hi = min(float(reward.min()), 0.0) / r_scale, max(float(reward.max()), 0.0) / r_scale
    r_unit = (reward / to_value).float()
    alive_f = alive.float()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = _QNet(x.shape[1], n_actions or 1, hidden)
    target = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for t in range(int(steps)):
        idx = torch.randint(n, (min(batch_size, n),), generator=gen)
        with torch.no_grad():
            q_next = target(x_next[idx], None if act_next is None else act_next[idx])
            y = (r_unit[idx] + gamma * alive_f[idx] * q_next).clamp(lo, hi)
        loss = torch.nn.functional.mse_loss(net(x[idx], None if act is None else act[idx]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (t + 1) % target_sync == 0:
            target.load_state_dict(net.state_dict())

    # the last layer: features and weights in value units; the bootstrap refits it per resample of episodes
    with torch.no_grad():
        phi, phi_next = net.features(x, act, n_actions), net.features(x_next, act_next, n_actions)
        phi_s0 = net.features(x_s0, act_s0, n_actions)
    w0 = net.last_weights()
    heads = 1 + int(bootstrap)
    inverse, counts = _episode_counts(episode, heads, gen)
    weights = counts[:, inverse]  # [H, N]: each row weighed by its episode's count in the head's resample
    total = weights.sum(1)
    dim = phi.shape[1]
    eye = torch.eye(dim, dtype=torch.float64)
    gram = torch.stack([(phi * (wt / tot).unsqueeze(1)).T @ phi for wt, tot in zip(weights, total, strict=True)]) + ridge * eye
    chol = torch.linalg.cholesky(gram) if heads > 1 else None
    w = w0.expand(heads, dim).T.clone()  # [D, H]: head 0 refits on every episode once, the rest on resamples
    for _ in range(int(refit_iterations) if heads > 1 else 0):
        y = reward.unsqueeze(1) / to_value + gamma * alive.unsqueeze(1) * (phi_next @ w).clamp(lo, hi)  # [N, H]
        rhs = (weights * y.T) @ phi / total.reshape(-1, 1)  # [H, D]
        w = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1).T
    ep_s0 = inverse[s0_rows]
    w_s0 = counts[:, ep_s0]
    v0 = (phi_s0 @ torch.cat([w0.unsqueeze(1), w], 1)).T * to_value  # [1 + H, S]: the network, then the refits
    refits = ((v0[1:] * w_s0).sum(1) / w_s0.sum(1).clamp_min(1)).numpy()
    value = float(v0[0].mean())
    # the resamples' spread, centred on the network's estimate: each refit's shift from the all-episode refit
    estimates = np.concatenate([[value], value + refits[1:] - refits[0]]) if heads > 1 else np.array([value])
    # diagnostics of the point fit, in reward units
    raw_next = phi_next @ w0
    targets_unit = reward / to_value + gamma * alive * raw_next.clamp(lo, hi)
    clipped = float(((raw_next < lo) | (raw_next > hi)).double().mul(alive).sum() / max(float(alive.sum()), 1.0))
    td = float((((phi @ w0) - targets_unit) * to_value).pow(2).mean())
    td_rel = td / max(float((targets_unit * to_value).var()) if n > 1 else 0.0, 1e-12)
    cross = (phi.T @ phi_next) / n
    radius = float(torch.linalg.eigvals(gamma * torch.linalg.solve(gram[0], cross)).abs().max())
    boot = estimates[1:]
    lo_hi = np.percentile(boot, [2.5, 97.5]) if len(boot) else (math.nan, math.nan)
    v_lo, v_hi = lo * to_value, hi * to_value
    margin = 0.1 * (v_hi - v_lo)
    unstable = int(np.sum(~np.isfinite(boot) | (boot < v_lo - margin) | (boot > v_hi + margin)))
    reason = None
    if not np.all(np.isfinite(estimates)) or not math.isfinite(td):
        reason = "non-finite values"
    elif not (v_lo - margin <= value <= v_hi + margin):
        reason = f"estimate {value:.4g} outside the range the rewards allow [{v_lo:.4g}, {v_hi:.4g}]"
    return FQEResult(value=value, ci_low=float(lo_hi[0]), ci_high=float(lo_hi[1]), bootstrap=boot, td_error=td,
                     td_error_relative=td_rel, diverged=reason is not None, diverged_reason=reason, gamma=gamma,
                     episodes=int(counts.shape[1]), transitions=n, seconds=time.perf_counter() - t0,
                     spectral_radius=radius, features=dim, unstable_bootstrap_fits=unstable,
                     clipped_fraction=clipped, steps=int(steps))
