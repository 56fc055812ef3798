"""Policy evaluation in the environment: K deterministic episodes, each run to its own end.

Episodes run in waves on a gymnasium ``SyncVectorEnv`` (one policy forward per step for the whole wave
instead of one per episode; the envs we target step in microseconds, so the policy call dominates).
Sub-env ``j`` of a wave is reset with seed ``seed + i`` for its episode ``i``, which makes the result
identical to running the episodes one by one with ``env.reset(seed=seed + i)``. A finished sub-env is
auto-reset by the vector env on the next step (gymnasium's NEXT_STEP mode); its outputs are ignored from
then on, so no episode is cut short when another one ends (torchrl's sota scripts stop at the first done).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from offrl.data.envs import make_env
from offrl.errors import UserError
from offrl.evaluation.findings import mean_ci

__all__ = ["EvalResult", "Reference", "evaluate", "normalize", "resolve_reference"]

# Larger waves stop paying once the policy forward is no longer the bottleneck; this also bounds memory.
MAX_PARALLEL_ENVS = 16


@dataclass(frozen=True)
class Reference:
    """Reference returns for the normalized score and where they came from."""

    min: float
    max: float
    source: str  # "dataset metadata", "D4RL table", "user", ...


def normalize(returns: np.ndarray | Sequence[float] | float, ref: Reference | None) -> np.ndarray:
    """``100 * (R - ref_min) / (ref_max - ref_min)``; NaN when there is no reference."""
    r = np.asarray(returns, dtype=np.float64)
    if ref is None or not math.isfinite(ref.min) or not math.isfinite(ref.max) or ref.max == ref.min:
        return np.full_like(r, np.nan)
    return 100.0 * (r - ref.min) / (ref.max - ref.min)


def resolve_reference(ref: Any) -> Reference | None:
    """Accept a :class:`Reference`, a ``(min, max[, source])`` tuple, a dict with ``min``/``max``
    (or ``ref_min_score``/``ref_max_score``) and ``source``, an object with ``.info`` (an OfflineDataset),
    or None."""
    if ref is None or isinstance(ref, Reference):
        return ref
    info = getattr(ref, "info", None)
    if info is not None:
        lo, hi = getattr(info, "ref_min_score", None), getattr(info, "ref_max_score", None)
        if lo is None or hi is None:
            return None
        return Reference(float(lo), float(hi), str(getattr(info, "ref_source", None) or "dataset"))
    if isinstance(ref, dict):
        lo = ref.get("min", ref.get("ref_min_score"))
        hi = ref.get("max", ref.get("ref_max_score"))
        if lo is None or hi is None:
            return None
        return Reference(float(lo), float(hi), str(ref.get("source", ref.get("ref_source")) or "user"))
    if isinstance(ref, (tuple, list)) and len(ref) in (2, 3):
        return Reference(float(ref[0]), float(ref[1]), str(ref[2]) if len(ref) == 3 else "user")
    raise TypeError(f"ref must be a Reference, (min, max[, source]), a dict or None, not {type(ref).__name__}")


@dataclass
class EvalResult:
    """Returns of K evaluation episodes (deterministic policy) and their normalized scores."""

    returns: np.ndarray
    lengths: np.ndarray
    seeds: list[int]
    discounted_returns: np.ndarray  # at ``gamma``: what V(s0) estimates for the achieved behaviour
    gamma: float
    initial_observations: Any = field(repr=False, default=None)  # stacked s0 of each episode
    ref: Reference | None = None
    env_id: str | None = None
    terminated: Any = field(repr=False, default=None)  # per episode: ended by termination (else truncated)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    @property
    def normalized(self) -> np.ndarray:
        return normalize(self.returns, self.ref)

    @property
    def normalized_mean(self) -> float:
        return float(np.mean(self.normalized))

    @property
    def normalized_std(self) -> float:
        return float(np.std(self.normalized))

    @property
    def ref_source(self) -> str | None:
        return self.ref.source if self.ref is not None else None

    @property
    def return_ci(self) -> tuple[float, float]:
        """Student-t 95% interval of the mean return over the episodes (NaN with one episode)."""
        return mean_ci(self.returns)[1:]

    @property
    def normalized_ci(self) -> tuple[float, float]:
        """The same interval in normalized-score units (NaN without references)."""
        return mean_ci(self.normalized)[1:]

    def metrics(self) -> dict[str, float]:
        """The eval columns of ``metrics.csv`` (see docs/contracts.md)."""
        return {
            "eval_return_mean": self.mean,
            "eval_return_std": self.std,
            "eval_length_mean": float(np.mean(self.lengths)),
            "eval_normalized_score": self.normalized_mean,
            "eval_episodes": float(len(self.returns)),
            "eval_return_ci_low": self.return_ci[0],
            "eval_return_ci_high": self.return_ci[1],
            "eval_normalized_ci_low": self.normalized_ci[0],
            "eval_normalized_ci_high": self.normalized_ci[1],
            "diag_achieved_return_s0": float(np.mean(self.discounted_returns)),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``offrl eval --json``); NaN becomes None."""

        def num(x: float) -> float | None:
            return None if not math.isfinite(x) else float(x)

        return {
            "env_id": self.env_id,
            "episodes": len(self.returns),
            "returns": [float(r) for r in self.returns],
            "lengths": [int(n) for n in self.lengths],
            "seeds": list(self.seeds),
            "mean": self.mean,
            "std": self.std,
            "normalized_mean": num(self.normalized_mean),
            "normalized_std": num(self.normalized_std),
            "return_ci95": [num(x) for x in self.return_ci],
            "normalized_ci95": [num(x) for x in self.normalized_ci],
            "normalized": [num(x) for x in self.normalized],
            "ref_min": self.ref.min if self.ref else None,
            "ref_max": self.ref.max if self.ref else None,
            "ref_source": self.ref_source,
            "gamma": self.gamma,
            "discounted_return_mean": float(np.mean(self.discounted_returns)),
        }


