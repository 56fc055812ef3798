"""The collector path: collect frames_per_batch env steps, extend the buffer, anneal epsilon, train."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers.engine import SMALL_CQL, SMALL_DQN, ListLogger
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import GymEnv

from offrl.algos import cql, dqn
from offrl.errors import UserError
from offrl.trainers import CQLTrainer, DQNTrainer


def _cartpole_dqn(seed=0, cfg=SMALL_DQN):
    env = GymEnv("CartPole-v1", categorical_action_encoding=True)
    env.set_seed(seed)
    parts = dqn.build(cfg, observation_shape=(4,), action_spec=env.action_spec, seed=seed)
    return env, parts


def test_dqn_collects_trains_and_anneals_epsilon():
    env, parts = _cartpole_dqn(cfg=dataclasses.replace(SMALL_DQN, annealing_num_steps=1000))
    collector = Collector(env, parts.exploration_policy, frames_per_batch=20, total_frames=-1, auto_register_policy_transforms=False)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(1000), batch_size=16)
    log = ListLogger()
    trainer = DQNTrainer(collector=collector, total_frames=100, frame_skip=2, optim_steps_per_batch=2,
                         loss_module=parts.loss_module, optimizer=parts.optimizer,
                         target_net_updater=parts.target_net_updater, greedy_module=parts.greedy_module,
                         replay_buffer=rb, logger=log, log_interval=2, seed=0, progress_bar=False)
    assert trainer.planned_steps() == math.ceil(100 / (20 * 2)) * 2
    before = {k: v.clone() for k, v in parts.loss_module.state_dict().items()}
    trainer.train()
    assert trainer.frames == 120 and trainer.step == 6  # 3 batches of 20 env steps x frame_skip 2
    assert len(rb) == 60
    # epsilon decays by frames, as torchrl's trainer anneals it (120 frames: 60 env steps x frame_skip 2)
    assert float(parts.greedy_module.eps) == pytest.approx(1.0 - 0.95 * 120 / 1000, abs=1e-5)
    assert [(s, p) for s, p, _ in log.rows] == [(2, "online"), (4, "online"), (6, "online")]
    assert log.rows[-1][2]["frames"] == 120 and "epsilon" in log.rows[-1][2]
    after = parts.loss_module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("value_network"))


def test_offline_steps_then_online_phase():
    env, parts = _cartpole_dqn()
    warm = Collector(env, parts.exploration_policy, frames_per_batch=50, total_frames=50, auto_register_policy_transforms=False)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(1000), batch_size=16)
    for data in warm:
        rb.extend(data.reshape(-1))
    collector = Collector(env, parts.exploration_policy, frames_per_batch=10, total_frames=-1, auto_register_policy_transforms=False)
    log = ListLogger()
    trainer = DQNTrainer(collector=collector, total_frames=20, loss_module=parts.loss_module,
                         optimizer=parts.optimizer, target_net_updater=parts.target_net_updater,
                         replay_buffer=rb, logger=log, log_interval=1, offline_steps=3, progress_bar=False)
    trainer.train()
    assert [p for _, p, _ in log.rows] == ["offline"] * 3 + ["online"] * 2
    assert len(rb) == 70


def test_cql_online_with_continuous_collector():
    env = GymEnv("Pendulum-v1")
    env.set_seed(0)
    parts = cql.build(SMALL_CQL, observation_shape=(3,), action_spec=env.action_spec, seed=0)
    collector = Collector(env, parts.exploration_policy, frames_per_batch=16, total_frames=-1, auto_register_policy_transforms=False)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(1000), batch_size=8)
    log = ListLogger()
    trainer = CQLTrainer(collector=collector, total_frames=32, loss_module=parts.loss_module,
                         optimizer=parts.optimizer, target_net_updater=parts.target_net_updater,
                         replay_buffer=rb, logger=log, log_interval=1, progress_bar=False)
    trainer.train()
    assert trainer.step == 2 and len(rb) == 32
    actions = rb[:].get("action")
    assert actions.abs().max() <= 2.0 and actions.abs().max() > 1.0  # the env's [-2, 2] box, rescaled policy
    assert all(p == "online" for _, p, _ in log.rows)


def test_collector_needs_total_frames():
    env, parts = _cartpole_dqn()
    collector = Collector(env, parts.exploration_policy, frames_per_batch=10, total_frames=-1, auto_register_policy_transforms=False)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(100), batch_size=4)
    with pytest.raises(UserError, match="total_frames"):
        DQNTrainer(collector=collector, loss_module=parts.loss_module, replay_buffer=rb)


def test_online_checkpoint_restores_collected_buffer(tmp_path):
    env, parts = _cartpole_dqn()
    collector = Collector(env, parts.exploration_policy, frames_per_batch=10, total_frames=-1,
                          auto_register_policy_transforms=False)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(1000), batch_size=4)
    ckpt = tmp_path / "latest.pt"
    trainer = DQNTrainer(collector=collector, total_frames=30, loss_module=parts.loss_module,
                         greedy_module=parts.greedy_module, replay_buffer=rb, save_trainer_file=ckpt,
                         progress_bar=False)
    trainer.train()
    env2, parts2 = _cartpole_dqn()
    rb2 = TensorDictReplayBuffer(storage=LazyTensorStorage(1000), batch_size=4)
    resumed = DQNTrainer(collector=Collector(env2, parts2.exploration_policy, frames_per_batch=10, total_frames=-1,
                                             auto_register_policy_transforms=False),
                         total_frames=30, loss_module=parts2.loss_module, greedy_module=parts2.greedy_module,
                         replay_buffer=rb2, progress_bar=False)
    resumed.load_from_file(ckpt)
    assert resumed.frames == 30 and len(rb2) == 30
    assert torch.equal(rb2[:]["observation"], rb[:]["observation"])
    assert float(parts2.greedy_module.eps) == float(parts.greedy_module.eps) < 1.0


def _first_observation(seed):
    env, parts = _cartpole_dqn(seed=123)  # the env's own seed differs from the trainer's
    collector = Collector(env, parts.exploration_policy, frames_per_batch=100, total_frames=-1,
                          auto_register_policy_transforms=False)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(100), batch_size=4)
    trainer = DQNTrainer(collector=collector, total_frames=100, loss_module=parts.loss_module,
                         optimizer=parts.optimizer, target_net_updater=parts.target_net_updater,
                         replay_buffer=rb, seed=seed, progress_bar=False)
    trainer.train()
    data = rb[:]
    assert data["next", "done"].any()  # the episodes after the first reset
    return data["observation"]


def test_seed_seeds_the_collectors_envs():
    """torchrl's trainer calls collector.set_seed(seed): the episodes (after the reset the collector made
    when it was built) follow the trainer's seed."""
    assert torch.equal(_first_observation(0), _first_observation(0))
    assert not torch.equal(_first_observation(0), _first_observation(1))


