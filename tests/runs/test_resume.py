"""Exact resume through the real CLI: SIGKILL at a random step after a checkpoint, ``--resume``, and the
weights and metrics equal an uninterrupted run with the same seed. Also: SIGTERM stops cleanly, and a
changed config is refused unless ``--force``."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.cli import OFFRL
from helpers.train import TINY_CQL, offrl_cli

from offrl.hardware import cpu_isa, cpu_model

STEPS = 300
#: Tiny CQL, frequent rows and checkpoints, evaluation included (its RNG must not disturb training).
SETTINGS = ["--steps", str(STEPS), "--batch-size", "16", "--eval-every", "150", "--eval-episodes", "1",
            "--seed", "7", "--no-progress",
            *[a for s in [*TINY_CQL, "save_trainer_interval=50", "log_interval=10"] for a in ("--set", s)]]
TIMING = ("wall_time", "updates_per_s")


def comparable(run: Path) -> pd.DataFrame:
    df = pd.read_csv(run / "metrics.csv")
    return df.drop(columns=[c for c in df.columns if c in TIMING or c.startswith("time_")])


def weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == STEPS
    return {**{f"loss.{k}": v for k, v in state["loss_module"].items()},
            **{f"optim.{k}": v for k, v in _flat(state["optimizer"]["state"]).items()}}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, torch.Tensor):
            out[f"{prefix}{k}"] = v
    return out


def start(pendulum: str, out: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([OFFRL, "train", "--dataset", pendulum, "--out", str(out), "--name", name,
                             *SETTINGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, ckpt: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ckpt.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def last_logged_step(metrics: Path) -> int:
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return int(lines[-1].split(",")[0]) if len(lines) > 1 else 0


def test_sigkill_then_resume_equals_uninterrupted(pendulum, tmp_path):
    proc = start(pendulum, tmp_path, "killed")
    run = tmp_path / "pendulum-random" / "cql" / "killed"
    wait_for_checkpoint(proc, run / "checkpoints" / "latest.pt")
    target = random.randint(60, STEPS - 100)  # a random step after the first checkpoint (step 50)
    while last_logged_step(run / "metrics.csv") < target:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["step"]
    assert 0 < killed_at < STEPS, "the run must die mid-way for this test to mean something"
    assert json.loads((run / "summary.json").read_text())["status"] == "running"

    full = offrl_cli("train", "--dataset", pendulum, "--out", str(tmp_path), "--name", "full", *SETTINGS)
    assert full.returncode == 0, full.stderr
    run_full = tmp_path / "pendulum-random" / "cql" / "full"

    here = f"{cpu_model()} ({cpu_isa()})"
    assert json.loads((run_full / "summary.json").read_text())["machines"] == [here]
    # as if the killed process had run on another CPU: the resumed run lists both, in order
    first = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**first, "machines": ["Other CPU (avx2 fma)"]}))

    resumed = offrl_cli("train", "--resume", str(run), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS and summary["resumed"] == 1
    assert summary["machines"] == ["Other CPU (avx2 fma)", here]
    # the last evaluation's per-episode returns: the same after a kill and resume as uninterrupted
    returns = summary["final"]["episode_returns"]
    assert returns == json.loads((run_full / "summary.json").read_text())["final"]["episode_returns"]
    assert len(returns) == summary["final"]["episodes"]

    pd.testing.assert_frame_equal(comparable(run), comparable(run_full))
    a, b = weights(run), weights(run_full)
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sigterm_stops_cleanly_and_config_changes_need_force(pendulum, tmp_path):
    proc = start(pendulum, tmp_path, "t")
    run = tmp_path / "pendulum-random" / "cql" / "t"
    wait_for_checkpoint(proc, run / "checkpoints" / "latest.pt")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    summary = json.loads((run / "summary.json").read_text())
    if summary["status"] == "completed":  # the run won the race: nothing to stop
        pytest.skip("the run finished before SIGTERM arrived")
    assert proc.returncode == 130, err  # stopped by a signal: `offrl train ... && next` must not go on
    assert summary["status"] == "stopped"
    stop_line = [line for line in err.splitlines() if line.startswith("offrl: stopped by SIGTERM")]
    assert len(stop_line) == 1 and f"at step {summary['steps']}" in stop_line[0], err
    assert f"offrl train --resume {run}" in stop_line[0]
    step = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["step"]
    assert step == summary["steps"] < STEPS  # the stop wrote a checkpoint at the step it stopped
    assert pd.read_csv(run / "metrics.csv")["step"].max() <= step

    changed = offrl_cli("train", "--resume", str(run), "--set", "cql.min_q_weight=1", "--no-progress")
    assert changed.returncode == 2 and "cql.min_q_weight" in changed.stderr and "--force" in changed.stderr
    more = offrl_cli("train", "--resume", str(run), "--steps", str(STEPS + 20), "--force", "--no-progress")
    assert more.returncode == 0, more.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS + 20
    assert f"offline_steps: {STEPS + 20}" in (run / "config.yaml").read_text()