def _env_factory(env: Any) -> tuple[Callable[[], gym.Env] | None, gym.Env | None, Any, str | None]:
    """Return (factory, single env instance, default reference source, env id) for ``env``."""
    if isinstance(env, str):
        return (lambda: make_env(env)), None, None, env
    if isinstance(env, gym.Env):
        return None, env, None, getattr(env.spec, "id", None)
    if hasattr(env, "make_env") and hasattr(env, "info"):  # an OfflineDataset
        env.make_env().close()  # fail early (UserError naming the missing package) before the waves start
        return env.make_env, None, env, getattr(env.info, "env_id", None)
    if callable(env):
        return env, None, None, None
    raise TypeError(f"env must be an env id, a gymnasium env, an env factory or an OfflineDataset, not {env!r}")


def _as_policy(policy: Any, device: torch.device) -> Callable[[Any], torch.Tensor]:
    """Wrap a TensorDictModule (reads ``observation``, writes ``action``) or a plain ``obs -> action``."""
    if isinstance(policy, TensorDictModuleBase):

        def act(obs: Any) -> torch.Tensor:
            if isinstance(obs, dict):
                o = TensorDict({k: torch.as_tensor(v) for k, v in obs.items()}, batch_size=[len(next(iter(obs.values())))])
            else:
                o = torch.as_tensor(obs)
            td = TensorDict({"observation": o}, batch_size=[o.shape[0]], device=device)
            if o.dtype == torch.float64:
                td["observation"] = o.float()
            return policy(td)["action"]

        return act

    def act_plain(obs: Any) -> torch.Tensor:
        o = torch.as_tensor(obs, device=device)
        return torch.as_tensor(policy(o.float() if o.dtype == torch.float64 else o))

    return act_plain


def _to_env_action(action: torch.Tensor, space: gym.Space, n: int) -> np.ndarray:
    """Policy output -> batched env action. Discrete policies may emit an index or a one-hot vector."""
    a = action.detach().to("cpu")
    if isinstance(space, gym.spaces.Discrete):
        k = int(space.n)
        if a.ndim == 2 and a.shape[-1] == k and k > 1:  # one-hot (torchrl's default for QValueActor)
            a = a.float().argmax(-1)
        return a.reshape(n).long().numpy() + int(space.start)  # [n] or [n, 1] index
    if isinstance(space, gym.spaces.Box):
        arr = a.reshape(n, *space.shape).numpy().astype(space.dtype, copy=False)
        # The deterministic mode of a tanh-squashed actor stays in bounds; clipping guards other policies.
        return np.clip(arr, space.low, space.high)
    return a.numpy()


