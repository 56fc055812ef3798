"""One sweep trial, wherever it runs (a thread of the local pool, or a Ray Tune trial on any node): an
``offrl train`` child process that creates the trial's run folder, or ``offrl train --resume`` when the
folder exists (a retry after a dead worker, or a re-run of the sweep). Also the local engine (the process
pool of ``offrl train --seeds``) and the progress lines both engines print."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from offrl.cli.children import start_child
from offrl.cli.format import fmt

__all__ = ["Progress", "run_local", "run_trial", "trial_argv"]

STOP_FILE = "STOP"  # <sweep>/STOP: written on Ctrl-C; every trial stops after a checkpoint when it appears
ABORT_FILE = "ABORT"  # <sweep>/ABORT: a second Ctrl-C; every trial aborts at once
DONE, STOPPED, USER_ERROR = 0, 130, 2


def trial_argv(trial: Mapping[str, Any], sweep: Mapping[str, Any]) -> list[str]:
    """The ``offrl train`` command of a trial: a new run into its folder, or ``--resume`` of that folder."""
    base = [sys.executable, "-m", "offrl", "train", "--no-progress"]
    run_dir = Path(trial["run_dir"])
    if (run_dir / "config.yaml").is_file():
        return [*base, "--resume", str(run_dir)]
    argv = [*base, "--dataset", trial["dataset"], "--algo", trial["algo"], "--seed", str(trial["seed"]),
            "--out", str(Path(sweep["root"]) / "runs"), "--name", run_dir.name]
    for flag in ("config", "steps", "batch_size", "eval_every", "eval_episodes", "cache_dir"):
        if sweep.get(flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", str(sweep[flag])]
    for item in [*trial["sets"], *(f"{k}={v}" for k, v in trial["values"])]:
        argv += ["--set", item]
    return argv


def _node() -> str:
    try:
        import ray

        if ray.is_initialized():
            return f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    except ImportError:
        pass
    return socket.gethostname()


def _outcome(code: int, line: str, trial: Mapping[str, Any], t0: float, resumed: bool) -> dict[str, Any]:
    return {"code": code, "line": line, "seconds": time.perf_counter() - t0, "run": trial["run_dir"],
            "resumed": resumed, "node": socket.gethostname()}


def run_trial(trial: Mapping[str, Any], sweep: Mapping[str, Any], should_stop: Callable[[], bool],
              should_abort: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Run one trial to its end (or, once ``should_stop()``, to a checkpoint; ``should_abort()``: at once) and
    say how it ended: ``code`` 0 (finished), 130 (stopped), 2 (a user error: ``line``), other (crashed)."""
    t0 = time.perf_counter()
    root = Path(sweep["root"])
    if should_stop():
        return _outcome(STOPPED, "not started", trial, t0, False)
    if not (root / "sweep.yaml").is_file():
        return _outcome(USER_ERROR, f"--out {root}: node {_node()} cannot see the sweep folder; put it on storage "
                                    "every node mounts at the same path", trial, t0, False)
    if trial["dataset_is_path"] and not Path(trial["dataset"]).exists():
        return _outcome(USER_ERROR, f"--dataset {trial['dataset']}: node {_node()} cannot see this path; put the "
                                    "dataset on storage every node mounts at the same path, or use a dataset id",
                        trial, t0, False)
    locks = root / "locks"
    locks.mkdir(exist_ok=True)
    # One process at a time per trial: the lock is inherited by the child, so a retry waits for a child that
    # outlived its dead worker (it stops after a checkpoint on the parent-death signal) before resuming.
    lock = os.open(locks / (hashlib.sha256(trial["run_dir"].encode()).hexdigest()[:16] + ".lock"),
                   os.O_CREAT | os.O_RDWR, 0o644)
    try:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if should_stop():
                    return _outcome(STOPPED, "not started", trial, t0, False)
                time.sleep(0.2)
        summary = Path(trial["run_dir"]) / "summary.json"
        if summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
            return _outcome(DONE, "", trial, t0, False)  # finished by an earlier attempt
        argv = trial_argv(trial, sweep)
        env = {**os.environ, **sweep.get("env", {})}
        child = start_child(trial["run_dir"], argv, env, parent_death_signal=signal.SIGINT, pass_fds=(lock,))
        signalled = 0  # SIGINTs sent: one stops after a checkpoint, a second aborts (as for `offrl train`)
        while child.proc.poll() is None:
            if (signalled == 0 and should_stop()) or (signalled == 1 and should_abort()):
                child.proc.send_signal(signal.SIGINT)
                signalled += 1
            time.sleep(0.2)
        code = child.finish()
        line = "" if code in (DONE, STOPPED) else child.error_line().removeprefix("offrl: error: ")
        return _outcome(code, line, trial, t0, "--resume" in argv)
    finally:
        os.close(lock)


