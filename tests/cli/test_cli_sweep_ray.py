"""``offrl sweep`` on a real local Ray cluster, started once for this module (``ray.init`` with a temp dir,
2 CPUs); each sweep is the real console script connecting to it with ``--address``.

One scenario, shared by the tests (Ray and each trial's process start are the expensive parts): a 2 datasets ×
2 seeds sweep of short runs on the bundled CartPole data; the Ray worker of one trial is SIGKILLed
mid-trial (Tune retries it; the run resumes from its checkpoint and ends identical to ``offrl train --seed S``);
then Ctrl-C while the retried trial trains (it, and every other running trial, stops after a checkpoint, exit
130); the same command again (finished trials skipped, stopped ones resumed, then the report); and once more
(no work at all)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers.cli import OFFRL, offrl_cli

ray = pytest.importorskip("ray", reason="the Ray engine needs offrl[ray]")
psutil = pytest.importorskip("psutil")

CARTPOLE, MIXED = "offrl/cartpole/medium-v0", "offrl/cartpole/mixed-v0"
# Tiny networks, short runs, a checkpoint every 50 steps (so a killed trial has one to resume from).
COMMON = ["--steps", "300", "--eval-every", "300", "--eval-episodes", "1", "--set", "log_interval=50",
          "--set", "save_trainer_interval=50"]
DCQL = ["--set", "discrete_cql.hidden_sizes=[16,16]"]
SETTINGS = [*COMMON, *DCQL]
TIMING = ("updates_per_s", "time", "seconds")


@pytest.fixture(scope="module")
def ray_address():
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    for attempt in (1, 2):  # a heavily loaded machine can miss Ray's fixed 30 s raylet start-up wait once
        try:
            ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False, configure_logging=False)
            break
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(err):
                raise
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _sweep_args(out, cache, address, *extra):
    return ["sweep", *extra, *SETTINGS, "--out", str(out), "--cache-dir", cache, "--address", address]


def _metrics(run):
    m = pd.read_csv(Path(run) / "metrics.csv")
    return m.drop(columns=[c for c in m.columns if any(t in c for t in TIMING)])


def _summary(run):
    return json.loads((Path(run) / "summary.json").read_text())


def _run(out, dataset, algo, seed):
    return Path(out) / "runs" / dataset.replace("/", "__") / algo / f"base-seed{seed}"


def _files(root):
    return {p: p.stat().st_mtime_ns for p in Path(root).rglob("*") if p.is_file()}


def _wait(proc, condition, what):
    """Poll ``condition`` until it returns something truthy (returned); fail if the sweep exits first."""
    deadline = time.time() + 240
    while not (found := condition()):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"waiting for {what}: sweep exited {proc.returncode}\n{out}\n{err}")
        time.sleep(0.05)
    return found


def _trial_process(run, resume=False):
    """The ``offrl train`` process of the trial whose run folder is ``run`` (with ``resume``: its
    ``offrl train --resume`` process, the retry's), or None."""
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "train" not in cmd:
            continue
        if resume and "--resume" in cmd and str(run) in cmd:
            return proc
        if not resume and "--name" in cmd and cmd[cmd.index("--name") + 1] == run.name and str(run.parents[2]) in cmd:
            return proc
    return None


def _checkpointed_since_resume(run):
    """True once the retry of ``run`` (``--resume``) is training and has saved a checkpoint of its own."""
    summary, latest = run / "summary.json", run / "checkpoints" / "latest.pt"
    try:
        s = _summary(run)
        return s.get("status") == "running" and s.get("resumed") and latest.stat().st_mtime_ns > summary.stat().st_mtime_ns
    except (OSError, ValueError):
        return False


def _all_threads_stopped(child):
    """True once every thread of ``child`` is in the stopped state (``T`` in /proc/PID/task/TID/stat)."""
    try:
        return all((t / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
                   for t in Path(f"/proc/{child.pid}/task").iterdir())
    except FileNotFoundError:  # a thread that just ended
        return False


def _freeze(child, run):
    """SIGSTOP ``child`` (the trial's ``offrl train``), wait until it has stopped, and check that it cannot
    have finished: the last metrics row (flushed every log_interval = 50 steps) is at most 200, so the frozen
    run is at most at step 250 of 300. A signal sent to it from now on stays pending (``_sigint_pending``)
    and stops it after a checkpoint as soon as it runs again. (SIGSTOP takes effect asynchronously: a
    SIGINT sent before every thread has stopped is handled at once, and is never seen pending.)"""
    child.suspend()
    deadline = time.time() + 120
    while not _all_threads_stopped(child):
        assert time.time() < deadline, f"{run.name}: offrl train did not stop on SIGSTOP"
        time.sleep(0.01)
    metrics = run / "metrics.csv"
    rows = metrics.read_text().splitlines()[1:] if metrics.exists() else []
    last = int(float(rows[-1].split(",", 1)[0])) if rows else 0
    assert last <= 200, f"{run.name} was frozen only at step {last}: too late to be interrupted mid-run"


def _sigint_pending(child):
    """True once a SIGINT waits to be delivered to ``child`` (a stopped process keeps it pending)."""
    bit = 1 << (signal.SIGINT - 1)
    status = Path(f"/proc/{child.pid}/status").read_text().splitlines()
    return any(int(line.split()[1], 16) & bit for line in status if line.startswith(("SigPnd:", "ShdPnd:")))


@pytest.fixture(scope="module")
def scenario(ray_address, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    args = _sweep_args(out, cache, ray_address, "--dataset", CARTPOLE, "--dataset", MIXED, "--seeds", "0,1")
    # The first run one trial at a time (Tune creates the next trial only when one ends): seed 0 finishes, seed
    # 1 is killed, retried and stopped by Ctrl-C, and the mixed-data trials are never started. The re-runs use
    # both CPUs (--max-concurrent is how a sweep runs, not which sweep it is).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([OFFRL, *args, "--max-concurrent", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    # The reference for the killed trial, `offrl train --seed 1`, on the CPU the first sweep leaves free.
    ref_out = tmp_path_factory.mktemp("ref")
    ref = subprocess.Popen([OFFRL, "train", "--dataset", CARTPOLE, "--seed", "1", *SETTINGS, "--set", "num_threads=1",
                            "--no-progress", "--cache-dir", cache, "--out", str(ref_out), "--name", "ref"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Every step below waits on a state the processes show (a process, a file, a pending signal), never on
    # time: a trial on a loaded machine can finish its 300 steps in the time a sleep would take. The trials
    # that matter are frozen (SIGSTOP) while a signal reaches them, so they cannot run to the end first.
    killed = _run(out, CARTPOLE, "discrete-cql", 1)
    child = _wait(proc, lambda: _trial_process(killed), "the trial's offrl train process")
    _wait(proc, lambda: (killed / "checkpoints" / "latest.pt").exists(), "the first checkpoint")
    _freeze(child, killed)
    worker = child.parent()
    worker_cmd = " ".join(worker.cmdline())
    worker.kill()  # SIGKILL: the trial's Ray worker dies mid-trial; its child gets SIGINT (parent-death signal)
    _wait(proc, lambda: _sigint_pending(child), "the parent-death SIGINT of the killed worker's child")
    child.resume()
    # Ctrl-C while the retried trial trains: freeze its `offrl train --resume` past a checkpoint of its own,
    # Ctrl-C the sweep, and let it run again once the sweep has passed the SIGINT on. (Sending SIGINT as soon
    # as some trial had a checkpoint, unfrozen, was flaky: that trial could finish before the sweep's SIGINT
    # reached it, and the killed trial's retry, not started yet, stopped without a line.)
    retry = _wait(proc, lambda: _trial_process(killed, resume=True), "the retry's offrl train --resume process")
    _wait(proc, lambda: _checkpointed_since_resume(killed), "a checkpoint of the retried trial")
    _freeze(retry, killed)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _wait(proc, lambda: (out / "STOP").exists() and _sigint_pending(retry), "the sweep's SIGINT to the retried trial")
    retry.resume()
    first = SimpleNamespace(returncode=None, stdout="", stderr="")
    first.stdout, first.stderr = proc.communicate(timeout=300)
    first.returncode = proc.returncode
    _, ref_err = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_err
    after_stop = {run: _summary(run) for run in out.glob("runs/*/*/*") if (run / "summary.json").exists()}
    finished = {p: t for run, s in after_stop.items() if s["status"] == "completed" for p, t in _files(run).items()}
    second = offrl_cli(*args, timeout=600)
    finished_after = {p: p.stat().st_mtime_ns for p in finished}
    before_third = _files(out / "runs")
    third = offrl_cli(*args, timeout=600)
    return SimpleNamespace(out=out, first=first, second=second, third=third, killed=killed, worker_cmd=worker_cmd,
                           ref=ref_out / CARTPOLE.replace("/", "__") / "discrete-cql" / "ref", after_stop=after_stop, finished=finished, finished_after=finished_after,
                           before_third=before_third, after_third=_files(out / "runs"))


def test_a_killed_worker_is_retried_from_its_checkpoint_and_ends_as_offrl_train(scenario):
    assert "ray" in scenario.worker_cmd.lower(), scenario.worker_cmd
    label = f"{CARTPOLE} discrete-cql base seed 1"
    assert f"{label}: worker died" in scenario.first.stdout, scenario.first.stdout
    assert "retrying, the run resumes from its last checkpoint" in scenario.first.stdout
    summary = _summary(scenario.killed)
    # resumed twice: after its worker died, and after Ctrl-C stopped the retry
    assert summary["status"] == "completed" and summary["steps"] == 300 and summary["resumed"] == 2, summary
    pd.testing.assert_frame_equal(_metrics(scenario.killed), _metrics(scenario.ref))
    assert summary["final"] == _summary(scenario.ref)["final"]


def test_ctrl_c_stops_the_running_trial_after_a_checkpoint_and_starts_no_other(scenario):
    first = scenario.first
    assert first.returncode == 130, first.stderr
    assert "stopping: each running trial saves a checkpoint" in first.stderr and "report:" not in first.stdout
    assert "Traceback" not in first.stderr + first.stdout
    statuses = {str(run.relative_to(scenario.out)): s["status"] for run, s in scenario.after_stop.items()}
    assert statuses == {str(_run(scenario.out, CARTPOLE, "discrete-cql", 0).relative_to(scenario.out)): "completed",
                        str(scenario.killed.relative_to(scenario.out)): "stopped"}, statuses  # mixed: not started
    # The retried trial was training when Ctrl-C came: it stopped after a checkpoint and says so.
    killed = scenario.after_stop[scenario.killed]
    assert killed["status"] == "stopped" and killed["resumed"] == 1 and killed["stop_reason"] == "SIGINT", killed
    assert 0 < killed["steps"] < 300 and (scenario.killed / "checkpoints" / "latest.pt").exists()
    label = f"{CARTPOLE} discrete-cql base seed 1"
    assert f"{label}: stopped after a checkpoint ({scenario.killed})" in first.stdout, first.stdout
    # The trials never started count as stopped too: exit 130 and no report, not a report of a partial sweep.
    assert "1/4 done · 0 running · 0 failed  3 stopped" in first.stdout, first.stdout
    assert "3 trial(s) stopped after a checkpoint or not started" in first.stderr, first.stderr


def test_running_the_sweep_again_resumes_stopped_trials_and_skips_finished_ones(scenario):
    second = scenario.second
    assert second.returncode == 0, second.stderr
    assert "1 finished (skipped), 1 to resume, 2 new" in second.stdout
    assert "1 CPU(s) per trial\n" in second.stdout and "at most 1 at a time" in scenario.first.stdout
    assert scenario.finished and scenario.finished_after == scenario.finished  # a finished trial is not touched again
    for run, summary in scenario.after_stop.items():
        if summary["status"] == "stopped":
            assert _summary(run)["resumed"] == summary["resumed"] + 1


def test_every_trial_is_a_complete_run_folder_and_the_sweep_is_reported(scenario):
    out, second = scenario.out, scenario.second
    for dataset in (CARTPOLE, MIXED):
        for seed in (0, 1):
            run = _run(out, dataset, "discrete-cql", seed)
            summary = _summary(run)
            assert summary["status"] == "completed" and summary["steps"] == 300 and summary["seed"] == seed
            assert (run / "checkpoints" / "latest.pt").exists() and (run / "report.html").exists()
        assert f"chosen config, {dataset}: discrete-cql: last " in second.stdout
    html = (out / "report" / "index.html").read_text()
    assert "id='chosen'" in html and "Selection on the test set" in html and html.count("base-seed") == 4
    assert "4/4 done · 0 running · 0 failed" in second.stdout
    assert f"report: {out / 'report' / 'index.html'}" in second.stdout


def test_running_a_finished_sweep_again_does_no_work(scenario):
    third = scenario.third
    assert third.returncode == 0, third.stderr
    assert "4 finished (skipped), 0 to resume, 0 new" in third.stdout
    assert "steps in" not in third.stdout and "running on" not in third.stdout  # no trial ran, Ray not even asked
    assert scenario.after_third == scenario.before_third
