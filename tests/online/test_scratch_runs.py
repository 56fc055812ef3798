"""Runs trained online from scratch (`offrl train --env ID --online-steps N`) through the real console script:
SIGKILL + `--resume` ends bit-identical to an uninterrupted run, `offrl eval` rebuilds the policy from the
run's config and env, and bad inputs are one line with exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import torch
from helpers.cli import OFFRL, assert_user_error

from offrl.runs import train

TIMING = ("wall_time", "updates_per_s")


def _train_cmd(out: Path, name: str, *extra: str) -> list[str]:
    return [OFFRL, "train", "--env", "CartPole-v1", "--algo", "dqn", "--online-steps", "1200",
            "--frames-per-batch", "10", "--utd", "4", "--eval-every", "0", "--no-progress", "--out", str(out),
            "--name", name, "--set", "dqn.hidden_sizes=[32]", "--set", "batch_size=32", "--set", "log_interval=20",
            "--set", "save_trainer_interval=40", "--set", "num_threads=1", *extra]


def _comparable(run: Path) -> pd.DataFrame:
    metrics = pd.read_csv(run / "metrics.csv")
    return metrics.drop(columns=[c for c in metrics if c in TIMING or c.startswith("time_")])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["loss_module"]


def test_killed_scratch_run_resumes_bit_identical_and_evaluates(tmp_path):
    out = tmp_path / "runs"
    base = out / "env__CartPole-v1" / "dqn"
    full = subprocess.Popen(_train_cmd(out, "full"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = subprocess.Popen(_train_cmd(out, "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = base / "killed" / "checkpoints" / "step_80.pt"
    deadline = time.monotonic() + 240
    while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(60) == -signal.SIGKILL  # killed mid-run (480 updates planned), not after the end
    checkpoint = torch.load(marker, weights_only=True)  # what the resume starts from: mid-run, env state in
    assert checkpoint["step"] == 80 and checkpoint["collector"]["exact"] and checkpoint["frames"] == 200
    assert full.wait(300) == 0, full.stderr.read()

    resumed = subprocess.run([OFFRL, "train", "--resume", str(base / "killed"), "--no-progress"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming in" in resumed.stderr
    summary = json.loads((base / "killed" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed"] == 1 and summary["online"]["frames"] == 1200
    pd.testing.assert_frame_equal(_comparable(base / "killed"), _comparable(base / "full"))
    a, b = _weights(base / "full"), _weights(base / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    ev = subprocess.run([OFFRL, "eval", str(base / "full"), "--episodes", "2", "--json"], capture_output=True,
                        text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr
    payload = json.loads(ev.stdout)
    assert payload["dataset"] == "env:CartPole-v1" and payload["env_id"] == "CartPole-v1"
    assert len(payload["returns"]) == 2 and all(r >= 8 for r in payload["returns"])


def test_scratch_run_bad_inputs_are_one_line(tmp_path):
    out = tmp_path / "runs"
    common = dict(online_steps=20, frames_per_batch=10, utd=1, eval_every=0, progress=False, out=out,
                  **{"dqn.hidden_sizes": [16], "batch_size": 8})
    run = train(None, "dqn", online_env="CartPole-v1", name="v1", **common).dir
    other = train(None, "dqn", online_env="CartPole-v0", name="v0", **common).dir  # same spaces
    acrobot = train(None, "dqn", online_env="Acrobot-v1", name="acro", **common).dir  # other networks

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([OFFRL, *args], capture_output=True, text=True, timeout=300)

    (tmp_path / "notarun").mkdir()
    assert_user_error(cli("train", "--resume", str(tmp_path / "notarun")), "not an offrl run folder")
    assert_user_error(cli("eval", str(tmp_path / "notarun")), "notarun")
    assert_user_error(cli("train", "--resume", str(run), "--env", "Acrobot-v1"), "trained online in CartPole-v1")

    swapped = tmp_path / "swapped"  # the CartPole-v1 run with CartPole-v0's checkpoint
    shutil.copytree(run, swapped)
    shutil.copy(other / "checkpoints" / "latest.pt", swapped / "checkpoints" / "latest.pt")
    assert_user_error(cli("train", "--resume", str(swapped), "--online-steps", "40", "--force"),
                    "collected in CartPole-v0", "CartPole-v1")
    shutil.copy(acrobot / "checkpoints" / "latest.pt", swapped / "checkpoints" / "latest.pt")
    assert_user_error(cli("eval", str(swapped), "--episodes", "1"), "does not match the networks")
    assert_user_error(cli("eval", str(run), "--env", "Pendulum-v1"), "does not match the policy's")


FAILING_ENVS = '''
import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class RaisingCartPole(CartPoleEnv):
    """CartPole whose 30th step raises (in whichever process steps it)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def step(self, action):
        self.calls += 1
        if self.calls >= 30:
            raise RuntimeError("simulator diverged")
        return super().step(action)


gym.register("RaisingCartPole-v0", entry_point=RaisingCartPole, max_episode_steps=500)
'''


def test_env_raising_in_an_async_worker_is_one_line_exit_2_and_a_checkpoint(tmp_path):
    (tmp_path / "offrl_test_failing_envs.py").write_text(FAILING_ENVS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    for mode in ("async", "sync"):
        cmd = [OFFRL, "train", "--env", "offrl_test_failing_envs:RaisingCartPole-v0", "--algo", "dqn",
               "--online-steps", "400", "--frames-per-batch", "10", "--utd", "1", "--eval-every", "0",
               "--no-progress", "--out", str(tmp_path / "runs"), "--name", mode, "--set", "dqn.hidden_sizes=[16]"]
        if mode == "async":
            cmd += ["--async-collection", "--set", "online.num_workers=2"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr + result.stdout, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("offrl: error:")]
        assert len(errors) == 1 and "RuntimeError: simulator diverged" in errors[0], result.stderr
        assert [line for line in result.stderr.splitlines() if not line.startswith("offrl: ")] == []
        run = tmp_path / "runs" / "env__offrl_test_failing_envs:RaisingCartPole-v0" / "dqn" / mode
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "stopped" and summary["stop_reason"].startswith("env error")
        state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
        assert state["step"] == summary["steps"] >= 1 and state["collector"]["exact"] is False


def test_scratch_run_config_reproduces_it(tmp_path):
    """`offrl train --config RUN/config.yaml` (no --dataset, no --env): the env comes from dataset.id env:ID."""
    out = tmp_path / "runs"
    first = train(None, "dqn", online_env="CartPole-v1", online_steps=40, frames_per_batch=10, utd=2,
                  eval_every=0, progress=False, out=out, name="first", **{"dqn.hidden_sizes": [16], "batch_size": 8,
                                                                          "log_interval": 2})
    again = train(config=first.dir / "config.yaml", name="again", out=out, progress=False)
    assert again.dir.parent == first.dir.parent and again.config.dataset.id == "env:CartPole-v1"
    pd.testing.assert_frame_equal(_comparable(again.dir), _comparable(first.dir))
    a, b = _weights(first.dir), _weights(again.dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