class Progress:
    """Counts trials and prints one line per finished trial with an overall bar (done / running / failed)."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total, self.done, self.running, self.failed, self.stopped = total, done, 0, 0, 0
        self.errors: list[str] = []  # user errors (exit 2) said by trials
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment state
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def started(self) -> None:
        with self._lock:
            self.running += 1

    def bar(self) -> str:
        width = 20
        filled = round(width * self.done / self.total) if self.total else width
        return (f"[{'#' * filled}{'-' * (width - filled)}] {self.done}/{self.total} done · {self.running} running · "
                f"{self.failed} failed")

    def finished(self, label: str, outcome: Mapping[str, Any]) -> None:
        """A trial ended (``outcome`` from :func:`run_trial`)."""
        from offrl.runs.rundir import read_summary

        with self._lock:
            self.running = max(0, self.running - 1)
            code = int(outcome["code"])
            if code == DONE:
                self.done += 1
                summary = read_summary(outcome["run"])
                final = summary.get("final") or {}
                score = (f"final return {fmt(final.get('return_mean'))} (normalized {fmt(final.get('normalized_score'))})"
                         if final else "no evaluation")
                how = ", resumed" if outcome.get("resumed") else ""
                text = f"{label}: {score}, {summary.get('steps')} steps in {fmt(outcome['seconds'], '.0f')} s{how}"
            elif code == STOPPED:
                self.stopped += 1
                if outcome.get("line") == "not started":
                    return
                text = f"{label}: stopped after a checkpoint ({outcome['run']})"
            else:
                self.failed += 1
                if code == USER_ERROR:
                    self.errors.append(str(outcome["line"]))
                text = f"{label}: failed (exit {code}): {outcome['line']}"
            print(f"{self.bar()}  {text}", flush=True)

    def not_started(self, n: int) -> None:
        """``n`` trials that a stop kept from starting (no line each: the closing line counts them)."""
        with self._lock:
            self.stopped += max(0, n)

    def crashed(self, label: str, message: str) -> None:
        """A trial that Ray gave up on (its worker died more often than --retries allows)."""
        with self._lock:
            self.running = max(0, self.running - 1)
            self.failed += 1
            print(f"{self.bar()}  {label}: failed: {message}", flush=True)


def run_local(trials: Sequence[Mapping[str, Any]], labels: Sequence[str], sweep: Mapping[str, Any],
              progress: Progress, jobs: int, stop: threading.Event, retries: int = 0) -> None:
    """The local engine: ``jobs`` trials at a time as ``offrl train`` child processes of this machine (the
    pool of ``offrl train --seeds``); ``stop`` set (Ctrl-C) stops each after a checkpoint, a second Ctrl-C
    aborts them. A trial that crashes is retried ``retries`` times, resuming its checkpoint."""
    abort = threading.Event()

    def one(i: int) -> None:
        if stop.is_set():
            progress.finished(labels[i], _outcome(STOPPED, "not started", trials[i], time.perf_counter(), False))
            return
        progress.started()
        outcome = run_trial(trials[i], sweep, stop.is_set, abort.is_set)
        for _ in range(retries):
            if outcome["code"] in (DONE, STOPPED, USER_ERROR):
                break
            print(f"{progress.bar()}  {labels[i]}: crashed (exit {outcome['code']}: {outcome['line']}); retrying, the "
                  "run resumes from its last checkpoint", flush=True)
            outcome = run_trial(trials[i], sweep, stop.is_set, abort.is_set)
        progress.finished(labels[i], outcome)
        if outcome["code"] == USER_ERROR:  # a bad input fails every trial alike: stop the rest
            stop.set()

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, i) for i in range(len(trials))]
        interrupts = 0
        while not all(f.done() for f in futures):
            try:
                time.sleep(0.1)
            except KeyboardInterrupt:
                interrupts += 1
                stop.set()
                if interrupts == 1:
                    print("offrl: stopping: each running trial saves a checkpoint (Ctrl-C again to abort); "
                          "re-run the same command to resume", file=sys.stderr, flush=True)
                else:
                    abort.set()
        for f in futures:
            f.result()
    if abort.is_set():
        raise KeyboardInterrupt
