"""Online training from scratch: ``offrl train --env Pendulum-v1 --algo cql --online-steps N``.

No dataset: the networks are sized from the env's specs, every batch comes from the online buffer, and the
run folder is ``<out>/env__<ENV_ID>/<algo>/<name>/`` with the usual ``config.yaml`` (``dataset.id`` is
``env:<ENV_ID>``), ``metrics.csv`` (phase ``online``), ``checkpoints/``, ``summary.json`` and report.
Evaluation is :func:`offrl.evaluation.evaluate` in the same env (raw returns: no reference scores).

Such runs resume like dataset runs (:func:`resume_from_scratch`, what ``offrl train --resume RUN`` calls when
the run's ``dataset.id`` is ``env:...``): the networks are rebuilt from the saved config and the env, and the
checkpoint restores the online phase exactly (sync collector). ``offrl eval RUN`` rebuilds the policy the
same way (:func:`offrl.evaluation.checkpoint.load_policy`). ``offrl train --config RUN/config.yaml``
reproduces one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from offrl.errors import UserError

__all__ = ["ENV_PREFIX", "env_of_config", "resume_from_scratch", "train_from_scratch"]

#: ``dataset.id`` of a run trained online from scratch: ``env:<ENV_ID>``.
ENV_PREFIX = "env:"


def env_of_config(node: Any) -> str | None:
    """The env id of a from-scratch run's config (``dataset.id`` = ``env:<ID>``), else None."""
    dataset_id = OmegaConf.select(node, "dataset.id", default=None) if node is not None else None
    if isinstance(dataset_id, str) and dataset_id.startswith(ENV_PREFIX):
        return dataset_id[len(ENV_PREFIX):]
    return None


def _evaluator(env_id: str, episodes: int, seed: int, device: Any) -> Callable[[Any, int], dict[str, float]]:
    from offrl.evaluation import evaluate

    def evaluator(policy: Any, step: int) -> dict[str, float]:
        return evaluate(policy, env_id, episodes=episodes, seed=seed, device=device).metrics()

    return evaluator


