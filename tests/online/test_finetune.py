"""Fine-tuning and online training through the trainers' collector path: real envs, real torchrl
collectors (sync and async), checkpoints and resume, env failures."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers.engine import ListLogger
from torchrl.collectors import Collector
from torchrl.envs import GymWrapper

from offrl.algos import cql, discrete_cql, dqn
from offrl.evaluation import Evaluator
from offrl.online import GuardedCollector
from offrl.online.setup import OnlineConfig, OnlineMetricsLogger, build_online
from offrl.trainers import CQLTrainer, DQNTrainer

DCQL = discrete_cql.DiscreteCQLConfig(hidden_sizes=(64, 64), lr=1e-3, target_update_interval=100)
SMALL_CQL = cql.CQLConfig(hidden_sizes=(32, 32), num_random=2, actor_lr=1e-3, critic_lr=1e-3)


def _trainer(cls, parts, online, *, offline_steps, ups, log, batch_size=128, evaluator=None, eval_interval=0,
             save=None, **kwargs):
    trainer = cls(collector=online.collector, total_frames=online.total_frames, optim_steps_per_batch=ups,
                  loss_module=parts.loss_module, optimizer=parts.optimizer,
                  target_net_updater=parts.target_net_updater, replay_buffer=online.replay_buffer,
                  logger=OnlineMetricsLogger(log, online.replay_buffer), log_interval=50,
                  offline_steps=offline_steps, evaluator=evaluator, eval_interval=eval_interval,
                  policy=parts.policy, seed=0, progress_bar=False, save_trainer_file=save, **kwargs)
    online.bind(trainer)
    return trainer


def test_finetuning_from_bundled_cartpole_keeps_its_score(cartpole_medium):
    parts = discrete_cql.build_from_dataset(DCQL, cartpole_medium, seed=0)
    cfg = OnlineConfig(steps=1000, frames_per_batch=100, start_fraction=0.75, final_fraction=0.25,
                       anneal_frames=1000)
    online = build_online(cfg, parts=parts, dataset=cartpole_medium, batch_size=128, seed=0,
                          offline_buffer=cartpole_medium.replay_buffer(128, seed=0))
    log = ListLogger()
    evaluator = Evaluator(cartpole_medium, episodes=5, seed=100)
    trainer = _trainer(CQLTrainer, parts, online, offline_steps=600, ups=50, log=log, evaluator=evaluator,
                       eval_interval=600)
    trainer.train()
    assert trainer.step == 600 + 10 * 50 and trainer.frames == 1000
    phases = [p for _, p, _ in log.rows]
    assert phases == ["offline"] * 12 + ["online"] * 10
    before = next(m for s, _, m in log.rows if s == 600)["eval_normalized_score"]
    after = log.rows[-1][2]
    behaviour = cartpole_medium.normalized_score(cartpole_medium.info.to_dict()["episode_return"]["mean"])
    assert before > behaviour + 20  # offline training worked, so there is something to lose
    assert after["eval_normalized_score"] >= before - 15  # bounded dip (or better)
    # the online metrics: fraction on schedule, online episodes scored, regret accumulated
    assert after["offline_fraction"] == pytest.approx(0.25) and after["frames"] == 1000
    assert after["online_episodes"] >= 1 and math.isfinite(after["online_regret"])
    fractions = [m["offline_fraction"] for _, p, m in log.rows if p == "online"]
    assert fractions == pytest.approx([0.75 - 0.5 * f / 1000 for f in range(100, 1001, 100)])


def test_async_collection_runs(pendulum_medium):
    parts = cql.build_from_dataset(SMALL_CQL, pendulum_medium, seed=0)
    online = build_online(OnlineConfig(steps=200, frames_per_batch=50), parts=parts, dataset=pendulum_medium,
                          batch_size=32, seed=0, async_collection=True)
    assert type(online.collector.collector).__name__ == "MultiAsyncCollector"
    log = ListLogger()
    trainer = _trainer(CQLTrainer, parts, online, offline_steps=5, ups=2, log=log, batch_size=32)
    before = {k: v.clone() for k, v in parts.loss_module.actor_network_params.items(True, True)}
    trainer.train()
    assert trainer.frames >= 200 and trainer.step == 5 + 4 * 2
    assert online.replay_buffer.online_size == trainer.frames  # every collected step reached the buffer
    after = dict(parts.loss_module.actor_network_params.items(True, True))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def _dqn_online(cartpole_medium, save, log):
    parts = dqn.build_from_dataset(dqn.DQNConfig(hidden_sizes=(32, 32), annealing_num_steps=400), cartpole_medium,
                                   seed=0)
    cfg = OnlineConfig(steps=400, frames_per_batch=50, start_fraction=1.0, final_fraction=0.0, anneal_frames=400,
                       eps_init=0.5, eps_end=0.1, eps_anneal_frames=400)
    online = build_online(cfg, parts=parts, dataset=cartpole_medium, batch_size=32, seed=0,
                          offline_buffer=cartpole_medium.replay_buffer(32, seed=0))
    trainer = _trainer(DQNTrainer, parts, online, offline_steps=20, ups=5, log=log, batch_size=32, save=save,
                       greedy_module=parts.greedy_module, save_trainer_interval=10_000)
    return trainer, online, parts


def test_online_resume_restores_buffer_schedule_and_epsilon(cartpole_medium, tmp_path):
    ckpt = tmp_path / "latest.pt"
    log = ListLogger()
    trainer, online, parts = _dqn_online(cartpole_medium, ckpt, log)
    online.collector.hooks.append(lambda batch: online.collector.batches == 3 and trainer.request_stop("test"))
    trainer.train()
    assert trainer.stopped and trainer.frames == 150 and ckpt.exists()
    saved_rows = online.replay_buffer._online_buffer[:].to_tensordict()
    eps, frac = float(parts.greedy_module.eps), online.replay_buffer.offline_fraction
    assert eps == pytest.approx(0.5 - 0.4 * 150 / 400, abs=1e-4) and frac == pytest.approx(1 - 150 / 400)

    log2 = ListLogger()
    resumed, online2, parts2 = _dqn_online(cartpole_medium, ckpt, log2)
    resumed.load_from_file(ckpt)
    assert resumed.step == trainer.step and resumed.frames == 150
    assert float(parts2.greedy_module.eps) == pytest.approx(eps)
    assert online2.replay_buffer.offline_fraction == pytest.approx(frac)
    restored = online2.replay_buffer._online_buffer[:]
    assert torch.equal(restored["observation"], saved_rows["observation"])
    resumed.train()
    assert resumed.frames == 400 and resumed.step == 20 + 8 * 5 and not resumed.stopped
    assert online2.replay_buffer.online_size == 400
    assert online2.replay_buffer.offline_fraction == 0.0
    assert float(parts2.greedy_module.eps) == pytest.approx(0.1, abs=1e-4)
    assert all(p == "online" for _, p, _ in log2.rows)


class _Broken(gym.Wrapper):
    """CartPole that fails on its 30th step: by raising, or by returning NaN observations."""

    def __init__(self, mode: str) -> None:
        super().__init__(gym.make("CartPole-v1"))
        self.mode, self.calls = mode, 0

    def step(self, action):
        self.calls += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.calls >= 30:
            if self.mode == "raise":
                raise RuntimeError("simulator diverged")
            obs = np.full_like(obs, np.nan)
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_env_errors_stop_with_a_checkpoint_and_a_message(cartpole_medium, tmp_path, mode):
    log = ListLogger()
    trainer, online, parts = _dqn_online(cartpole_medium, tmp_path / "latest.pt", log)
    env = GymWrapper(_Broken(mode), categorical_action_encoding=True)
    online.collector.collector.shutdown()
    online.collector.collector = Collector(env, parts.exploration_policy, frames_per_batch=10, total_frames=-1,
                                           auto_register_policy_transforms=False)
    trainer.train()  # returns: no hang, no traceback
    assert trainer.stopped and "env error during online collection after 2 batches" in trainer.stop_reason
    assert ("simulator diverged" if mode == "raise" else "non-finite") in trainer.stop_reason
    assert (tmp_path / "latest.pt").exists() and trainer.frames == 20
    assert online.replay_buffer.online_size == 20  # the bad batch never reached the buffer


def test_guarded_collector_passes_attributes_through(cartpole_medium):
    parts = dqn.build_from_dataset(dqn.DQNConfig(hidden_sizes=(8,)), cartpole_medium, seed=0)
    env = GymWrapper(gym.make("CartPole-v1"), categorical_action_encoding=True)
    guard = GuardedCollector(Collector(env, parts.exploration_policy, frames_per_batch=7, total_frames=14,
                                       auto_register_policy_transforms=False))
    assert guard.frames_per_batch == 7 and [b.numel() for b in guard] == [7, 7] and guard.error is None


def test_online_cql_from_scratch_on_pendulum_collects_and_trains():
    """No dataset: networks sized from the env, every batch from the online buffer, random first frames."""
    from offrl.online.setup import build_parts_for_env

    parts = build_parts_for_env("cql", SMALL_CQL, "Pendulum-v1", seed=0)
    cfg = OnlineConfig(steps=300, env_id="Pendulum-v1", frames_per_batch=50, init_random_frames=100)
    online = build_online(cfg, parts=parts, batch_size=32, seed=0)
    log = ListLogger()
    trainer = _trainer(CQLTrainer, parts, online, offline_steps=0, ups=3, log=log, batch_size=32)
    before = {k: v.clone() for k, v in parts.loss_module.qvalue_network_params.items(True, True)}
    trainer.train()
    assert trainer.frames == 300 and trainer.step == 6 * 3 and online.replay_buffer.offline_fraction == 0.0
    assert online.replay_buffer.online_size == 300 and {p for _, p, _ in log.rows} == {"online"}
    assert log.rows[-1][2]["online_episodes"] == 1 and "online_return_mean" in log.rows[-1][2]
    after = dict(parts.loss_module.qvalue_network_params.items(True, True))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(Exception, match="continuous actions"):
        build_parts_for_env("cql", SMALL_CQL, "CartPole-v1")


def test_async_env_failure_stops_without_a_hang():
    """A worker process whose env returns NaN: the guard stops at once and shuts the workers down."""
    from gymnasium.envs.registration import EnvSpec

    from offrl.online import EnvFactory, make_collector

    spec = EnvSpec(id="PendulumNaN-v0", entry_point="gymnasium.envs.classic_control.pendulum:PendulumEnv",
                   kwargs={"g": float("nan")}, max_episode_steps=200)  # NaN gravity: NaN after one step
    factory = EnvFactory(spec, seed=0)
    parts = cql.build(SMALL_CQL, observation_shape=(3,), action_spec=factory().action_spec, seed=0)
    errors = []
    guard = GuardedCollector(make_collector(factory, parts.exploration_policy, frames_per_batch=20,
                                            async_collection=True), on_error=errors.append)
    assert list(guard) == [] and len(errors) == 1 and "non-finite values in 'observation'" in errors[0]
