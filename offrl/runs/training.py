"""``offrl.train``: one call from a source (a dataset, or an env to train in from scratch) to a finished
run directory; ``resume=`` continues one from its latest checkpoint.

``offrl train``, ``--seeds`` and the Python API all go through :func:`train`. A run goes: compose the config
and load its source (:mod:`offrl.runs.compose`) -> build the trainer (:mod:`offrl.runs.assemble`) -> create
the run folder atomically (nothing is written before everything above succeeded) -> train ->
``summary.json`` -> ``report.html`` (:mod:`offrl.runs.summary`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from offrl.config import TrainerConfig, config_to_yaml
from offrl.errors import UserError
from offrl.runs.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LATEST_CHECKPOINT,
    METRICS_FILE,
    SUMMARY_FILE,
    Run,
    check_writable,
    create_run_dir,
    default_run_name,
    is_run_dir,
    lock_run_dir,
    package_versions,
    read_summary,
    run_dir_path,
    runs_root,
    sweep_temporaries,
    write_json_atomic,
    write_text_atomic,
)
from offrl.runs.summary import run_summary, write_report

if TYPE_CHECKING:
    from offrl.runs.metrics_log import TidyCSVLogger

# offrl.runs.assemble / compose / metrics_log import torch and torchrl (seconds): they are imported inside the
# functions, after the checks that need neither, so a mistyped --resume or --out fails at once.

__all__ = ["apply_select", "check_latest_checkpoint", "check_online_flags", "check_select", "restore_run", "run_ended",
           "run_started", "train"]


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
    select: str | None = None,
    **overrides: Any,
) -> Run:
    """Train on a dataset (or online from scratch in an env) and return the finished :class:`Run`.

    Args:
        dataset: a bundled id (``offrl/pendulum/medium-v0``), Minari id or folder, or HDF5 file. Without
            one, ``online_env=ENV_ID`` (with ``online_steps=N``) trains online from scratch in that env.
        algo: ``auto`` (default: CQL for continuous actions, discrete CQL for discrete; DQN for a discrete
            env from scratch), ``cql``, ``discrete-cql`` or ``dqn``.
        config: a YAML file of config keys (a run's ``config.yaml`` works too).
        dotlist: ``key=value`` overrides (the CLI's ``--set``), type-checked.
        out, name: the run goes to ``<out>/<dataset slug>/<algo>/<name>`` (``out`` default
            ``$OFFRL_RUNS`` or ``./runs``; ``name`` default ``seed<S>-<timestamp>``; ``env__<ENV_ID>``
            is the slug of a run from scratch).
        resume: a run folder to continue from its latest checkpoint; a changed config is refused
            unless ``force``.
        command: the command line to record (default: this Python call).
        on_start: called with the run folder once it exists, before training.
        select: ``"fqe"``: after training, rank the kept checkpoints by FQE on the held-out episodes
            (:func:`offrl.runs.ope.select_checkpoint`) and record the chosen one's score as ``selected`` in
            ``summary.json``, next to ``final`` and ``best`` (which chose on the evaluation episodes).
        **overrides: config keys by name, dotted or nested: ``steps=2000``, ``batch_size=128``,
            ``seed=1``, ``device="cpu"``, ``eval_every=500``, ``eval_episodes=5``, ``logger="csv"``,
            ``progress=False``, ``cache_dir=...``, ``cql={"min_q_weight": 5}``, ``**{"dqn.lr": 1e-4}``.
    """
    from offrl.runs.compose import config_values

    values = config_values(overrides)
    if select not in (None, "fqe"):
        raise UserError(f"--select {select}: unknown selection; choose fqe")
    if force and resume is None:
        raise UserError("--force: only with --resume (it accepts a changed config when continuing a run); drop it")
    if command is None:
        shown = ", ".join([repr(str(dataset))] + [f"{k}={v!r}" for k, v in overrides.items()])
        command = [f"offrl.train({shown})"]
    if resume is not None:
        return apply_select(_resume(Path(resume), dataset=dataset, algo=algo, config=config, dotlist=dotlist,
                                 overrides=values, force=force, command=command, on_start=on_start,
                                 select=select), select)
    from offrl.runs.compose import (
        compose_env_run_config,
        compose_run_config,
        config_origins,
        env_source,
        resolve_dataset_defaults,
    )

    data_notes: list[str] = []

    env_id = env_source(dataset, config, values)
    if env_id is None:
        check_writable(runs_root(out))  # before the dataset is loaded
        cfg, data = compose_run_config(dataset, algo, config=config, dotlist=dotlist, **values)
        cfg, data_notes = resolve_dataset_defaults(cfg, data)
    else:
        cfg, data = compose_env_run_config(env_id, algo, config=config, dotlist=dotlist, overrides=values), None
        check_writable(runs_root(out))
    from offrl.algos.scaled import describe_scalers
    from offrl.runs.assemble import build_components
    from offrl.runs.metrics_log import TidyCSVLogger, check_logger_available

    run_name = name or default_run_name(cfg.seed)
    path = run_dir_path(out, data.name if data is not None else f"env/{env_id}", cfg.algo, run_name)
    if path.exists():
        raise UserError(f"--name {run_name}: run folder {path} already exists; pick another --name or --resume it")
    check_logger_available(cfg.logger)
    check_select(select, cfg, data)
    check_online_flags(cfg, values)

    # Build everything before the folder exists: a bad input then leaves nothing behind. The logger and
    # the checkpoint path point into the future folder; neither writes before training starts.
    logger = TidyCSVLogger(run_name, path)
    parts = build_components(cfg, dataset=data, env_id=env_id, logger=logger,
                             save_trainer_file=path / CHECKPOINT_DIR / LATEST_CHECKPOINT)
    meta = {"versions": package_versions(), "command": list(command),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    # which layer set which keys (general defaults, bundled config, --config, flags, --set)
    meta["config_origins"] = config_origins(cfg, config=config, dotlist=dotlist, overrides=values)
    data_notes = [*data_notes, *describe_scalers(parts.parts)]  # and what the scalers fitted on it
    if data_notes:  # which defaults the dataset decided, and why (also printed by offrl train)
        meta["defaults_from_data"] = data_notes
    create_run_dir(path, {CONFIG_FILE: config_to_yaml(cfg, meta)})
    lock = lock_run_dir(path)
    try:
        run = _train_in(path, cfg, parts, logger, resumed=0, on_start=on_start)
    finally:
        lock.release()
    return apply_select(run, select)


def check_select(select: str | None, cfg: TrainerConfig, data: Any) -> None:
    """``--select fqe`` needs a dataset and kept checkpoints: say so before anything is trained."""
    if select is None:
        return
    if data is None:
        raise UserError("--select fqe: a run trained online from scratch has no dataset for FQE; drop --select")
    if not cfg.keep_checkpoints:
        raise UserError("--select fqe: ranks the kept checkpoints, but keep_checkpoints is false; drop "
                        "--set keep_checkpoints=false")
    info = getattr(data, "info", None)
    if info is not None and getattr(info, "env_id", None) is None:
        raise UserError(f"--select fqe: scores the chosen checkpoint in the dataset's env, but no evaluation env "
                        f"is known for {data.name!r}; add --env ENV_ID (or --set dataset.env_id=ENV_ID), or drop "
                        "--select")


#: Flags (as config keys) that only act in an online phase, and how offrl train spells them.
ONLINE_ONLY_FLAGS = {"optim_steps_per_batch": "--utd", "online.frames_per_batch": "--frames-per-batch",
                     "async_collection": "--async-collection"}


def check_online_flags(cfg: TrainerConfig, values: dict[str, Any]) -> None:
    """A flag of the online phase on a run without one would be silently ignored (or fail deep in the
    trainer): refuse it, saying to add ``--online-steps``."""
    if cfg.online.steps > 0:
        return
    given = [key for key in ONLINE_ONLY_FLAGS if values.get(key) not in (None, False)]
    if cfg.async_collection and "async_collection" not in given:
        given.append("async_collection")
    if given:
        flag = ONLINE_ONLY_FLAGS[given[0]]
        raise UserError(f"{flag} ({given[0]}): only acts while collecting online, and this run has no online phase; "
                        f"add --online-steps M (env steps to fine-tune online), or drop {flag}")


def apply_select(run: Run, select: str | None) -> Run:
    """Add ``selected`` to a finished run's summary.json (``--select fqe``)."""
    if select is None or run.summary.get("status") != "completed":
        return run
    from offrl.runs.ope import select_checkpoint

    summary = run.summary
    summary["selected"] = select_checkpoint(run.dir)
    write_json_atomic(run.dir / SUMMARY_FILE, summary)
    return run


def _resume(path: Path, *, dataset: Any, algo: str | None, config: Any, dotlist: Sequence[str],
            overrides: dict[str, Any], force: bool, command: Sequence[str],
            on_start: Callable[[Path], None] | None, select: str | None = None) -> Run:
    """Continue ``path`` from ``checkpoints/latest.pt`` with the same (or, with ``force``, a changed) config."""
    if not path.is_dir() or not is_run_dir(path):
        raise UserError(f"--resume {path}: not an offrl run folder (it needs {CONFIG_FILE} and {CHECKPOINT_DIR}/); "
                        "pass a folder printed by 'offrl train'")
    lock = lock_run_dir(path)  # one process at a time in a run folder: a second resume is one line, exit 2
    try:
        return _resume_locked(path, dataset=dataset, algo=algo, config=config, dotlist=dotlist,
                              overrides=overrides, force=force, command=command, on_start=on_start,
                              select=select)
    finally:
        lock.release()


def _resume_locked(path: Path, *, dataset: Any, algo: str | None, config: Any, dotlist: Sequence[str],
                   overrides: dict[str, Any], force: bool, command: Sequence[str],
                   on_start: Callable[[Path], None] | None, select: str | None) -> Run:
    from offrl.runs.assemble import build_components
    from offrl.runs.compose import compose_resume
    from offrl.runs.metrics_log import TidyCSVLogger, check_logger_available

    sweep_temporaries(path)  # what a killed process left half-written (never read: atomic writes)
    check_latest_checkpoint(path)
    resumed_cfg = compose_resume(path, dataset=dataset, algo=algo, config=config, dotlist=dotlist,
                                 overrides=overrides, force=force)
    cfg = resumed_cfg.cfg
    check_logger_available(cfg.logger)
    check_select(select, cfg, resumed_cfg.dataset)
    check_online_flags(cfg, overrides)
    logger = TidyCSVLogger(path.name, path)
    latest = path / CHECKPOINT_DIR / LATEST_CHECKPOINT
    parts = build_components(cfg, dataset=resumed_cfg.dataset, env_id=resumed_cfg.env_id, logger=logger,
                             save_trainer_file=latest)
    restore_run(path, parts.trainer, latest, cfg, changed=bool(resumed_cfg.changed),
                saved_full=resumed_cfg.saved_full, command=command)
    try:
        resumed = int(read_summary(path).get("resumed", 0)) + 1
    except UserError:  # a damaged summary.json is rewritten by this session
        resumed = 1
    return _train_in(path, cfg, parts, logger, resumed=resumed, on_start=on_start)


def check_latest_checkpoint(path: Path) -> None:
    """A run that ended (summary.json's status is not ``running``) after steps it checkpointed, but has lost
    ``latest.pt``, is refused, naming the newest intact ``step_N.pt``, rather than restarted from step 0. A
    killed run (still ``running``) may have died before its first checkpoint was in place: it restarts, as the
    kill-point tests require."""
    latest = path / CHECKPOINT_DIR / LATEST_CHECKPOINT
    if latest.exists():
        return
    try:
        summary = read_summary(path)
        steps = int(summary.get("steps") or 0)
    except (UserError, TypeError, ValueError):  # a damaged summary.json: nothing says a checkpoint was written
        return
    if summary.get("status") in (None, "running") or steps <= 0:
        return
    from offrl.trainers.checkpoint import intact_hint

    raise UserError(f"--resume {path}: checkpoint {latest} is missing after {steps} steps{intact_hint(latest)}")


def restore_run(path: Path, trainer: Any, latest: Path, cfg: Any, *, changed: bool, saved_full: Any,
                command: Sequence[str]) -> None:
    """The resume step: load ``latest`` into ``trainer`` (networks, optimizers, counters, RNGs, buffers,
    online env state, and the logger's position, which cuts metrics.csv back to the rows written before it),
    or start metrics over when the run was killed before its first checkpoint; with ``changed``
    (``--force``), rewrite config.yaml with the new values."""
    if latest.exists():
        trainer.load_from_file(latest)
    elif (path / METRICS_FILE).exists():
        (path / METRICS_FILE).unlink()
    if changed:
        meta = {k: saved_full[k] for k in ("versions", "created", "vectorized_seeds") if k in saved_full}
        meta = OmegaConf.to_container(OmegaConf.create(meta)) if meta else {}
        meta.update({"command": list(command), "versions": package_versions()})
        write_text_atomic(path / CONFIG_FILE, config_to_yaml(cfg, meta))


def run_started(path: Path, cfg: TrainerConfig, parts: Any, logger: TidyCSVLogger | None, *, resumed: int,
                on_start: Callable[[Path], None] | None) -> int:
    """A run folder's training begins: mirrors attached, ``on_start`` called, summary.json ``running``;
    returns the step it starts from."""
    from offrl.runs.metrics_log import attach_mirrors

    if logger is not None:
        attach_mirrors(logger, cfg.logger, path, path.name)
    if on_start is not None:
        on_start(path)
    start_step = int(parts.trainer.step)
    write_json_atomic(path / SUMMARY_FILE, run_summary(path, cfg, parts, "running", start_step, start_step, 0.0,
                                                       logger, resumed))
    return start_step


def run_ended(path: Path, cfg: TrainerConfig, parts: Any, logger: TidyCSVLogger | None, *, status: str,
              start_step: int, seconds: float, resumed: int) -> None:
    """A run folder's training ended (whatever happened): the logger closed, summary.json written."""
    trainer = parts.trainer
    if logger is not None:
        logger.close()
    # A run that did not complete is where its checkpoint is (a second Ctrl-C, a crash, a NaN loss stop
    # mid-interval): summary.json and the checkpoint agree on the step --resume starts from.
    step = int(trainer.step) if status == "completed" else max(int(getattr(trainer, "saved_step", -1)), 0)
    write_json_atomic(path / SUMMARY_FILE, run_summary(path, cfg, parts, status, start_step, step, seconds, logger,
                                                       resumed))


def _train_in(path: Path, cfg: TrainerConfig, parts: Any, logger: TidyCSVLogger | None, *, resumed: int,
              on_start: Callable[[Path], None] | None) -> Run:
    """Train, then write ``summary.json`` (whatever happened) and the report."""
    from offrl.trainers import NonFiniteLossError

    trainer = parts.trainer
    start_step = run_started(path, cfg, parts, logger, resumed=resumed, on_start=on_start)
    t0 = time.perf_counter()
    status = "crashed"
    try:
        trainer.train()
        status = "stopped" if getattr(trainer, "stopped", False) else "completed"
        reason = getattr(trainer, "stop_reason", None) or ""
        if reason.startswith("env error"):  # the online env failed: checkpointed, said once, clearly
            print(f"offrl: error: {reason}; the run stopped at step {trainer.step} with a checkpoint "
                  f"(fix the env, then --resume {path})", file=sys.stderr)
    except NonFiniteLossError:
        status = "diverged"  # said in one line (exit 2); latest.pt keeps the last finite checkpoint
        raise
    except KeyboardInterrupt:
        status = "stopped"
        raise
    finally:
        run_ended(path, cfg, parts, logger, status=status, start_step=start_step,
                  seconds=time.perf_counter() - t0, resumed=resumed)
    write_report(path)
    return Run(path)