def _config(env_id: str, algo: str, overrides: Mapping[str, Any], dotlist: Sequence[str], *,
            base: Any = None, config_file: Any = None) -> Any:
    """The run's TrainerConfig: defaults < (``base``: a saved run config) < ``--config`` < keyword overrides
    < ``--set``; ``offline_steps`` = 0 and ``dataset.id`` = ``env:<ENV_ID>``."""
    from offrl.config import (
        CQLTrainerConfig,
        DQNTrainerConfig,
        _merge,
        _nest,
        _parse_dotlist,
        _structured,
        load_yaml,
    )

    schema = DQNTrainerConfig if algo == "dqn" else CQLTrainerConfig
    node = _structured(schema)
    if base is not None:
        node = _merge(node, base, "saved run config")
    if config_file is not None:
        node = _merge(node, load_yaml(config_file), f"--config {config_file}")
    node = _merge(node, {"algo": algo, "dataset": {"id": f"{ENV_PREFIX}{env_id}"}, "offline_steps": 0,
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


class _Scratch:
    """Everything one from-scratch run trains with (built before its folder is written)."""

    def __init__(self, cfg: Any, env_id: str, path: Path, run_name: str) -> None:
        from offrl.config import _seed_everything, resolve_device
        from offrl.logging import TidyCSVLogger
        from offrl.online.setup import OnlineMetricsLogger, build_online, build_parts_for_env
        from offrl.rundir import CHECKPOINT_DIR, LATEST_CHECKPOINT

        self.cfg, self.env_id, self.path = cfg, env_id, path
        device = resolve_device(cfg.device)
        self.device = str(device)
        if cfg.num_threads is not None:
            import torch

            torch.set_num_threads(cfg.num_threads)
        _seed_everything(cfg.seed)
        parts = build_parts_for_env(cfg.algo, cfg.algo_config, env_id, device=str(device), seed=None)
        online = build_online(cfg.online, parts=parts, batch_size=cfg.batch_size, seed=cfg.seed, device=str(device),
                              frame_skip=cfg.frame_skip, async_collection=cfg.async_collection,
                              gamma=getattr(cfg.algo_config, "gamma", None))
        self.logger = TidyCSVLogger(run_name, path) if cfg.enable_logging else None
        evaluator = _evaluator(env_id, cfg.eval.episodes, cfg.eval.seed, device) if cfg.eval.interval > 0 else None
        trainer_cls, extra = cfg._trainer_class_and_kwargs(parts)
        for key in ("precision", "cuda_graph"):  # trainer options of newer configs
            if hasattr(cfg, key):
                extra[key] = getattr(cfg, key)
        self.latest = path / CHECKPOINT_DIR / LATEST_CHECKPOINT
        self.trainer = trainer_cls(
            collector=online.collector, total_frames=online.total_frames, frame_skip=cfg.frame_skip,
            optim_steps_per_batch=cfg.optim_steps_per_batch, loss_module=parts.loss_module,
            optimizer=parts.optimizer,
            logger=OnlineMetricsLogger(self.logger, online.replay_buffer) if self.logger is not None else None,
            clip_grad_norm=cfg.clip_grad_norm, clip_norm=cfg.clip_norm, progress_bar=cfg.progress_bar,
            seed=cfg.seed, save_trainer_interval=cfg.save_trainer_interval, log_interval=cfg.log_interval,
            save_trainer_file=str(self.latest), replay_buffer=online.replay_buffer,
            enable_logging=cfg.enable_logging, log_rewards=cfg.log_rewards, log_observations=cfg.log_observations,
            target_net_updater=parts.target_net_updater, async_collection=cfg.async_collection,
            log_timings=cfg.log_timings, offline_steps=0, evaluator=evaluator,
            eval_interval=cfg.eval.interval if evaluator is not None else 0, policy=parts.policy,
            keep_checkpoints=cfg.keep_checkpoints, device=device, **extra, **dict(parts.trainer_kwargs or {}),
        )
        online.bind(self.trainer)
        self.online, self.parts = online, parts

    def train(self, *, resumed: int, on_start: Callable[[Path], None] | None) -> Any:
        from offrl.api import Run, _write_report
        from offrl.logging import attach_mirrors
        from offrl.rundir import write_json_atomic

        cfg, path, trainer = self.cfg, self.path, self.trainer
        if self.logger is not None:
            attach_mirrors(self.logger, cfg.logger, path, path.name)
        if on_start is not None:
            on_start(path)
        start_step = int(trainer.step)
        t0 = time.perf_counter()
        status = "crashed"
        write_json_atomic(path / "summary.json", self.summary("running", start_step, 0.0, resumed))
        try:
            trainer.train()
            status = "stopped" if trainer.stopped else "completed"
            if (trainer.stop_reason or "").startswith("env error"):
                print(f"offrl: error: {trainer.stop_reason}; the run stopped at step {trainer.step} with a "
                      f"checkpoint (fix the env, then --resume {path})", file=sys.stderr)
        except KeyboardInterrupt:
            status = "stopped"
            raise
        finally:
            if self.logger is not None:
                self.logger.close()
            write_json_atomic(path / "summary.json", self.summary(status, start_step, time.perf_counter() - t0,
                                                                  resumed))
        _write_report(path)
        return Run(path)

    def summary(self, status: str, start_step: int, seconds: float, resumed: int) -> dict[str, Any]:
        """``summary.json`` with the fields of a dataset run (``dataset.id`` = ``env:<ENV_ID>``, no references)."""
        from offrl.api import _eval_row
        from offrl.logging import read_metrics

        cfg, trainer, online = self.cfg, self.trainer, self.online
        metrics = read_metrics(self.path / "metrics.csv")
        final = best = None
        if "eval_return_mean" in metrics and metrics["eval_return_mean"].notna().any():
            evals = metrics[metrics["eval_return_mean"].notna()]
            final = _eval_row(evals.iloc[-1])
            best = _eval_row(evals.loc[evals["eval_return_mean"].idxmax()])
        t = online.transitions
        done = int(trainer.step) - start_step
        train_seconds = seconds - float(getattr(trainer, "eval_seconds", 0.0))
        return {
            "status": status, "algo": cfg.algo, "seed": cfg.seed, "steps": int(trainer.step), "target_steps": 0,
            "updates_per_s": done / train_seconds if train_seconds > 0 and done > 0 else None,
            "wall_time": self.logger.wall_time if self.logger is not None else seconds, "resumed": resumed,
            "device": self.device, "final": final, "best": best,
            "dataset": {"id": f"{ENV_PREFIX}{self.env_id}", "digest": None, "mean_return": None, "episodes": 0,
                        "transitions": 0},
            "ref": {"min": None, "max": None, "source": None},
            "stop_reason": trainer.stop_reason,
            "online": {"frames": int(trainer.frames), "total_frames": online.total_frames, "episodes": t.episodes,
                       "mean_return": t.returns_total / t.episodes if t.episodes else None,
                       "best_return": t.best_return if t.episodes else None, "regret": None,
                       "offline_fraction": 0.0},
        }


def train_from_scratch(env_id: str, algo: str | None = None, *, dotlist: Sequence[str] = (), out: Any = None,
                       name: str | None = None, command: Sequence[str] | None = None, config: Any = None,
                       on_start: Callable[[Path], None] | None = None, **overrides: Any) -> Any:
    """Train ``algo`` online in ``env_id`` for ``online.steps`` env steps; returns the :class:`offrl.api.Run`.

    ``overrides`` are config keys (dotted or nested), as for :func:`offrl.train`; ``config`` a YAML file of
    config keys (a from-scratch run's ``config.yaml`` reproduces it); ``auto`` picks CQL for continuous
    actions and DQN for discrete ones (both discrete algorithms explore with an annealed epsilon).
    """
    from offrl.config import config_to_yaml
    from offrl.logging import check_logger_available
    from offrl.rundir import (
        CONFIG_FILE,
        check_writable,
        create_run_dir,
        default_run_name,
        package_versions,
        run_dir_path,
        runs_root,
    )

    if algo in (None, "auto") and config is not None:
        from offrl.config import load_yaml

        algo = OmegaConf.select(load_yaml(config), "algo", default=None) or algo
    algo = _resolve_algo(algo, env_id)
    cfg = _config(env_id, algo, overrides, dotlist, config_file=config)
    check_writable(runs_root(out))
    check_logger_available(cfg.logger)
    run_name = name or default_run_name(cfg.seed)
    path = run_dir_path(out, f"env/{env_id}", algo, run_name)
    if path.exists():
        raise UserError(f"--name {run_name}: run folder {path} already exists; pick another --name or --resume it")
    run = _Scratch(cfg, env_id, path, run_name)  # everything built before the folder exists
    meta = {"versions": package_versions(), "command": list(command or [f"train_from_scratch({env_id!r})"]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    create_run_dir(path, {CONFIG_FILE: config_to_yaml(cfg, meta)})
    return run.train(resumed=0, on_start=on_start)


def resume_from_scratch(path: Path, saved: Any, saved_full: Any, *, algo: str | None, config: Any,
                        dotlist: Sequence[str], overrides: Mapping[str, Any], force: bool,
                        command: Sequence[str], on_start: Callable[[Path], None] | None) -> Any:
    """Continue a from-scratch run from ``checkpoints/latest.pt`` (what :func:`offrl.train` does for
    ``resume=`` when the run's ``dataset.id`` is ``env:<ID>``). ``saved``: its config.yaml without metadata."""
    from offrl.api import restore_run
    from offrl.config import diff_configs, saved_config
    from offrl.logging import check_logger_available
    from offrl.rundir import read_summary

    env_id = env_of_config(saved)
    assert env_id is not None
    overrides = dict(overrides)
    new_env = overrides.pop("online.env_id", None)
    if new_env is not None and new_env != env_id:
        raise UserError(f"--resume {path}: the run trained online in {env_id}, not {new_env}; drop --env")
    saved_algo = str(OmegaConf.select(saved, "algo", default=""))
    if algo not in (None, "auto") and algo != saved_algo:
        raise UserError(f"--resume {path}: the run trained {saved_algo}, not {algo}; drop --algo")
    old = saved_config(saved)
    cfg = _config(env_id, saved_algo, overrides, dotlist, base=saved, config_file=config)
    changed = diff_configs(old, cfg)
    if changed and not force:
        raise UserError(f"--resume {path}: config differs from the run's in {', '.join(changed)}; "
                        "resume without changes, or add --force to continue with the new values")
    check_logger_available(cfg.logger)
    run = _Scratch(cfg, env_id, path, path.name)
    restore_run(path, run.trainer, run.latest, cfg, changed=bool(changed), saved_full=saved_full, command=command)
    resumed = int(read_summary(path).get("resumed", 0)) + 1
    return run.train(resumed=resumed, on_start=on_start)
