"""Small real datasets for the experiment-layer tests: random-policy rollouts of real gymnasium envs,
written as D4RL-style HDF5 files with h5py (the format users bring), plus tiny-network overrides."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np

from helpers.cli import offrl_cli  # noqa: F401  (re-exported: the experiment tests run the CLI)

#: Small, fast settings for tests: tiny networks, frequent logs, no progress bar.
#: D4RL-style files name their env in metadata; dataset.env_id makes the evaluation env explicit.
TINY_CQL = ["cql.hidden_sizes=[16,16]", "cql.num_random=2", "log_interval=5", "dataset.env_id=Pendulum-v1"]
TINY_DCQL = ["discrete_cql.hidden_sizes=[16,16]", "log_interval=5", "dataset.env_id=CartPole-v1"]
TINY_DQN = ["dqn.hidden_sizes=[16,16]", "log_interval=5", "dataset.env_id=CartPole-v1"]


def write_rollouts(path: Path, env_id: str, *, episodes: int, seed: int = 0, max_steps: int | None = None) -> Path:
    """Roll out a uniformly random policy in ``env_id`` and write a D4RL-style HDF5 file."""
    env = gym.make(env_id, max_episode_steps=max_steps) if max_steps else gym.make(env_id)
    env.action_space.seed(seed)
    obs_l, act_l, rew_l, term_l, trunc_l, next_l = [], [], [], [], [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        while not done:
            action = env.action_space.sample()
            nxt, reward, terminated, truncated, _ = env.step(action)
            obs_l.append(obs)
            act_l.append(action)
            rew_l.append(reward)
            term_l.append(terminated)
            trunc_l.append(truncated)
            next_l.append(nxt)
            obs, done = nxt, terminated or truncated
    env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["observations"] = np.asarray(obs_l, np.float32)
        f["next_observations"] = np.asarray(next_l, np.float32)
        actions = np.asarray(act_l)
        f["actions"] = actions.astype(np.int64) if actions.dtype.kind in "iu" else actions.astype(np.float32)
        f["rewards"] = np.asarray(rew_l, np.float32)
        f["terminals"] = np.asarray(term_l, bool)
        f["timeouts"] = np.asarray(trunc_l, bool)
        f.attrs["env_id"] = env_id
    return path


def pendulum_file(root: Path) -> Path:
    """10 random Pendulum-v1 episodes of 50 steps (continuous actions, time-limit ends)."""
    return write_rollouts(root / "pendulum-random.hdf5", "Pendulum-v1", episodes=10, max_steps=50)


def cartpole_file(root: Path) -> Path:
    """40 random CartPole-v1 episodes (discrete actions, terminations)."""
    return write_rollouts(root / "cartpole-random.hdf5", "CartPole-v1", episodes=40)

