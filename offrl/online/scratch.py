"""Online training from scratch: ``offrl train --env Pendulum-v1 --algo cql --online-steps N``.

No dataset: the networks are sized from the env's specs, every batch comes from the online buffer, and the
run folder is ``<out>/env__<ENV_ID>/<algo>/<name>/`` with the usual ``config.yaml`` (``dataset.id`` is
``env:<ENV_ID>``), ``metrics.csv`` (phase ``online``), ``checkpoints/``, ``summary.json`` and report.
Evaluation is :func:`offrl.evaluation.evaluate` in the same env (raw returns: no reference scores).
Not supported for such runs: ``--resume`` and ``offrl eval`` (both rebuild from a dataset).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from offrl.errors import UserError

__all__ = ["train_from_scratch"]


def _evaluator(env_id: str, episodes: int, seed: int, device: Any) -> Callable[[Any, int], dict[str, float]]:
    from offrl.evaluation import evaluate

    def evaluator(policy: Any, step: int) -> dict[str, float]:
        return evaluate(policy, env_id, episodes=episodes, seed=seed, device=device).metrics()

    return evaluator


def _config(env_id: str, algo: str, overrides: Mapping[str, Any], dotlist: Sequence[str]) -> Any:
    """The run's TrainerConfig: defaults < keyword overrides < ``--set``; ``offline_steps`` = 0."""
    from offrl.config import CQLTrainerConfig, DQNTrainerConfig, _merge, _nest, _parse_dotlist, _structured

    schema = DQNTrainerConfig if algo == "dqn" else CQLTrainerConfig
    node = _structured(schema)
    node = _merge(node, {"algo": algo, "dataset": {"id": f"env:{env_id}"}, "offline_steps": 0,
                         "online": {"env_id": env_id}}, "--env")
    node = _merge(node, OmegaConf.create(_nest(dict(overrides))), "arguments")
    node = _merge(node, _parse_dotlist(dotlist), "--set")
    cfg = OmegaConf.to_object(node)
    if cfg.offline_steps != 0:
        raise UserError("--steps: a run without --dataset has no offline phase; drop --steps (use --online-steps)")
    if cfg.online.steps <= 0:
        raise UserError("--online-steps: required (> 0) when training online from scratch with --env")
    if cfg.online.calql:
        raise UserError("--calql needs a dataset (its Monte-Carlo returns); drop it for --env training")
    cfg.validate()
    return cfg


def _resolve_algo(algo: str | None, env_id: str) -> str:
    from offrl.online.setup import env_specs

    algo = (algo or "auto").lower().replace("_", "-")
    if algo == "auto":
        _, spec, _ = env_specs(env_id)
        return "cql" if hasattr(spec, "low") else "dqn"
    if algo not in ("cql", "discrete-cql", "dqn"):
        raise UserError(f"--algo {algo!r}: unknown algorithm; use cql, discrete-cql or dqn")
    return algo


