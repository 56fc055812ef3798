"""Wiring the online phase into a trainer: the config section, and one function that builds the env,
collector, replay buffer and logger wrapper a trainer needs to fine-tune (or train from scratch) online.

The trainer's own collector path does the rest (docs/contracts.md, Trainers): after ``offline_steps`` it
iterates the collector, ``replay_buffer.extend(batch)``, steps the ``greedy_module`` (DQN's epsilon), and
does ``optim_steps_per_batch`` updates per batch until ``total_frames``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from offrl.config.online import OnlineConfig
from offrl.errors import UserError
from offrl.online.collect import GuardedCollector, env_factory, make_collector
from offrl.online.replay import AppendReplayBuffer, MixedReplayBuffer
from offrl.online.transitions import OnlineTransitions

__all__ = [
    "OnlineConfig",
    "OnlineMetricsLogger",
    "OnlineParts",
    "build_online",
    "build_parts_for_env",
    "env_specs",
    "prepare_online",
    "set_epsilon",
]


@dataclass
class OnlineParts:
    """What :func:`build_online` made. ``bind(trainer)`` connects the env-error stop to the trainer."""

    collector: GuardedCollector
    replay_buffer: MixedReplayBuffer | AppendReplayBuffer
    transitions: OnlineTransitions
    total_frames: int
    env_factory: Any

    def bind(self, trainer: Any) -> None:
        """Env failures call ``trainer.request_stop(message)`` (checkpoint, clean exit, ``stop_reason``)."""
        self.collector.on_error = trainer.request_stop


class OnlineMetricsLogger:
    """Wraps a logger with ``log_row``: rows of phase ``online`` get the buffer's online metrics
    (``offline_fraction``, ``online_return_mean``, ``online_normalized_score``, ``online_regret``...)."""

    def __init__(self, inner: Any, replay_buffer: Any) -> None:
        self.inner, self.replay_buffer = inner, replay_buffer

    def log_row(self, step: int, phase: str, metrics: dict[str, float]) -> None:
        if phase == "online":
            metrics = {**metrics, **self.replay_buffer.online_metrics()}
        if hasattr(self.inner, "log_row"):
            self.inner.log_row(step, phase, metrics)
        else:
            for name, value in metrics.items():
                self.inner.log_scalar(name, value, step=step)

    def __getattr__(self, name: str) -> Any:  # state_dict, close, wall_time, ... of the wrapped logger
        return getattr(self.__dict__["inner"], name)


def _episode_offset(dataset: Any) -> int:
    if dataset is None:
        return 0
    return int(dataset.data.get("episode").max()) + 1 if dataset.data.shape[0] else 0


def build_online(cfg: OnlineConfig, *, parts: Any, dataset: Any = None, offline_buffer: Any = None,
                 batch_size: int, seed: int | None = 0, device: str = "cpu", frame_skip: int = 1,
                 async_collection: bool = False, gamma: float | None = None) -> OnlineParts:
    """Build the online phase for a trainer: env (the dataset's unless ``cfg.env_id``), a torchrl collector
    running ``parts.exploration_policy`` (guarded against env errors), the replay buffer (``mix``/``append``
    over ``offline_buffer`` / ``dataset.data``, or online-only without a dataset), and the online CQL weight
    and DQN epsilon settings. Pass ``replay_buffer=``, ``collector=`` and ``total_frames=`` to the trainer,
    wrap its logger in :class:`OnlineMetricsLogger`, then ``bind(trainer)``.
    """
    cfg.validate()
    if cfg.steps <= 0:
        raise UserError("online.steps must be > 0 to build an online phase (--online-steps N)")
    loss = parts.loss_module
    if cfg.calql and not hasattr(loss, "calibrated"):
        raise UserError("online.calql=true needs the continuous CQL loss built with Cal-QL (offrl.algos.calql)")
    factory = env_factory(dataset, cfg.env_id, seed=seed, device=device)
    if gamma is None:
        gamma = float(getattr(dataset.info, "gamma", 0.99)) if dataset is not None else 0.99
    ref = None
    if dataset is not None and dataset.info.ref_min_score is not None and dataset.info.ref_max_score is not None:
        ref = (float(dataset.info.ref_min_score), float(dataset.info.ref_max_score))
    template = dataset.data[:1].to_tensordict() if dataset is not None else None
    transitions = OnlineTransitions(gamma, hold_episodes=bool(cfg.calql), episode_offset=_episode_offset(dataset),
                                    ref=ref, template=template)
    if dataset is None:
        if cfg.calql:
            raise UserError("online.calql=true needs a dataset (its Monte-Carlo returns); drop it for "
                            "online training from scratch")
        buffer: Any = MixedReplayBuffer(None, online_capacity=cfg.capacity, batch_size=batch_size,
                                        frame_skip=frame_skip, transitions=transitions, scratch_dir=cfg.scratch_dir)
    elif cfg.replay == "append":
        buffer = AppendReplayBuffer(dataset.data, online_capacity=cfg.capacity, batch_size=batch_size,
                                    frame_skip=frame_skip, transitions=transitions, scratch_dir=cfg.scratch_dir)
    else:
        buffer = MixedReplayBuffer(offline_buffer if offline_buffer is not None else dataset.replay_buffer(batch_size),
                                   online_capacity=cfg.capacity, batch_size=batch_size,
                                   start_fraction=cfg.start_fraction, final_fraction=cfg.final_fraction,
                                   anneal_frames=cfg.anneal_frames, frame_skip=frame_skip,
                                   transitions=transitions, scratch_dir=cfg.scratch_dir)
    greedy = getattr(parts, "greedy_module", None)
    if greedy is None:
        greedy = _discrete_cql_exploration(parts, fine_tuning=dataset is not None)
    if greedy is not None:
        set_epsilon(greedy, cfg)
    hooks = []
    if cfg.min_q_weight is not None:
        if not hasattr(loss, "min_q_weight"):
            raise UserError(f"online.min_q_weight: {type(loss).__name__} has no CQL weight; leave it null")
        weight = float(cfg.min_q_weight)

        def lower_cql_weight(_batch: Any) -> None:  # idempotent, so it also holds after a resume
            loss.min_q_weight = weight

        hooks.append(lower_cql_weight)
    collector = make_collector(factory, parts.exploration_policy, frames_per_batch=cfg.frames_per_batch,
                               async_collection=async_collection, num_workers=cfg.num_workers, device=device,
                               init_random_frames=cfg.init_random_frames)
    guarded = GuardedCollector(collector, hooks=tuple(hooks), on_restart=(transitions.drop_open,))
    return OnlineParts(collector=guarded, replay_buffer=buffer,
                       transitions=transitions, total_frames=int(cfg.steps) * int(frame_skip), env_factory=factory)


#: Discrete CQL's online epsilon schedule when ``online.eps_*`` are null: (init, end, anneal frames). A trained
#: Q-network explores a little around its greedy policy (DQN-style fine-tuning); from scratch it starts
#: uniformly random, as DQN does (CleanRL's 1.0 -> 0.05).
DISCRETE_CQL_EPSILON = {"fine_tuning": (0.1, 0.01, 10_000), "scratch": (1.0, 0.05, 10_000)}


def _discrete_cql_exploration(parts: Any, *, fine_tuning: bool) -> Any:
    """Discrete CQL's Q actor is greedy: give the collector the epsilon-greedy exploration DQN has (an
    ``EGreedyModule`` after the actor, annealed by the trainer, in checkpoints and the ``epsilon`` column).
    Sets ``parts.greedy_module`` / ``parts.exploration_policy``; returns the module (None: not discrete CQL)."""
    from tensordict.nn import TensorDictSequential
    from torchrl.modules import EGreedyModule
    from torchrl.objectives import DiscreteCQLLoss

    if not isinstance(parts.loss_module, DiscreteCQLLoss):
        return None
    spec = parts.policy.spec["action"]
    eps_init, eps_end, frames = DISCRETE_CQL_EPSILON["fine_tuning" if fine_tuning else "scratch"]
    greedy = EGreedyModule(spec, eps_init=eps_init, eps_end=eps_end, annealing_num_steps=frames,
                           device=spec.device)
    parts.greedy_module = greedy
    parts.exploration_policy = TensorDictSequential(parts.policy, greedy)
    return greedy


def set_epsilon(greedy: Any, cfg: OnlineConfig) -> None:
    """Override the ``EGreedyModule`` schedule for the online phase (its buffers, so checkpoints keep it)."""
    import torch

    if cfg.eps_init is not None:
        greedy.eps_init.copy_(torch.as_tensor(float(cfg.eps_init)))
        greedy.eps.copy_(torch.as_tensor(float(cfg.eps_init)))
    if cfg.eps_end is not None:
        greedy.eps_end.copy_(torch.as_tensor(float(cfg.eps_end)))
    if float(greedy.eps_end) > float(greedy.eps_init):
        raise UserError(f"online.eps_end ({float(greedy.eps_end)}) must not exceed online.eps_init "
                        f"({float(greedy.eps_init)})")
    if cfg.eps_anneal_frames is not None:
        if cfg.eps_anneal_frames <= 0:
            raise UserError(f"online.eps_anneal_frames: must be positive, got {cfg.eps_anneal_frames}")
        greedy.annealing_num_steps = int(cfg.eps_anneal_frames)


def env_specs(env_id: str) -> tuple[tuple[int, ...], Any, Any]:
    """``(observation_shape, action_spec, EnvResolution-or-id)`` of an env, for building networks when
    there is no dataset (online training from scratch)."""
    factory = env_factory(None, env_id)
    env = factory()
    try:
        obs_spec = env.observation_spec.get("observation", None)
        if obs_spec is None:
            raise UserError(f"--env {env_id}: dict observations are not supported for online training; use an "
                            "env with a flat observation vector")
        return tuple(obs_spec.shape), env.action_spec.clone(), factory.target
    finally:
        env.close()


def build_parts_for_env(algo: str, algo_cfg: Any, env_id: str, *, device: str = "cpu", seed: int | None = None) -> Any:
    """``AlgoParts`` for ``algo`` (``cql``, ``discrete-cql``, ``dqn``) sized from the env's specs."""
    obs_shape, action_spec, _ = env_specs(env_id)
    discrete = not hasattr(action_spec, "low")
    if algo == "cql" and discrete:
        raise UserError(f"--algo cql needs continuous actions; {env_id} has discrete ones: use discrete-cql or dqn")
    if algo in ("discrete-cql", "dqn") and not discrete:
        raise UserError(f"--algo {algo} needs discrete actions; {env_id} has continuous ones: use cql")
    from offrl.algos import builder_for

    return builder_for(algo_cfg).build(algo_cfg, observation_shape=obs_shape, action_spec=action_spec,
                                       device=device, seed=seed)