@pytest.mark.parametrize("enable_logging,log_rewards", [(True, True), (True, False), (False, True)])
def test_online_metric_hooks_follow_enable_logging_and_log_rewards(enable_logging, log_rewards):
    """torchrl's metric hooks: done_percentage and the episode return under enable_logging, the latter (and the
    batch's reward statistics) only with log_rewards; losses are logged either way."""
    from torchrl.envs import RewardSum, TransformedEnv

    env, parts = _cartpole_dqn()
    env = TransformedEnv(env, RewardSum(in_keys=["reward"], out_keys=["reward_sum"]))  # the trainer's episode_reward_key
    collector = Collector(env, parts.exploration_policy, frames_per_batch=100, total_frames=-1,
                          auto_register_policy_transforms=False)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(1000), batch_size=16)
    log = ListLogger()
    trainer = DQNTrainer(collector=collector, total_frames=100, loss_module=parts.loss_module,
                         optimizer=parts.optimizer, target_net_updater=parts.target_net_updater,
                         replay_buffer=rb, logger=log, log_interval=1, progress_bar=False,
                         enable_logging=enable_logging, log_rewards=log_rewards)
    trainer.train()
    row = log.rows[-1][2]
    assert "loss" in row and "grad_norm" in row
    data = rb[:]
    done = data["next", "done"].float()
    assert done.sum() >= 1  # 100 random CartPole steps end a few episodes
    if enable_logging:
        assert row["done_percentage"] == pytest.approx(float(done.mean()))
    else:
        assert "done_percentage" not in row
    if enable_logging and log_rewards:
        returns = data["next", "reward_sum"][data["next", "done"]]
        assert row["episode_reward_mean"] == pytest.approx(float(returns.mean()))
        assert "reward_mean" in row
    else:
        assert "episode_reward_mean" not in row and "reward_mean" not in row


def test_no_replay_buffer_trains_on_each_collected_batch(tmp_path):
    """torchrl's trainer without a replay buffer: each update trains on the whole collected batch; a stop in
    the middle of a batch's updates keeps that batch in the checkpoint for the updates still owed."""
    env, parts = _cartpole_dqn()
    collector = Collector(env, parts.exploration_policy, frames_per_batch=20, total_frames=-1,
                          auto_register_policy_transforms=False)
    seen = []

    def evaluator(policy, step):
        seen.append(trainer._last_batch["observation"].clone())
        if step == 3:
            trainer.request_stop("mid-batch")
        return {}

    trainer = DQNTrainer(collector=collector, total_frames=60, optim_steps_per_batch=2,
                         loss_module=parts.loss_module, optimizer=parts.optimizer,
                         target_net_updater=parts.target_net_updater, replay_buffer=None, policy=parts.policy,
                         evaluator=evaluator, eval_interval=1, save_trainer_file=tmp_path / "c.pt",
                         progress_bar=False)
    trainer.train()
    assert trainer.step == 3 and trainer.frames == 40 and trainer.stopped
    assert len(seen) == 3 and all(batch.shape[0] == 20 for batch in seen)  # each update: all 20 env steps
    assert torch.equal(seen[0], seen[1])  # both updates of the first batch train on it
    assert not torch.equal(seen[1], seen[2])  # the next update trains on the next batch

    env2, parts2 = _cartpole_dqn()
    resumed = DQNTrainer(collector=Collector(env2, parts2.exploration_policy, frames_per_batch=20, total_frames=-1,
                                             auto_register_policy_transforms=False),
                         total_frames=60, optim_steps_per_batch=2, loss_module=parts2.loss_module,
                         optimizer=parts2.optimizer, target_net_updater=parts2.target_net_updater,
                         replay_buffer=None, progress_bar=False)
    resumed.load_from_file(tmp_path / "c.pt")
    assert torch.equal(resumed._collected["observation"], seen[2])  # the batch whose second update is owed
    resumed.train()
    assert resumed.step == 6 and resumed.frames == 60


def test_no_replay_buffer_needs_a_collector_and_no_offline_steps():
    env, parts = _cartpole_dqn()
    collector = Collector(env, parts.exploration_policy, frames_per_batch=20, total_frames=-1,
                          auto_register_policy_transforms=False)
    with pytest.raises(UserError, match="replay_buffer is required for offline steps"):
        DQNTrainer(collector=collector, total_frames=60, offline_steps=5, loss_module=parts.loss_module,
                   replay_buffer=None)
