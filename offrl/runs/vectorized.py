"""One group of ``offrl train --seeds N --vectorize``: runs of one configuration, one per seed, trained as one
batched model in this process (:class:`offrl.trainers.vectorized.VectorizedSeeds`), and ``--vectorize --resume
R1 R2 ...`` to continue such a group as one (``offrl.cli.seeds`` splits the seeds into groups).

Each seed gets the run folder, config.yaml, metrics.csv, checkpoints, summary.json and report.html its own
``offrl train --seed S`` would write (only ``command`` and ``vectorized_seeds`` in config.yaml say how it was
trained), so reports, ``offrl eval`` and ``offrl train --resume RUN`` of one seed work as for any run.
Everything is built and checked for every seed before the first folder is created.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from offrl.config import TrainerConfig, config_to_yaml
from offrl.errors import UserError
from offrl.runs.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LATEST_CHECKPOINT,
    Run,
    RunLock,
    check_writable,
    create_run_dir,
    is_run_dir,
    lock_run_dir,
    package_versions,
    read_summary,
    run_dir_path,
    runs_root,
    sweep_temporaries,
)
from offrl.runs.summary import write_report
from offrl.runs.training import (
    apply_select,
    check_latest_checkpoint,
    check_select,
    restore_run,
    run_ended,
    run_started,
)

__all__ = ["VECTORIZED_ALGOS", "check_resume_folders", "check_vectorizable", "resume_vectorized", "train_vectorized"]

#: The algorithms whose seeds can be batched (their losses run as stacked matmuls: offrl.algos.stacked_q,
#: offrl.algos.stacked_cql).
VECTORIZED_ALGOS = ("dqn", "discrete-cql", "cql")

#: ``(step, planned steps)`` after each logged row of the group's first seed.
ProgressFn = Callable[[int, int], None]


def check_vectorizable(cfg: TrainerConfig, where: str = "--vectorize") -> None:
    """One line naming what keeps ``cfg``'s seeds from training as one batched model, if anything does."""
    if cfg.algo not in VECTORIZED_ALGOS:
        raise UserError(f"{where}: batches CQL, discrete CQL and DQN only ({cfg.algo} is not batched); run --seeds N "
                        "without --vectorize")
    if cfg.online.steps:
        raise UserError(f"{where}: batches offline training only; drop --online-steps (or --vectorize)")
    section, name = cfg.algo_config, cfg.algo.replace("-", "_")
    dueling = getattr(section, "dueling", False)
    if not section.fused or dueling:
        given = f"{name}.dueling=true" if dueling else f"{name}.fused=false"
        raise UserError(f"{where}: batches the fused loss of plain MLP networks; drop --set {given}")
    if getattr(section, "max_q_backup", False):
        raise UserError(f"{where}: the batched CQL step has no max-Q backup; drop --set cql.max_q_backup=true")
    for key, value, plain in (("precision", cfg.precision, "fp32"), ("cuda_graph", cfg.cuda_graph, False),
                              ("log_timings", cfg.log_timings, False)):
        if value != plain:
            raise UserError(f"{where}: the batched step runs with {key}={plain}; drop --set {key}={value}")


def train_vectorized(
    dataset: str | os.PathLike[str] | None,
    algo: str | None = None,
    *,
    seeds: Sequence[int],
    names: Sequence[str],
    config: str | os.PathLike[str] | None = None,
    dotlist: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
    command: Sequence[str] = (),
    on_start: Callable[[Path], None] | None = None,
    on_progress: ProgressFn | None = None,
    select: str | None = None,
    **overrides: Any,
) -> list[Run]:
    """Train ``seeds`` (run folders ``names``, in order) as one batched model; arguments as :func:`offrl.train`."""
    from offrl.runs.compose import compose_run_config, config_values, env_source, resolve_dataset_defaults
    from offrl.runs.metrics_log import TidyCSVLogger, check_logger_available

    values = config_values(overrides)
    if select not in (None, "fqe"):
        raise UserError(f"--select {select}: unknown selection; choose fqe")
    if (dataset is None and config is None) or env_source(dataset, config, values) is not None:
        raise UserError("--vectorize: batches seeds trained on a dataset; give --dataset")
    check_writable(runs_root(out))
    base, data = compose_run_config(dataset, algo, config=config, dotlist=dotlist, **values)
    base, notes = resolve_dataset_defaults(base, data)
    base = dataclasses.replace(base, progress_bar=False)  # N bars would garble the terminal
    check_vectorizable(base)
    check_logger_available(base.logger)
    check_select(select, base, data)
    cfgs = [dataclasses.replace(base, seed=int(s)) for s in seeds]
    paths = [run_dir_path(out, data.name, base.algo, name) for name in names]
    for path in paths:
        if path.exists():
            raise UserError(f"--name {path.name}: run folder {path} already exists; pick another --name")
    built = []
    for cfg, path in zip(cfgs, paths, strict=True):  # all of it before any folder exists
        logger = TidyCSVLogger(path.name, path)
        built.append((cfg, _build(cfg, data, logger, path / CHECKPOINT_DIR / LATEST_CHECKPOINT), logger))
    group = _group([parts for _, parts, _ in built])
    meta = {"versions": package_versions(), "command": list(command),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "vectorized_seeds": [int(s) for s in seeds]}
    from offrl.algos.scaled import describe_scalers

    notes = [*notes, *describe_scalers(built[0][1].parts)]  # every seed fits the same scalers on the same data
    if notes:
        meta["defaults_from_data"] = notes
    locks: list[RunLock] = []
    try:
        for cfg, path in zip(cfgs, paths, strict=True):
            create_run_dir(path, {CONFIG_FILE: config_to_yaml(cfg, meta)})
            locks.append(lock_run_dir(path))
        runs = _train_group(group, paths, built, [0] * len(paths), on_start, on_progress)
    finally:
        for lock in locks:
            lock.release()
    return [apply_select(run, select) for run in runs]


