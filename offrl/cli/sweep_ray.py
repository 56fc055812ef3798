"""``offrl sweep`` on Ray Tune: each trial a Tune trial with its own resources (``--cpus-per-run``, fractional
``--gpus-per-run``), ``max_concurrent_trials``, a local Ray started here unless ``--address`` / ``RAY_ADDRESS``
names a cluster. A trial whose worker dies is retried (Tune's ``FailureConfig``) and resumes from its own
last offrl checkpoint; Ctrl-C writes ``<sweep>/STOP`` and every trial stops after a checkpoint."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from offrl.cli.sweep_run import ABORT_FILE, DONE, STOP_FILE, STOPPED, USER_ERROR, Progress, run_trial
from offrl.cli.sweep_spec import SweepOptions, Trial
from offrl.errors import UserError

__all__ = ["connect", "ray_trial", "run_ray"]


def ray_trial(config: Mapping[str, Any]) -> None:
    """The Tune trainable: run the trial as an ``offrl train`` child; a crash raises, so Tune retries it (the
    retry resumes the run folder from its checkpoint); a user error or a stop is reported, not retried."""
    from ray import tune

    root = Path(config["sweep"]["root"])
    outcome = run_trial(config["trial"], config["sweep"], (root / STOP_FILE).exists, (root / ABORT_FILE).exists)
    if outcome["code"] not in (DONE, STOPPED, USER_ERROR):
        raise RuntimeError(f"offrl train exited {outcome['code']} on {outcome['node']}: {outcome['line']}")
    tune.report(dict(outcome))


def connect(options: SweepOptions) -> tuple[bool, str]:
    """``ray.init``: the cluster at ``--address`` / ``RAY_ADDRESS``, else a local Ray on this machine.
    Returns (started here, a line saying where the sweep runs)."""
    import ray

    if ray.is_initialized():
        return False, "Ray (this process's session)"
    address = options.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    except ConnectionError as err:
        raise UserError(f"--address {address}: no Ray cluster answers there ({str(err).splitlines()[0]}); start "
                        "one with 'ray start --head', or drop --address to use a local Ray") from None
    res = ray.cluster_resources()
    where = f"Ray cluster at {address}" if address else "a local Ray on this machine"
    gpus = f", {res.get('GPU', 0):g} GPU(s)" if res.get("GPU") else ""
    return True, f"{where}: {len(ray.nodes())} node(s), {res.get('CPU', 0):g} CPU(s){gpus}"


def _check_resources(options: SweepOptions) -> None:
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= options.cpus_per_run for r in nodes):
        most = max((r.get("CPU", 0) for r in nodes), default=0)
        raise UserError(f"--cpus-per-run {options.cpus_per_run:g}: no Ray node has that many CPUs (at most {most:g})")
    if options.gpus_per_run and not any(r.get("GPU", 0) >= options.gpus_per_run for r in nodes):
        raise UserError(f"--gpus-per-run {options.gpus_per_run:g}: no Ray node has that many GPUs; use 0 on a "
                        "CPU-only cluster")


def run_ray(trials: Sequence[Trial], sweep: Mapping[str, Any], progress: Progress, options: SweepOptions) -> None:
    """Run ``trials`` as Tune trials, printing progress; returns once every trial ended or stopped."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C is ours: stop after a checkpoint, not kill
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables; the progress lines are ours
    from ray import tune

    _check_resources(options)
    root = Path(sweep["root"])
    labels = {}

    class Lines(tune.Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            labels[trial.trial_id] = Trial.from_dict(trial.config["trial"]).label
            progress.started()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            outcome = trial.last_result or {}
            if "code" not in outcome:
                progress.crashed(labels[trial.trial_id], "ended without a result")
                return
            progress.finished(labels[trial.trial_id], outcome)
            if outcome["code"] == USER_ERROR:  # a bad input fails every trial alike: stop the rest
                (root / STOP_FILE).touch()

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            progress.running = max(0, progress.running - 1)
            print(f"{progress.bar()}  {labels[trial.trial_id]}: worker died ({_error(trial)}); retrying, the run "
                  "resumes from its last checkpoint", flush=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            progress.crashed(labels[trial.trial_id], f"{_error(trial)} (gave up after --retries {options.retries})")

    class StopWhenIdle(tune.Stopper):
        """After Ctrl-C, no new trial starts once the running ones have stopped."""

        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            return (root / STOP_FILE).exists() and progress.running == 0

    resources = {"cpu": options.cpus_per_run, "gpu": options.gpus_per_run}
    tuner = tune.Tuner(
        tune.with_resources(ray_trial, resources),
        param_space={"trial": tune.grid_search([t.to_dict() for t in trials]), "sweep": dict(sweep)},
        tune_config=tune.TuneConfig(max_concurrent_trials=options.max_concurrent, reuse_actors=False),
        run_config=tune.RunConfig(
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}", storage_path=str(root / "ray"), verbose=0,
            callbacks=[Lines()], stop=StopWhenIdle(), failure_config=tune.FailureConfig(max_failures=options.retries)),
    )
    interrupts = 0

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            (root / STOP_FILE).touch()
            print("offrl: stopping: each running trial saves a checkpoint (Ctrl-C again to abort); re-run the same "
                  "command to resume", file=sys.stderr, flush=True)
        elif interrupts == 2:
            (root / ABORT_FILE).touch()
        else:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Tune logs a traceback for each failed attempt; the progress lines say it in one line each (and Tune
    # keeps the full error under <sweep>/ray/).
    loggers = {name: logging.getLogger(name) for name in ("ray.tune", "ray.air", "ray.train")}
    levels = {name: lg.level for name, lg in loggers.items()}
    for lg in loggers.values():
        lg.setLevel(logging.CRITICAL)
    try:
        tuner.fit()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for name, lg in loggers.items():
            lg.setLevel(levels[name])
    if (root / ABORT_FILE).exists():
        raise KeyboardInterrupt
    if (root / STOP_FILE).exists():
        # After Ctrl-C, StopWhenIdle ends the experiment once no trial runs: Tune drops the trials it had not
        # started (or was about to retry) without a result. They are stopped too, not done.
        progress.not_started(progress.total - progress.done - progress.failed - progress.stopped)


def _error(trial: Any) -> str:
    text = str(getattr(trial, "error_message", None) or getattr(trial, "error_msg", None) or "")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "its worker died"
