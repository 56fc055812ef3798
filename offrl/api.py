"""``offrl.train``: one call from a dataset to a finished run directory, and :class:`Run` to read it back.

The CLI's ``offrl train`` is a thin layer over :func:`train`. A run goes:
compose the config (:func:`offrl.config.compose_config`) -> load the dataset -> build the trainer ->
create the run folder atomically (nothing is written before everything above succeeded) -> train ->
``summary.json`` -> ``report.html`` (when :mod:`offrl.report` provides ``write_run_report``).
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from offrl.errors import UserError
from offrl.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LATEST_CHECKPOINT,
    METRICS_FILE,
    check_writable,
    create_run_dir,
    default_run_name,
    is_run_dir,
    package_versions,
    read_summary,
    run_dir_path,
    runs_root,
    write_json_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:
    from offrl.config import TrainerConfig
    from offrl.logging import TidyCSVLogger

# offrl.config and offrl.logging import torch and torchrl (seconds): they are imported inside the functions,
# after the checks that need neither, so a mistyped --resume or --out fails at once.

__all__ = ["Run", "compose_run_config", "train"]

#: Friendly keyword names of :func:`train` (and CLI flags) -> config keys.
ALIASES = {
    "steps": "offline_steps",
    "eval_every": "eval.interval",
    "eval_episodes": "eval.episodes",
    "cache_dir": "dataset.cache_dir",
    "progress": "progress_bar",
    "online_steps": "online.steps",
    "online_env": "online.env_id",
    "frames_per_batch": "online.frames_per_batch",
    "utd": "optim_steps_per_batch",
    "calql": "online.calql",
}


@dataclass(frozen=True)
class Run:
    """A run directory: ``dir``, and its ``summary`` (dict), ``metrics`` (DataFrame) and ``config``."""

    dir: Path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Run:
        """Open an existing run folder (``UserError`` if it is not one)."""
        path = Path(path)
        if not is_run_dir(path):
            raise UserError(f"{path}: not an offrl run folder (no {CONFIG_FILE} and {CHECKPOINT_DIR}/)")
        return cls(path)

    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json``: status, steps, updates/s, final and best score, dataset, references."""
        return read_summary(self.dir)

    @property
    def metrics(self):  # -> pandas.DataFrame
        """``metrics.csv`` as a tidy DataFrame (one row per logged step; NaN where a value was not logged)."""
        from offrl.logging import read_metrics

        return read_metrics(self.dir / METRICS_FILE)

    @property
    def config(self) -> DictConfig:
        """The fully resolved ``config.yaml`` (hyperparameters plus run metadata)."""
        return OmegaConf.load(self.dir / CONFIG_FILE)  # type: ignore[return-value]

    @property
    def checkpoint(self) -> Path:
        """``checkpoints/latest.pt`` (may not exist before the first checkpoint)."""
        return self.dir / CHECKPOINT_DIR / LATEST_CHECKPOINT

    def __str__(self) -> str:
        return str(self.dir)