def train_from_scratch(env_id: str, algo: str | None = None, *, dotlist: Sequence[str] = (), out: Any = None,
                       name: str | None = None, command: Sequence[str] | None = None,
                       on_start: Callable[[Path], None] | None = None, **overrides: Any) -> Any:
    """Train ``algo`` online in ``env_id`` for ``online.steps`` env steps; returns the :class:`offrl.api.Run`.

    ``overrides`` are config keys (dotted or nested), as for :func:`offrl.train`; ``auto`` picks CQL for
    continuous actions and DQN for discrete ones (DQN explores with its annealed epsilon).
    """
    from offrl.api import Run, _write_report
    from offrl.config import _seed_everything, config_to_yaml, resolve_device
    from offrl.logging import TidyCSVLogger, attach_mirrors, check_logger_available
    from offrl.online.setup import OnlineMetricsLogger, build_online, build_parts_for_env
    from offrl.rundir import (
        CHECKPOINT_DIR,
        CONFIG_FILE,
        LATEST_CHECKPOINT,
        check_writable,
        create_run_dir,
        default_run_name,
        package_versions,
        run_dir_path,
        runs_root,
        write_json_atomic,
    )

    algo = _resolve_algo(algo, env_id)
    cfg = _config(env_id, algo, overrides, dotlist)
    check_writable(runs_root(out))
    check_logger_available(cfg.logger)
    run_name = name or default_run_name(cfg.seed)
    path = run_dir_path(out, f"env/{env_id}", algo, run_name)
    if path.exists():
        raise UserError(f"--name {run_name}: run folder {path} already exists; pick another --name")
    device = resolve_device(cfg.device)
    _seed_everything(cfg.seed)
    parts = build_parts_for_env(algo, cfg.algo_config, env_id, device=str(device), seed=None)
    online = build_online(cfg.online, parts=parts, batch_size=cfg.batch_size, seed=cfg.seed, device=str(device),
                          frame_skip=cfg.frame_skip, async_collection=cfg.async_collection,
                          gamma=getattr(cfg.algo_config, "gamma", None))
    logger = TidyCSVLogger(run_name, path) if cfg.enable_logging else None
    evaluator = _evaluator(env_id, cfg.eval.episodes, cfg.eval.seed, device) if cfg.eval.interval > 0 else None
    trainer_cls, extra = cfg._trainer_class_and_kwargs(parts)
    trainer = trainer_cls(
        collector=online.collector, total_frames=online.total_frames, frame_skip=cfg.frame_skip,
        optim_steps_per_batch=cfg.optim_steps_per_batch, loss_module=parts.loss_module, optimizer=parts.optimizer,
        logger=OnlineMetricsLogger(logger, online.replay_buffer) if logger is not None else None,
        clip_grad_norm=cfg.clip_grad_norm, clip_norm=cfg.clip_norm, progress_bar=cfg.progress_bar, seed=cfg.seed,
        save_trainer_interval=cfg.save_trainer_interval, log_interval=cfg.log_interval,
        save_trainer_file=str(path / CHECKPOINT_DIR / LATEST_CHECKPOINT), replay_buffer=online.replay_buffer,
        enable_logging=cfg.enable_logging, log_rewards=cfg.log_rewards, log_observations=cfg.log_observations,
        target_net_updater=parts.target_net_updater, async_collection=cfg.async_collection,
        log_timings=cfg.log_timings, offline_steps=0, evaluator=evaluator,
        eval_interval=cfg.eval.interval if evaluator is not None else 0, policy=parts.policy,
        keep_checkpoints=cfg.keep_checkpoints, device=device, **extra, **dict(parts.trainer_kwargs or {}),
    )
    online.bind(trainer)
    meta = {"versions": package_versions(), "command": list(command or [f"train_from_scratch({env_id!r})"]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    create_run_dir(path, {CONFIG_FILE: config_to_yaml(cfg, meta)})
    if logger is not None:
        attach_mirrors(logger, cfg.logger, path, run_name)
    if on_start is not None:
        on_start(path)
    t0 = time.perf_counter()
    status = "crashed"
    try:
        trainer.train()
        status = "stopped" if trainer.stopped else "completed"
        if (trainer.stop_reason or "").startswith("env error"):
            import sys

            print(f"offrl: error: {trainer.stop_reason}; the run stopped at step {trainer.step} with a checkpoint",
                  file=sys.stderr)
    except KeyboardInterrupt:
        status = "stopped"
        raise
    finally:
        if logger is not None:
            logger.close()
        write_json_atomic(path / "summary.json", _summary(path, cfg, trainer, online, status,
                                                          time.perf_counter() - t0, str(device), env_id))
    _write_report(path)
    return Run(path)


def _summary(path: Path, cfg: Any, trainer: Any, online: Any, status: str, seconds: float, device: str,
             env_id: str) -> dict[str, Any]:
    """``summary.json`` with the fields of a dataset run (``dataset.id`` = ``env:<ENV_ID>``, no references)."""
    from offrl.api import _eval_row
    from offrl.logging import read_metrics

    metrics = read_metrics(path / "metrics.csv")
    final = best = None
    if "eval_return_mean" in metrics and metrics["eval_return_mean"].notna().any():
        evals = metrics[metrics["eval_return_mean"].notna()]
        final = _eval_row(evals.iloc[-1])
        best = _eval_row(evals.loc[evals["eval_return_mean"].idxmax()])
    t = online.transitions
    return {
        "status": status, "algo": cfg.algo, "seed": cfg.seed, "steps": int(trainer.step), "target_steps": 0,
        "updates_per_s": trainer.step / seconds if seconds > 0 and trainer.step else None,
        "wall_time": seconds, "resumed": 0, "device": device, "final": final, "best": best,
        "dataset": {"id": f"env:{env_id}", "digest": None, "mean_return": None, "episodes": 0, "transitions": 0},
        "ref": {"min": None, "max": None, "source": None},
        "stop_reason": trainer.stop_reason,
        "online": {"frames": int(trainer.frames), "total_frames": online.total_frames, "episodes": t.episodes,
                   "mean_return": t.returns_total / t.episodes if t.episodes else None,
                   "best_return": t.best_return if t.episodes else None, "regret": None,
                   "offline_fraction": 0.0},
    }
