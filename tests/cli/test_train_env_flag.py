"""``offrl train --dataset FILE --env ID``: the env a file does not name is given the way the error says."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
from helpers.cli import offrl_cli


def _cartpole_without_env_name(path: Path) -> Path:
    """A D4RL-style CartPole file of random episodes that names no env (as a user's own export)."""
    env = gym.make("CartPole-v1")
    obs_l, act_l, rew_l, term_l = [], [], [], []
    for ep in range(30):
        obs, _ = env.reset(seed=ep)
        done = False
        while not done:
            action = int(env.action_space.sample())
            nxt, reward, terminated, truncated, _ = env.step(action)
            obs_l.append(obs)
            act_l.append(action)
            rew_l.append(reward)
            term_l.append(terminated)
            obs, done = nxt, terminated or truncated
    env.close()
    with h5py.File(path, "w") as f:
        f["observations"] = np.asarray(obs_l, np.float32)
        f["actions"] = np.asarray(act_l, np.int64)
        f["rewards"] = np.asarray(rew_l, np.float32)
        f["terminals"] = np.asarray(term_l, bool)
    return path


def test_env_flag_sets_the_evaluation_env_of_a_file_that_names_none(tmp_path):
    data = _cartpole_without_env_name(tmp_path / "replay.h5")
    common = ["train", "--dataset", str(data), "--algo", "dqn", "--steps", "20", "--eval-every", "10",
              "--eval-episodes", "2", "--no-progress", "--out", str(tmp_path / "runs"),
              "--set", "dqn.hidden_sizes=[16]"]
    missing = offrl_cli(*common, "--name", "a")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "--env" in lines[0], missing.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))

    ok = offrl_cli(*common, "--name", "b", "--env", "CartPole-v1")
    assert ok.returncode == 0, ok.stderr
    run = next((tmp_path / "runs").rglob("b"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["final"] is not None and summary["final"]["step"] == 20  # evaluated in CartPole-v1
    assert "env_id: CartPole-v1" in (run / "config.yaml").read_text()