def prepare_online(cfg: OnlineConfig, *, parts: Any, dataset: Any, offline_buffer: Any, batch_size: int,
                   seed: int | None, device: str, frame_skip: int = 1, async_collection: bool = False,
                   gamma: float | None = None) -> OnlineParts | None:
    """What :func:`offrl.runs.assemble.build_components` calls: turns the loss into Cal-QL when
    ``cfg.calql`` (offline too), and builds the online phase when ``cfg.steps > 0`` (else None)."""
    cfg.validate()
    if cfg.calql:
        from offrl.algos.calql import CalQLLoss
        from offrl.algos.cql import OfflineCQLLoss

        if not isinstance(parts.loss_module, OfflineCQLLoss):
            raise UserError(f"online.calql=true: Cal-QL calibrates continuous CQL, not "
                            f"{type(parts.loss_module).__name__}; use --algo cql (cql.fused=false)")
        if dataset is not None and "mc_return" not in dataset.data.keys():
            raise UserError(f"online.calql=true: {dataset.name} has no mc_return; re-convert it with this offrl")
        parts.loss_module = CalQLLoss.from_cql(parts.loss_module)
    if cfg.steps <= 0:
        return None
    return build_online(cfg, parts=parts, dataset=dataset, offline_buffer=offline_buffer, batch_size=batch_size,
                        seed=seed, device=device, frame_skip=frame_skip, async_collection=async_collection,
                        gamma=gamma)