def check_resume_folders(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The folders to resume together, each an offrl run folder and none listed twice (else one line)."""
    folders = [Path(p) for p in paths]
    if len(set(folders)) != len(folders):
        raise UserError("--resume: a run folder is listed twice")
    for path in folders:
        if not path.is_dir() or not is_run_dir(path):
            raise UserError(f"--resume {path}: not an offrl run folder (it needs {CONFIG_FILE} and {CHECKPOINT_DIR}/); "
                            "pass folders printed by 'offrl train'")
    return folders


def resume_vectorized(
    paths: Sequence[str | os.PathLike[str]],
    *,
    dotlist: Sequence[str] = (),
    force: bool = False,
    command: Sequence[str] = (),
    on_start: Callable[[Path], None] | None = None,
    on_progress: ProgressFn | None = None,
    select: str | None = None,
    **overrides: Any,
) -> list[Run]:
    """Continue the run folders ``paths`` (seeds of one configuration, at the same step) as one batched model."""
    from offrl.runs.compose import compose_resume, config_values
    from offrl.runs.metrics_log import TidyCSVLogger, check_logger_available

    values = config_values(overrides)
    folders = check_resume_folders(paths)
    locks: list[RunLock] = []
    try:
        for path in folders:
            locks.append(lock_run_dir(path))
        built, data, resumed = [], None, []
        for path in folders:
            sweep_temporaries(path)
            check_latest_checkpoint(path)
            saved = compose_resume(path, dataset=None, algo=None, config=None, dotlist=dotlist, overrides=values,
                                   force=force)
            cfg = dataclasses.replace(saved.cfg, progress_bar=False)
            check_vectorizable(cfg, f"--resume {path} --vectorize")
            check_logger_available(cfg.logger)
            check_select(select, cfg, saved.dataset)
            if data is None or saved.dataset.digest != data.digest:
                data = saved.dataset  # seeds of one dataset share it (and its packed rows: one gather)
            logger = TidyCSVLogger(path.name, path)
            latest = path / CHECKPOINT_DIR / LATEST_CHECKPOINT
            parts = _build(cfg, data, logger, latest, hold=False)
            restore_run(path, parts.trainer, latest, cfg, changed=bool(saved.changed), saved_full=saved.saved_full,
                        command=command)
            parts.trainer.hold_rng()
            built.append((cfg, parts, logger))
            try:
                resumed.append(int(read_summary(path).get("resumed", 0)) + 1)
            except UserError:  # a damaged summary.json is rewritten by this session
                resumed.append(1)
        steps = [parts.trainer.step for _, parts, _ in built]
        if len(set(steps)) > 1:
            at = ", ".join(f"{p.name} at {s}" for p, s in zip(folders, steps, strict=True))
            raise UserError(f"--resume: the runs stopped at different steps ({at}); resume each on its own "
                            "(without --vectorize)")
        group = _group([parts for _, parts, _ in built])
        runs = _train_group(group, folders, built, resumed, on_start, on_progress)
    finally:
        for lock in locks:
            lock.release()
    return [apply_select(run, select) for run in runs]


def _build(cfg: TrainerConfig, data: Any, logger: Any, checkpoint: Path, hold: bool = True) -> Any:
    from offrl.runs.assemble import build_components

    parts = build_components(cfg, dataset=data, logger=logger, save_trainer_file=checkpoint)
    parts.trainer.handle_signals = False  # the group handles Ctrl-C for all its seeds
    if hold:
        parts.trainer.hold_rng()  # the process RNG state this seed's own run would have
    return parts


def _group(parts: Sequence[Any]) -> Any:
    from offrl.trainers.vectorized import VectorizedSeeds

    return VectorizedSeeds([p.trainer for p in parts])


def _train_group(group: Any, paths: Sequence[Path], built: Sequence[tuple[TrainerConfig, Any, Any]],
                 resumed: Sequence[int], on_start: Callable[[Path], None] | None,
                 on_progress: ProgressFn | None) -> list[Run]:
    """Train the group, then write every seed's summary.json (whatever happened) and report."""
    from offrl.trainers import NonFiniteLossError

    starts = [run_started(path, cfg, parts, logger, resumed=n, on_start=on_start)
              for path, (cfg, parts, logger), n in zip(paths, built, resumed, strict=True)]
    trainers = group.trainers
    t0 = time.perf_counter()
    statuses = ["crashed"] * len(paths)
    try:
        planned = trainers[0].planned_steps() or 0
        for seed, step, _ in group.iterate():
            if seed == 0 and on_progress is not None:
                on_progress(step, planned)
        statuses = ["stopped" if t.stopped else "completed" for t in trainers]
    except NonFiniteLossError:  # that seed diverged (one line, exit 2); the others stopped at a checkpoint
        statuses = ["diverged" if t.stop_reason == "diverged" else "stopped" for t in trainers]
        raise
    except KeyboardInterrupt:
        statuses = ["stopped"] * len(paths)
        raise
    finally:
        seconds = time.perf_counter() - t0
        for path, (cfg, parts, logger), status, start, n in zip(paths, built, statuses, starts, resumed, strict=True):
            run_ended(path, cfg, parts, logger, status=status, start_step=start, seconds=seconds, resumed=n)
    for path in paths:
        write_report(path)
    return [Run(path) for path in paths]