def _stack_obs(obs: Any, rows: np.ndarray | slice) -> Any:
    if isinstance(obs, dict):
        return {k: np.asarray(v)[rows] for k, v in obs.items()}
    return np.asarray(obs)[rows]


def evaluate(
    policy: Any,
    env: Any,
    *,
    episodes: int = 10,
    seed: int = 0,
    device: str | torch.device = "cpu",
    ref: Any = None,
    gamma: float = 0.99,
    max_steps: int | None = None,
) -> EvalResult:
    """Run ``episodes`` deterministic episodes of ``policy`` in ``env``, episode ``i`` seeded ``seed + i``.

    ``env``: an env id, a gymnasium env (run sequentially: an instance cannot be copied), a factory
    (vectorized) or an OfflineDataset (its env and, unless ``ref`` is given, its reference scores).
    ``max_steps`` is a safety cap for envs without a time limit (the episode then counts as ended).
    """
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    device = torch.device(device)
    factory, instance, ref_default, env_id = _env_factory(env)
    reference = resolve_reference(ref if ref is not None else ref_default)
    act = _as_policy(policy, device)
    was_training = bool(getattr(policy, "training", False))
    if isinstance(policy, torch.nn.Module):
        policy.eval()  # dropout / batch-norm in inference mode; restored below

    returns = np.zeros(episodes)
    disc = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    ended = np.zeros(episodes, dtype=bool)  # terminated (not truncated, not cut at max_steps)
    first_obs: list[Any] = []
    seeds = [seed + i for i in range(episodes)]

    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        if instance is not None:
            vec_envs = [gym.vector.SyncVectorEnv([lambda: instance])]  # noqa: B023 (single use)
            wave = 1
        else:
            wave = min(episodes, MAX_PARALLEL_ENVS)
            vec_envs = [gym.vector.SyncVectorEnv([factory] * wave, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)]
        venv = vec_envs[0]
        try:
            for start in range(0, episodes, wave):
                idx = np.arange(start, min(start + wave, episodes))
                n = len(idx)
                # A partial last wave still steps all sub-envs; the surplus ones are simply never read.
                wave_seeds = [seeds[i] for i in idx] + [seeds[idx[-1]] + 1 + j for j in range(wave - n)]
                obs, _ = venv.reset(seed=wave_seeds)
                first_obs.append(_stack_obs(obs, slice(0, n)))
                active = np.zeros(wave, dtype=bool)
                active[:n] = True
                discount = np.ones(wave)
                t = 0
                while active.any():
                    action = _to_env_action(act(obs), venv.single_action_space, wave)
                    obs, reward, terminated, truncated, _ = venv.step(action)
                    reward = np.asarray(reward, dtype=np.float64)
                    returns[idx] += np.where(active[:n], reward[:n], 0.0)
                    disc[idx] += np.where(active[:n], discount[:n] * reward[:n], 0.0)
                    lengths[idx] += active[:n]
                    ended[idx] |= active[:n] & np.asarray(terminated, dtype=bool)[:n]
                    discount *= gamma
                    t += 1
                    done = np.asarray(terminated) | np.asarray(truncated)
                    if max_steps is not None and t >= max_steps:
                        done[:] = True
                    active &= ~done
        finally:
            if instance is None:
                venv.close()
            if isinstance(policy, torch.nn.Module):
                policy.train(was_training)
    if isinstance(first_obs[0], dict):
        s0: Any = {k: np.concatenate([f[k] for f in first_obs]) for k in first_obs[0]}
    else:
        s0 = np.concatenate(first_obs)
    return EvalResult(
        returns=returns,
        lengths=lengths,
        terminated=ended,
        seeds=seeds,
        discounted_returns=disc,
        gamma=gamma,
        initial_observations=s0,
        ref=reference,
        env_id=env_id,
    )
