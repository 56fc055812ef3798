"""The online phase of a multi-agent run: a torchrl ``Collector`` over a multi-agent env
(:mod:`offrl.data.marl_envs`) running the epsilon-greedy joint policy, and a replay buffer of the
collected transitions (torchrl's multi-agent layout: ``("agents", ...)`` entries, team flags, ``state``).

As in torchrl's multi-agent examples the collector's policy is the exploration policy built with the
loss's local value network, so the weights the collector acts with are the ones being trained; the
trainer anneals epsilon (``greedy_module``). The env is seeded with the run's seed; a resumed run keeps
its buffer, counters and RNGs but starts new episodes (the env's state is not checkpointed).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers import RandomSampler

from offrl.config.online import OnlineConfig
from offrl.data.marl_envs import make_marl_env, marl_env_shapes
from offrl.errors import UserError
from offrl.online.collect import GuardedCollector
from offrl.online.setup import OnlineParts, set_epsilon

__all__ = ["build_marl_online", "build_marl_parts_for_env"]


def build_marl_parts_for_env(algo: str, algo_cfg: Any, env_id: str, *, device: str = "cpu",
                             seed: int | None = None) -> Any:
    """``AlgoParts`` of ``algo`` (``qmix``, ``vdn``, ``iql``) sized from the multi-agent env's specs."""
    from offrl.algos.marl import build

    return build(algo_cfg, strategy=algo, **marl_env_shapes(env_id), device=device, seed=seed)


class _MarlTransitions:
    """The online statistics the run summary reads: episodes finished and their team returns (the
    agents' mean episode reward); no references, so no regret."""

    ref = None
    regret = 0.0

    def __init__(self) -> None:
        self.episodes = 0
        self.returns_total = 0.0
        self.best_return = -math.inf
        self._recent: list[float] = []

    def push(self, data: Any) -> None:
        done = data.get(("next", "done")).reshape(-1)
        if bool(done.any()):
            ep = data.get(("next", "agents", "episode_reward")).reshape(done.shape[0], -1).mean(-1)
            finished = ep[done].tolist()
            self._recent.extend(finished)
            self.episodes += len(finished)
            self.returns_total += sum(finished)
            self.best_return = max([self.best_return, *finished])

    def metrics(self) -> dict[str, float]:
        out = {"online_episodes": float(self.episodes)}
        if self._recent:
            out["online_return_mean"] = float(sum(self._recent) / len(self._recent))
            self._recent = []
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "returns_total": self.returns_total, "best_return": self.best_return,
                "recent": torch.tensor(self._recent, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episodes = int(state["episodes"])
        self.returns_total = float(state["returns_total"])
        self.best_return = float(state["best_return"])
        self._recent = [float(x) for x in torch.as_tensor(state["recent"]).tolist()]

    def drop_open(self) -> None:
        """Nothing is held per episode: the returns come from the env's RewardSum."""


class MarlReplayBuffer(TensorDictReplayBuffer):
    """A seeded torchrl replay buffer of collected multi-agent transitions that also keeps the online
    statistics (``online_metrics()`` for :class:`~offrl.online.setup.OnlineMetricsLogger`)."""

    def __init__(self, capacity: int, batch_size: int, *, seed: int | None, device: str) -> None:
        super().__init__(storage=LazyTensorStorage(int(capacity), device=device), sampler=RandomSampler(),
                         batch_size=int(batch_size))
        self.transitions = _MarlTransitions()
        if seed is not None:
            self.set_rng(torch.Generator().manual_seed(int(seed)))

    def extend(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        self.transitions.push(data)
        return super().extend(data, *args, **kwargs)

    def online_metrics(self) -> dict[str, float]:
        return self.transitions.metrics()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "offrl_transitions": self.transitions.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        transitions = state.pop("offrl_transitions", None)
        super().load_state_dict(state)
        if transitions is not None:
            self.transitions.load_state_dict(transitions)


def build_marl_online(cfg: OnlineConfig, *, parts: Any, env_id: str, batch_size: int, seed: int | None = 0,
                      device: str = "cpu", frame_skip: int = 1, async_collection: bool = False) -> OnlineParts:
    """Collector, replay buffer and frame budget of a multi-agent run trained online in ``env_id``."""
    cfg.validate()
    if cfg.steps <= 0:
        raise UserError("online.steps must be > 0 to build an online phase (--online-steps N)")
    if async_collection:
        raise UserError("async_collection: multi-agent runs collect synchronously; drop --async-collection")
    if cfg.calql or cfg.min_q_weight is not None:
        raise UserError("online.calql / online.min_q_weight: continuous and discrete CQL only; for multi-agent "
                        "runs set mixing.min_q_weight")
    set_epsilon(parts.greedy_module, cfg)

    def factory() -> Any:
        return make_marl_env(env_id, seed=seed, device=device)

    collector = Collector(factory(), parts.exploration_policy, frames_per_batch=int(cfg.frames_per_batch),
                          total_frames=-1, device=device, auto_register_policy_transforms=False,
                          init_random_frames=int(cfg.init_random_frames) or None)
    buffer = MarlReplayBuffer(cfg.capacity, batch_size, seed=seed, device=device)
    guarded = GuardedCollector(collector, on_restart=(buffer.transitions.drop_open,))
    return OnlineParts(collector=guarded, replay_buffer=buffer, transitions=buffer.transitions,  # type: ignore[arg-type]
                       total_frames=int(cfg.steps) * int(frame_skip), env_factory=factory)
