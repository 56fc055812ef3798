"""Exact online resume with the synchronous collector: the env's full state, the collector's carried
tensordict and counters, the open episodes, epsilon and the online buffer are checkpointed, so a run
stopped at step k and resumed ends bit-identical (weights and metrics rows) to one that never stopped."""

from __future__ import annotations

import io
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers.engine import ListLogger, stop_after

from offrl.algos import cql, dqn
from offrl.errors import UserError
from offrl.online.envstate import gym_env_state, load_gym_env_state
from offrl.online.setup import OnlineConfig, OnlineMetricsLogger, build_online, build_parts_for_env
from offrl.runs.assemble import seed_everything
from offrl.trainers import CQLTrainer, DQNTrainer

ENVS = ["Pendulum-v1", "CartPole-v1", "Acrobot-v1"]
try:  # MuJoCo's state goes through mj_getState plus the model-sized MjData arrays
    import mujoco  # noqa: F401

    ENVS += ["Hopper-v5", "Ant-v5"]
except ImportError:  # pragma: no cover - the mujoco extra is optional
    pass


def _weights_only_copy(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("env_id", ENVS)
def test_env_state_round_trip_continues_bit_for_bit(env_id):
    """Mid-episode snapshot -> a fresh env seeded differently -> the same observations, rewards and resets
    (the numpy generator included) for the next 200 steps."""
    env = gym.make(env_id)
    env.reset(seed=3)
    env.action_space.seed(1)
    actions = [env.action_space.sample() for _ in range(260)]
    for a in actions[:60]:
        if any(env.step(a)[2:4]):
            env.reset()
    state = _weights_only_copy(gym_env_state(env))  # what a checkpoint holds

    def roll(e):
        out = []
        for a in actions[60:]:
            obs, reward, terminated, truncated, _ = e.step(a)
            out.append((obs.copy(), reward, terminated, truncated))
            if terminated or truncated:
                out.append((e.reset()[0].copy(),))  # the reset draws from the restored generator
        return out

    expected = roll(env)
    fresh = gym.make(env_id)
    fresh.reset(seed=99)
    assert not np.array_equal(fresh.unwrapped.np_random.random(3), env.unwrapped.np_random.random(3))
    fresh = gym.make(env_id)
    fresh.reset(seed=99)
    load_gym_env_state(fresh, state)
    got = roll(fresh)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


def test_env_state_refuses_another_env():
    state = gym_env_state(gym.make("CartPole-v1"))
    with pytest.raises(UserError, match="collected in CartPole-v1, this run's env is Pendulum-v1"):
        load_gym_env_state(gym.make("Pendulum-v1"), state)


def _online_trainer(algo: str, save: Path, *, stop_at: int | None = None):
    """A from-scratch online run (CQL on Pendulum / DQN on CartPole): 600 frames, 50 per batch, 4 updates per
    batch, a row every 3 steps (rows fall mid-batch), random first frames for CQL."""
    seed_everything(0)
    if algo == "cql":
        parts = build_parts_for_env("cql", cql.CQLConfig(hidden_sizes=(32, 32), num_random=2), "Pendulum-v1")
        cfg = OnlineConfig(steps=600, env_id="Pendulum-v1", frames_per_batch=50, init_random_frames=100)
        cls, extra = CQLTrainer, {}
    else:
        parts = build_parts_for_env("dqn", dqn.DQNConfig(hidden_sizes=(32, 32), annealing_num_steps=400),
                                    "CartPole-v1")
        cfg = OnlineConfig(steps=600, env_id="CartPole-v1", frames_per_batch=50)
        cls, extra = DQNTrainer, {"greedy_module": parts.greedy_module}
    online = build_online(cfg, parts=parts, batch_size=32, seed=0)
    log = ListLogger()
    trainer = cls(collector=online.collector, total_frames=online.total_frames, optim_steps_per_batch=4,
                  loss_module=parts.loss_module, optimizer=parts.optimizer,
                  target_net_updater=parts.target_net_updater, replay_buffer=online.replay_buffer,
                  logger=OnlineMetricsLogger(log, online.replay_buffer), log_interval=3, offline_steps=0,
                  policy=parts.policy, seed=0, progress_bar=False, save_trainer_file=save, **extra)
    online.bind(trainer)
    if stop_at is not None:  # in the middle of a batch's updates when online
        stop_after(trainer, stop_at)
    return trainer, log, parts, online


def _rows(log: ListLogger):
    """Rows without timings, NaN made comparable (no references: online_normalized_score is NaN)."""
    return [(s, p, {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()})
            for s, p, m in log.comparable()]


@pytest.mark.parametrize("algo", ["cql", "dqn"])
def test_sync_online_resume_is_bit_identical(algo, tmp_path):
    full, full_log, full_parts, _ = _online_trainer(algo, tmp_path / "full.pt")
    full.train()
    assert full.frames == 600 and full.step == 12 * 4

    first, first_log, _, first_online = _online_trainer(algo, tmp_path / "latest.pt", stop_at=22)
    first.train()
    assert first.stopped and first.step == 22 and first.frames == 300  # stopped mid-episode, mid-batch
    assert first_online.transitions._open  # an episode was in progress
    state = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert state["collector"]["exact"] and state["collector"]["env"]["id"] in ("Pendulum-v1", "CartPole-v1")

    resumed, resumed_log, resumed_parts, _ = _online_trainer(algo, tmp_path / "latest.pt")
    resumed.load_from_file(tmp_path / "latest.pt")
    resumed.train()
    assert resumed.step == full.step and resumed.frames == full.frames
    expected, got = full_parts.loss_module.state_dict(), resumed_parts.loss_module.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert _rows(first_log) + _rows(resumed_log) == _rows(full_log)
    if algo == "dqn":
        assert float(resumed_parts.greedy_module.eps) == float(full_parts.greedy_module.eps)
        assert "epsilon" in full_log.rows[-1][2]


def test_resume_without_the_env_state_is_not_identical(tmp_path):
    """The control: the same resume with the env's state withheld (what the async collector can offer)
    starts new episodes, and the weights come out different."""
    full, _, full_parts, _ = _online_trainer("cql", tmp_path / "full.pt")
    full.train()
    first, _, _, _ = _online_trainer("cql", tmp_path / "latest.pt", stop_at=22)
    first.train()
    state = torch.load(tmp_path / "latest.pt", weights_only=True)
    state["collector"]["exact"] = False
    resumed, _, resumed_parts, online = _online_trainer("cql", tmp_path / "latest.pt")
    resumed.load_state_dict(state)
    assert online.transitions._open == {}  # its open episode can never end: dropped
    resumed.train()
    assert resumed.step == full.step
    expected, got = full_parts.loss_module.state_dict(), resumed_parts.loss_module.state_dict()
    assert not all(torch.equal(expected[k], got[k]) for k in expected)


def test_exact_resume_through_the_memmap_checkpoint_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_BACKEND", "memmap")
    full, full_log, full_parts, _ = _online_trainer("dqn", tmp_path / "full.pt")
    full.train()
    first, first_log, _, _ = _online_trainer("dqn", tmp_path / "latest.pt", stop_at=9)
    first.train()
    assert (tmp_path / "latest.pt").is_dir()
    resumed, resumed_log, resumed_parts, _ = _online_trainer("dqn", tmp_path / "latest.pt")
    resumed.load_from_file(tmp_path / "latest.pt")
    resumed.train()
    expected, got = full_parts.loss_module.state_dict(), resumed_parts.loss_module.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert _rows(first_log) + _rows(resumed_log) == _rows(full_log)


def test_open_episodes_survive_a_checkpoint_with_their_held_rows():
    """Cal-QL holds an episode's rows until it ends: a checkpoint mid-episode keeps them, and the resumed
    adapter emits the same whole episode (same ids, steps, Monte-Carlo returns) as one that never stopped."""
    from tensordict import TensorDict

    from offrl.online.transitions import OnlineTransitions

    def batch(start: int, n: int, done_at: int | None) -> TensorDict:
        done = torch.zeros(n, 1, dtype=torch.bool)
        if done_at is not None:
            done[done_at] = True
        obs = torch.arange(start, start + n, dtype=torch.float32).unsqueeze(-1)
        return TensorDict({"observation": obs, "action": torch.zeros(n, 1),
                           "collector": {"traj_ids": torch.zeros(n, dtype=torch.int64)},
                           "next": {"observation": obs + 1, "reward": -obs / 10, "done": done,
                                    "terminated": done.clone(), "truncated": torch.zeros(n, 1, dtype=torch.bool)}},
                          [n])

    straight = OnlineTransitions(0.9, hold_episodes=True, episode_offset=7, ref=(-10.0, 0.0))
    assert straight.push(batch(0, 5, None)) is None
    expected = straight.push(batch(5, 5, 4))

    first = OnlineTransitions(0.9, hold_episodes=True, episode_offset=7, ref=(-10.0, 0.0))
    assert first.push(batch(0, 5, None)) is None
    state = _weights_only_copy(first.state_dict())
    resumed = OnlineTransitions(0.9, hold_episodes=True, episode_offset=7, ref=(-10.0, 0.0))
    resumed.load_state_dict(state)
    got = resumed.push(batch(5, 5, 4))
    assert got is not None and got.shape == expected.shape == (10,)
    for key in ("episode", "step", "mc_return", "observation", ("next", "reward")):
        assert torch.equal(got[key], expected[key]), key
    assert resumed.episodes == straight.episodes == 1 and resumed.metrics() == straight.metrics()