def train(
    dataset: str | os.PathLike[str] | None = None,
    algo: str | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    dotlist: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
    name: str | None = None,
    resume: str | os.PathLike[str] | None = None,
    force: bool = False,
    command: Sequence[str] | None = None,
    on_start: Callable[[Path], None] | None = None,
    **overrides: Any,
) -> Run:
    """Train on a dataset and return the finished :class:`Run`.

    Args:
        dataset: a bundled id (``offrl/pendulum/medium-v0``), Minari id or folder, or HDF5 file.
        algo: ``auto`` (default: CQL for continuous actions, discrete CQL for discrete), ``cql``,
            ``discrete-cql`` or ``dqn``.
        config: a YAML file of config keys (a run's ``config.yaml`` works too).
        dotlist: ``key=value`` overrides (the CLI's ``--set``), type-checked.
        out, name: the run goes to ``<out>/<dataset slug>/<algo>/<name>`` (``out`` default
            ``$OFFRL_RUNS`` or ``./runs``; ``name`` default ``seed<S>-<timestamp>``).
        resume: a run folder to continue from its latest checkpoint; a changed config is refused
            unless ``force``.
        command: the command line to record (default: this Python call).
        on_start: called with the run folder once it exists, before training.
        **overrides: config keys by name, dotted or nested: ``steps=2000``, ``batch_size=128``,
            ``seed=1``, ``device="cpu"``, ``eval_every=500``, ``eval_episodes=5``, ``logger="csv"``,
            ``progress=False``, ``cache_dir=...``, ``cql={"min_q_weight": 5}``, ``**{"dqn.lr": 1e-4}``.
    """
    values = {ALIASES.get(k, k): v for k, v in overrides.items() if v is not None}
    if command is None:
        shown = ", ".join([repr(str(dataset))] + [f"{k}={v!r}" for k, v in overrides.items()])
        command = [f"offrl.train({shown})"]
    if dataset is None and resume is None:
        scratch_env = values.get("online.env_id") if config is None else _scratch_env_of(config)
        if scratch_env is not None:
            from offrl.online.scratch import train_from_scratch  # online training from scratch in --env

            env_id = values.pop("online.env_id", None) or scratch_env
            return train_from_scratch(env_id, algo, dotlist=dotlist, out=out, name=name, command=command,
                                      config=config, on_start=on_start, **values)
    if resume is not None:
        return _resume(Path(resume), dataset=dataset, algo=algo, config=config, dotlist=dotlist,
                       overrides=values, force=force, command=command, on_start=on_start)

    check_writable(runs_root(out))
    from offrl.config import config_to_yaml
    from offrl.logging import TidyCSVLogger, attach_mirrors, check_logger_available

    cfg, data = compose_run_config(dataset, algo, config=config, dotlist=dotlist, **values)
    run_name = name or default_run_name(cfg.seed)
    path = run_dir_path(out, data.name, cfg.algo, run_name)
    if path.exists():
        raise UserError(f"--name {run_name}: run folder {path} already exists; pick another --name or --resume it")
    check_logger_available(cfg.logger)

    # Build everything before the folder exists: a bad input then leaves nothing behind. The logger and
    # the checkpoint path point into the future folder; neither writes before training starts.
    logger = TidyCSVLogger(run_name, path) if cfg.enable_logging else None
    parts = cfg.build_components(dataset=data, logger=logger, save_trainer_file=path / CHECKPOINT_DIR / LATEST_CHECKPOINT)
    meta = {"versions": package_versions(), "command": list(command),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    create_run_dir(path, {CONFIG_FILE: config_to_yaml(cfg, meta)})
    if logger is not None:
        attach_mirrors(logger, cfg.logger, path, run_name)
    return _train_in(path, cfg, parts, logger, resumed=0, on_start=on_start)


def compose_run_config(dataset: str | os.PathLike[str] | None = None, algo: str | None = None, *,
                       config: str | os.PathLike[str] | None = None, dotlist: Sequence[str] = (),
                       **overrides: Any) -> tuple[TrainerConfig, Any]:
    """The ``(config, dataset)`` that :func:`train` with the same arguments would run, without training or
    writing a run folder: every input is checked (a :class:`~offrl.errors.UserError` names the bad one)
    and the dataset is converted into the cache if needed."""
    from offrl.config import compose_config

    values = {ALIASES.get(k, k): v for k, v in overrides.items() if v is not None}
    return compose_config(None if dataset is None else str(dataset), algo, config_file=config, overrides=values,
                          dotlist=dotlist)


def _resume(path: Path, *, dataset: Any, algo: str | None, config: Any, dotlist: Sequence[str],
            overrides: Mapping[str, Any], force: bool, command: Sequence[str],
            on_start: Callable[[Path], None] | None) -> Run:
    """Continue ``path`` from ``checkpoints/latest.pt`` with the same (or, with ``force``, a changed) config."""
    if not path.is_dir() or not is_run_dir(path):
        raise UserError(f"--resume {path}: not an offrl run folder (it needs {CONFIG_FILE} and {CHECKPOINT_DIR}/); "
                        "pass a folder printed by 'offrl train'")
    from offrl.config import compose_config, diff_configs, load_yaml, saved_config
    from offrl.logging import TidyCSVLogger, attach_mirrors, check_logger_available

    saved_full = OmegaConf.load(path / CONFIG_FILE)
    saved = load_yaml(path / CONFIG_FILE, option="--resume")
    saved_dataset = OmegaConf.select(saved, "dataset.id")
    from offrl.online.scratch import env_of_config, resume_from_scratch

    if env_of_config(saved) is not None:  # trained online from scratch: no dataset to rebuild from
        if dataset is not None:
            raise UserError(f"--resume {path}: the run trained online from scratch in {env_of_config(saved)}, "
                            f"not on {dataset}; drop --dataset")
        return resume_from_scratch(path, saved, saved_full, algo=algo, config=config, dotlist=dotlist,
                                   overrides=overrides, force=force, command=command, on_start=on_start)
    if dataset is not None and str(dataset) != saved_dataset and not force:
        raise UserError(f"--resume {path}: the run trained on {saved_dataset}, not {dataset}; drop --dataset "
                        "(or --force to switch)")
    cfg, data = compose_config(None if dataset is None else str(dataset),
                               algo if algo not in (None, "auto") else None, config_file=config,
                               overrides=overrides, dotlist=dotlist, base=saved)
    old = saved_config(saved)
    changed = diff_configs(old, cfg)
    if changed and not force:
        # dataset.digest among them means the data's content changed since the run started.
        raise UserError(f"--resume {path}: config differs from the run's in {', '.join(changed)}; "
                        "resume without changes, or add --force to continue with the new values")
    check_logger_available(cfg.logger)

    run_name = path.name
    logger = TidyCSVLogger(run_name, path) if cfg.enable_logging else None
    latest = path / CHECKPOINT_DIR / LATEST_CHECKPOINT
    parts = cfg.build_components(dataset=data, logger=logger, save_trainer_file=latest)
    restore_run(path, parts.trainer, latest, cfg, changed=bool(changed), saved_full=saved_full, command=command)
    if logger is not None:
        attach_mirrors(logger, cfg.logger, path, run_name)
    resumed = int(read_summary(path).get("resumed", 0)) + 1
    return _train_in(path, cfg, parts, logger, resumed=resumed, on_start=on_start)


def restore_run(path: Path, trainer: Any, latest: Path, cfg: Any, *, changed: bool, saved_full: Any,
                command: Sequence[str]) -> None:
    """The resume step shared by dataset and from-scratch runs: load ``latest`` into ``trainer`` (networks,
    optimizers, counters, RNGs, buffers, online env state, and the logger's position, which cuts
    metrics.csv back to the rows written before it), or start metrics over when the run was killed before
    its first checkpoint; with ``changed`` (``--force``), rewrite config.yaml with the new values."""
    from offrl.config import config_to_yaml

    if latest.exists():
        trainer.load_from_file(latest)
    elif (path / METRICS_FILE).exists():
        (path / METRICS_FILE).unlink()
    if changed:
        meta = {k: saved_full[k] for k in ("versions", "created") if k in saved_full}
        meta = OmegaConf.to_container(OmegaConf.create(meta)) if meta else {}
        meta.update({"command": list(command), "versions": package_versions()})
        write_text_atomic(path / CONFIG_FILE, config_to_yaml(cfg, meta))


def _scratch_env_of(config: Any) -> str | None:
    """The env of a ``--config`` file written by a from-scratch run (``dataset.id: env:<ID>``), else None."""
    from offrl.config import load_yaml
    from offrl.online.scratch import env_of_config

    return env_of_config(load_yaml(config))


def _train_in(path: Path, cfg: TrainerConfig, parts: Any, logger: TidyCSVLogger | None, *, resumed: int,
              on_start: Callable[[Path], None] | None) -> Run:
    """Train, then write ``summary.json`` (whatever happened) and the report."""
    trainer = parts.trainer
    if on_start is not None:
        on_start(path)
    start_step = int(trainer.step)
    t0 = time.perf_counter()
    status = "crashed"
    write_json_atomic(path / "summary.json", _summary(path, cfg, parts, "running", start_step, start_step, 0.0,
                                                      logger, resumed))
    try:
        trainer.train()
        status = "stopped" if getattr(trainer, "stopped", False) else "completed"
        reason = getattr(trainer, "stop_reason", None) or ""
        if reason.startswith("env error"):  # the online env failed: checkpointed, said once, clearly
            print(f"offrl: error: {reason}; the run stopped at step {trainer.step} with a checkpoint "
                  f"(fix the env, then --resume {path})", file=sys.stderr)
    except KeyboardInterrupt:
        status = "stopped"
        raise
    finally:
        if logger is not None:
            logger.close()
        write_json_atomic(path / "summary.json", _summary(path, cfg, parts, status, start_step, int(trainer.step),
                                                          time.perf_counter() - t0, logger, resumed))
    _write_report(path)
    return Run(path)


def _summary(path: Path, cfg: TrainerConfig, parts: Any, status: str, start_step: int, step: int,
             seconds: float, logger: TidyCSVLogger | None, resumed: int) -> dict[str, Any]:
    """summary.json (docs/contracts.md): status, steps, speed, final/best eval, dataset, references."""
    from offrl.logging import read_metrics

    metrics = read_metrics(path / METRICS_FILE)
    final = best = None
    if "eval_return_mean" in metrics and metrics["eval_return_mean"].notna().any():
        evals = metrics[metrics["eval_return_mean"].notna()]
        final = _eval_row(evals.iloc[-1])
        best = _eval_row(evals.loc[evals["eval_return_mean"].idxmax()])
    info = parts.dataset.info.to_dict()
    done = step - start_step
    train_seconds = seconds - float(getattr(parts.trainer, "eval_seconds", 0.0))
    return {
        "status": status,
        "algo": cfg.algo,
        "seed": cfg.seed,
        "steps": step,
        "target_steps": cfg.offline_steps,
        # Training throughput: the time spent evaluating in the env is not counted.
        "updates_per_s": done / train_seconds if train_seconds > 0 and done > 0 else None,
        "wall_time": logger.wall_time if logger is not None else seconds,
        "resumed": resumed,
        "device": parts.device,
        "final": final,
        "best": best,
        "dataset": {"id": parts.dataset.name, "digest": parts.dataset.digest,
                    "mean_return": _mean_return(info.get("episode_return")),
                    "episodes": info.get("episodes"), "transitions": info.get("transitions")},
        "ref": {"min": info.get("ref_min_score"), "max": info.get("ref_max_score"),
                "source": info.get("ref_source")},
        "stop_reason": getattr(parts.trainer, "stop_reason", None),
        "online": _online_summary(parts),
    }


def _online_summary(parts: Any) -> dict[str, Any] | None:
    """Frames, episodes, returns and cumulative regret of the online phase (None for offline runs)."""
    online = getattr(parts, "online", None)
    if online is None:
        return None
    t = online.transitions
    return {"frames": int(parts.trainer.frames), "total_frames": online.total_frames, "episodes": t.episodes,
            "mean_return": t.returns_total / t.episodes if t.episodes else None,
            "best_return": t.best_return if t.episodes else None,
            "regret": t.regret if t.ref is not None else None,
            "offline_fraction": float(online.replay_buffer.offline_fraction)}


def _eval_row(row: Any) -> dict[str, Any]:
    def num(key: str) -> float | None:
        value = row.get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    return {"step": int(row["step"]), "return_mean": num("eval_return_mean"), "return_std": num("eval_return_std"),
            "length_mean": num("eval_length_mean"), "normalized_score": num("eval_normalized_score")}


def _mean_return(stats: Any) -> float | None:
    """The behaviour policy's mean episode return from the dataset info (a stats dict or a number)."""
    if stats is None:
        return None
    if isinstance(stats, Mapping):
        stats = stats.get("mean")
    try:
        return float(stats)
    except (TypeError, ValueError):
        return None


def _write_report(path: Path) -> None:
    """``report.html`` for the run, when the report module provides it; a failing report never loses a run."""
    try:
        from offrl.report import write_run_report  # type: ignore[attr-defined]
    except ImportError:
        return
    try:
        write_run_report(path)
    except UserError:
        raise
    except Exception as err:  # the run is complete; say so and keep it
        print(f"offrl: warning: report for {path} failed ({type(err).__name__}: {err})", file=sys.stderr)


def format_command(argv: Sequence[str]) -> str:
    """A command line as one shell-quoted string (for messages)."""
    return " ".join(shlex.quote(a) for a in argv)
