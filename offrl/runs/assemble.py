"""Assembling a run: from a config and its source (a dataset, or an env to train in from scratch) to the
algorithm parts, the seeded replay buffer, the evaluator, the online phase and the trainer wired to them.

Nothing here writes to disk: the logger and checkpoint path point into the run folder that
:mod:`offrl.runs.training` creates only once everything here has succeeded.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offrl.config import DQNTrainerConfig, TrainerConfig, check_algo_compatible, resolve_device
from offrl.config.marl import MARL_ALGOS
from offrl.errors import UserError

__all__ = ["TrainerComponents", "build_components", "load_config_dataset", "nested_key", "seed_everything",
           "trainer_class"]


@dataclass
class TrainerComponents:
    """What :func:`build_components` built, for callers that need more than the trainer."""

    trainer: Any
    dataset: Any
    """The run's :class:`offrl.data.OfflineDataset`; None for a run trained online from scratch."""
    parts: Any
    replay_buffer: Any
    evaluator: Any
    device: str
    online: Any = None
    """:class:`offrl.online.OnlineParts` when the run has an online phase."""
    env_id: str | None = None
    """The env of a run trained online from scratch (its source instead of a dataset)."""


def load_config_dataset(section: Any) -> Any:
    """Load (convert and cache on first use) the dataset a config's ``dataset`` section names."""
    from offrl.data import load_dataset

    return load_dataset(section.id, cache_dir=section.cache_dir, env=section.env_id,
                        ref_min_score=section.ref_min_score, ref_max_score=section.ref_max_score)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python ``random`` (network initialisation comes from the run's seed)."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def trainer_class(cfg: TrainerConfig, parts: Any) -> tuple[type, dict[str, Any]]:
    """The trainer class that runs ``cfg`` and its config-specific keyword arguments."""
    from offrl.trainers import CQLTrainer, DQNTrainer

    if isinstance(cfg, DQNTrainerConfig):
        keys = ("done_key", "terminated_key", "reward_key", "episode_reward_key",
                "aggregated_reward_key", "aggregated_episode_reward_key", "action_key", "observation_key")
        extra = {k: nested_key(getattr(cfg, k)) for k in keys}
        extra["mixing_strategy"] = cfg.mixing_strategy
        extra["greedy_module"] = parts.greedy_module
        return DQNTrainer, extra
    extra = {"log_actions": cfg.log_actions}
    if parts.greedy_module is not None:  # discrete CQL online: epsilon-greedy exploration (offrl.online)
        extra["greedy_module"] = parts.greedy_module
    return CQLTrainer, extra


def nested_key(key: str | None) -> Any:
    """A config key string as torchrl's NestedKey: ``agents.reward`` -> ``("agents", "reward")``."""
    if key is None or "." not in key:
        return key
    return tuple(key.split("."))


def build_components(
    cfg: TrainerConfig,
    *,
    dataset: Any = None,
    env_id: str | None = None,
    logger: Any = None,
    save_trainer_file: str | Path | None = None,
    collector: Any = None,
    evaluator: Any = None,
) -> TrainerComponents:
    """Build everything a run needs from its source: ``dataset`` (loaded from ``cfg.dataset`` when None), or
    ``env_id`` for a run trained online from scratch (networks sized from the env, online-only replay).

    ``logger`` and ``save_trainer_file`` come from the run directory (:func:`offrl.runs.training`); without
    them the trainer neither logs nor checkpoints. ``evaluator`` defaults to a
    :class:`offrl.evaluation.Evaluator` (rollouts + critic diagnostics; env rollouts only for an env
    source) when ``eval.interval > 0``.
    """
    cfg.validate()
    if env_id is None and dataset is None:
        dataset = load_config_dataset(cfg.dataset)
    if dataset is not None:
        check_algo_compatible(cfg.algo, dataset)
    device = resolve_device(cfg.device)
    if cfg.num_threads is not None:
        import torch

        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    gamma = getattr(cfg.algo_config, "gamma", None)
    online = None
    if env_id is not None and cfg.algo in MARL_ALGOS:
        from offrl.online.marl import build_marl_online, build_marl_parts_for_env

        parts = build_marl_parts_for_env(cfg.algo, cfg.algo_config, env_id, device=str(device), seed=None)
        online = build_marl_online(cfg.online, parts=parts, env_id=env_id, batch_size=cfg.batch_size,
                                   seed=cfg.seed, device=str(device), frame_skip=cfg.frame_skip,
                                   async_collection=cfg.async_collection)
        collector, replay_buffer = online.collector, online.replay_buffer
        if evaluator is None and cfg.eval.interval > 0:
            evaluator = _marl_env_evaluator(env_id, cfg.eval.episodes, cfg.eval.seed, device,
                                            final_episodes=cfg.eval.final_episodes)
    elif env_id is not None:
        from offrl.online.setup import build_online, build_parts_for_env

        parts = build_parts_for_env(cfg.algo, cfg.algo_config, env_id, device=str(device), seed=None)
        online = build_online(cfg.online, parts=parts, batch_size=cfg.batch_size, seed=cfg.seed, device=str(device),
                              frame_skip=cfg.frame_skip, async_collection=cfg.async_collection, gamma=gamma)
        collector, replay_buffer = online.collector, online.replay_buffer
        if evaluator is None and cfg.eval.interval > 0:
            evaluator = _env_evaluator(env_id, cfg.eval.episodes, cfg.eval.seed, device, cfg.eval.final_episodes)
    else:
        if cfg.algo in MARL_ALGOS:
            from offrl.algos.marl import build_marl_from_dataset

            parts = build_marl_from_dataset(cfg.algo_config, dataset, strategy=cfg.algo, device=str(device),
                                            seed=cfg.seed)
        else:
            from offrl.algos import build_from_dataset
            from offrl.algos.memory import check_batch_memory

            # before the networks exist: a batch that cannot fit is one line, not the OOM killer mid-run
            check_batch_memory(cfg.algo_config, dataset, cfg.batch_size, device=device, bf16=cfg.precision == "bf16")
            parts = build_from_dataset(cfg.algo_config, dataset, device=str(device), seed=cfg.seed)
        replay_buffer, evaluator = _dataset_buffer_and_evaluator(cfg, dataset, parts, device, evaluator)
        if cfg.algo in MARL_ALGOS and cfg.online.steps > 0:
            raise UserError(f"--online-steps: a multi-agent run trains offline from {dataset.name} or online from "
                            "scratch (--env mpe2/... without --dataset), not both; drop one")
        if collector is None:  # online.steps > 0: fine-tune through a torchrl collector (offrl.online)
            from offrl.online.setup import prepare_online

            online = prepare_online(cfg.online, parts=parts, dataset=dataset, offline_buffer=replay_buffer,
                                    batch_size=cfg.batch_size, seed=cfg.seed, device=str(device),
                                    frame_skip=cfg.frame_skip, async_collection=cfg.async_collection, gamma=gamma)
            if online is not None:
                collector, replay_buffer = online.collector, online.replay_buffer
    if online is not None and logger is not None:
        from offrl.online.setup import OnlineMetricsLogger

        logger = OnlineMetricsLogger(logger, replay_buffer)
    trainer_cls, extra = trainer_class(cfg, parts)
    if cfg.algo in MARL_ALGOS and collector is None:  # offline: nothing explores, no epsilon to anneal or log
        extra["greedy_module"] = None
    trainer = trainer_cls(
        collector=collector,
        total_frames=online.total_frames if online is not None else cfg.total_frames,
        frame_skip=cfg.frame_skip,
        optim_steps_per_batch=cfg.optim_steps_per_batch,
        loss_module=parts.loss_module,
        optimizer=parts.optimizer,
        logger=logger,
        clip_grad_norm=cfg.clip_grad_norm,
        clip_norm=cfg.clip_norm,
        progress_bar=cfg.progress_bar,
        seed=cfg.seed,
        save_trainer_interval=cfg.save_trainer_interval,
        log_interval=cfg.log_interval,
        save_trainer_file=None if save_trainer_file is None else str(save_trainer_file),
        replay_buffer=replay_buffer,
        enable_logging=cfg.enable_logging,
        log_rewards=cfg.log_rewards,
        log_observations=cfg.log_observations,
        target_net_updater=parts.target_net_updater,
        async_collection=cfg.async_collection,
        log_timings=cfg.log_timings,
        precision=cfg.precision,
        cuda_graph=cfg.cuda_graph,
        offline_steps=cfg.offline_steps,
        evaluator=evaluator,
        eval_interval=cfg.eval.interval if evaluator is not None else 0,
        policy=parts.policy,
        keep_checkpoints=cfg.keep_checkpoints,
        device=device,
        **extra,
        **dict(parts.trainer_kwargs or {}),
    )
    if online is not None:
        online.bind(trainer)  # env errors -> trainer.request_stop(message): checkpoint, clean stop
    return TrainerComponents(trainer=trainer, dataset=dataset, parts=parts, replay_buffer=replay_buffer,
                             evaluator=evaluator, device=str(device), online=online, env_id=env_id)


def _dataset_buffer_and_evaluator(cfg: TrainerConfig, dataset: Any, parts: Any, device: Any,
                                  evaluator: Any) -> tuple[Any, Any]:
    """The seeded replay buffer over the training episodes, and the default evaluator with its held-out
    episodes (the same ones for every seed: the split is seeded by the dataset alone)."""
    if cfg.algo in MARL_ALGOS:  # multi-agent data: team returns in the multi-agent env, no critic diagnostics
        replay_buffer = dataset.replay_buffer(cfg.batch_size, device=device, seed=cfg.seed)
        if evaluator is None and cfg.eval.interval > 0:
            env_id = dataset.info.env_id
            if env_id is None:
                raise UserError(f"{dataset.source}: no evaluation env known for dataset {dataset.name!r} (offrl "
                                "train: --env ENV_ID, or --set dataset.env_id=ENV_ID; or --eval-every 0)")
            from offrl.data.marl_envs import marl_env_shapes

            marl_env_shapes(env_id)  # fail before anything is written: unknown env, mpe2 missing
            ref = (dataset.info.ref_min_score, dataset.info.ref_max_score)
            evaluator = _marl_env_evaluator(env_id, cfg.eval.episodes, cfg.eval.seed, device,
                                            ref if None not in ref else None, cfg.eval.final_episodes)
        return replay_buffer, evaluator
    train_idx = heldout = None
    if evaluator is None and cfg.eval.interval > 0 and cfg.eval.heldout_fraction > 0:
        from offrl.evaluation import heldout_split

        train_idx, heldout_idx = heldout_split(dataset.data, fraction=cfg.eval.heldout_fraction, seed=0)
        heldout = dataset.data[heldout_idx].to(device) if heldout_idx.numel() else None
        train_idx = train_idx if heldout is not None else None
    replay_buffer = dataset.replay_buffer(cfg.batch_size, device=device, seed=cfg.seed, indices=train_idx)
    if evaluator is None and cfg.eval.interval > 0:
        try:  # fail before anything is written, not at the first evaluation
            dataset.make_env().close()
        except UserError as err:
            raise UserError(f"{err} (offrl train: --env ENV_ID, or --set dataset.env_id=ENV_ID; or --eval-every 0)") from None
        from offrl.evaluation import Evaluator

        # eval_* columns from env rollouts plus the critic's diag_* columns (docs/contracts.md).
        evaluator = Evaluator(dataset, critic=parts.loss_module, episodes=cfg.eval.episodes, seed=cfg.eval.seed,
                              device=device, gamma=getattr(cfg.algo_config, "gamma", None), heldout=heldout,
                              final_episodes=cfg.eval.final_episodes)
    return replay_buffer, evaluator


def _env_evaluator(env_id: str, episodes: int, seed: int, device: Any,
                   final_episodes: int = 0) -> Callable[[Any, int], dict[str, float]]:
    """Deterministic rollouts in the env a from-scratch run trains in (raw returns: no reference scores);
    ``.final`` is the run's last evaluation, over ``max(episodes, final_episodes)`` episodes."""
    from offrl.evaluation import evaluate

    def evaluator(policy: Any, step: int) -> dict[str, float]:
        return evaluate(policy, env_id, episodes=episodes, seed=seed, device=device).metrics()

    def final(policy: Any, step: int) -> dict[str, float]:
        n = max(episodes, final_episodes)
        return evaluate(policy, env_id, episodes=n, seed=seed, device=device).metrics()

    evaluator.final = final  # type: ignore[attr-defined]
    return evaluator


def _marl_env_evaluator(env_id: str, episodes: int, seed: int, device: Any,
                        ref: tuple[float, float] | None = None,
                        final_episodes: int = 0) -> Callable[[Any, int], dict[str, float]]:
    """Deterministic rollouts of the greedy joint policy in a multi-agent env (team return, normalized
    with ``ref`` when given); ``.final`` is the run's last evaluation, over ``max(episodes,
    final_episodes)`` episodes."""
    from offrl.evaluation.marl import evaluate_marl

    def evaluator(policy: Any, step: int) -> dict[str, float]:
        return evaluate_marl(policy, env_id, episodes=episodes, seed=seed, device=device, ref=ref).metrics()

    def final(policy: Any, step: int) -> dict[str, float]:
        n = max(episodes, final_episodes)
        return evaluate_marl(policy, env_id, episodes=n, seed=seed, device=device, ref=ref).metrics()

    evaluator.final = final  # type: ignore[attr-defined]
    return evaluator
