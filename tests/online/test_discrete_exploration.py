"""Discrete CQL online explores like DQN: an EGreedyModule after its greedy Q actor, epsilon annealed by the
trainer, logged as ``epsilon`` and kept in checkpoints."""

from __future__ import annotations

import pytest
import torch
from helpers.engine import ListLogger
from tensordict import TensorDict

from offrl.algos import discrete_cql
from offrl.online.setup import (
    DISCRETE_CQL_EPSILON,
    OnlineConfig,
    OnlineMetricsLogger,
    build_online,
    build_parts_for_env,
)
from offrl.runs import train
from offrl.trainers import CQLTrainer

DCQL = discrete_cql.DiscreteCQLConfig(hidden_sizes=(32, 32), lr=1e-3, target_update_interval=50)


def test_discrete_cql_collects_epsilon_greedy_with_annealed_epsilon():
    """Each batch's actions against the greedy actions of the Q-network that collected it (sync collector:
    the same weights): about half differ at epsilon 1 (CartPole has two actions), few at the end."""
    parts = build_parts_for_env("discrete-cql", DCQL, "CartPole-v1", seed=0)
    cfg = OnlineConfig(steps=400, env_id="CartPole-v1", frames_per_batch=50, eps_init=1.0, eps_end=0.0,
                       eps_anneal_frames=400)
    online = build_online(cfg, parts=parts, batch_size=32, seed=0)
    assert parts.greedy_module is not None and parts.exploration_policy is not parts.policy
    disagree = []

    def count(batch):
        with torch.no_grad():
            greedy = parts.policy(TensorDict({"observation": batch["observation"]}, batch.shape))["action"]
        disagree.append(float((greedy != batch["action"]).float().mean()))

    online.collector.hooks.append(count)
    log = ListLogger()
    trainer = CQLTrainer(collector=online.collector, total_frames=online.total_frames, optim_steps_per_batch=2,
                         loss_module=parts.loss_module, optimizer=parts.optimizer,
                         target_net_updater=parts.target_net_updater, replay_buffer=online.replay_buffer,
                         logger=OnlineMetricsLogger(log, online.replay_buffer), log_interval=2, offline_steps=0,
                         policy=parts.policy, seed=0, progress_bar=False, greedy_module=parts.greedy_module)
    online.bind(trainer)
    trainer.train()
    assert len(disagree) == 8
    assert disagree[0] > 0.3 and disagree[-1] < 0.15  # 1.0 -> 0.125 over the 8 batches
    epsilons = [m["epsilon"] for _, _, m in log.rows]
    assert epsilons == pytest.approx([1.0 - f / 400 for f in range(50, 401, 50)], abs=1e-5)
    assert trainer.state_dict()["greedy_module"]["eps"] == pytest.approx(0.0, abs=1e-6)


def test_discrete_cql_epsilon_defaults_and_overrides(cartpole_medium):
    for dataset, expected in ((cartpole_medium, DISCRETE_CQL_EPSILON["fine_tuning"]),
                              (None, DISCRETE_CQL_EPSILON["scratch"])):
        parts = (discrete_cql.build_from_dataset(DCQL, dataset, seed=0) if dataset is not None
                 else build_parts_for_env("discrete-cql", DCQL, "CartPole-v1", seed=0))
        build_online(OnlineConfig(steps=100, env_id=None if dataset is not None else "CartPole-v1"), parts=parts,
                     dataset=dataset, batch_size=32, seed=0)
        g = parts.greedy_module
        assert (float(g.eps_init), float(g.eps_end), g.annealing_num_steps) == pytest.approx(expected)
    parts = discrete_cql.build_from_dataset(DCQL, cartpole_medium, seed=0)
    build_online(OnlineConfig(steps=100, eps_init=0.3, eps_end=0.2, eps_anneal_frames=50), parts=parts,
                 dataset=cartpole_medium, batch_size=32, seed=0)
    assert float(parts.greedy_module.eps) == pytest.approx(0.3) and parts.greedy_module.annealing_num_steps == 50


def test_discrete_cql_finetuning_logs_and_resumes_epsilon(tmp_path):
    """Through offrl.train: the epsilon column, the checkpoint's greedy_module, and a resume continuing it."""
    common = dict(steps=10, eval_every=0, progress=False, out=tmp_path / "runs", frames_per_batch=25, utd=2,
                  batch_size=32, **{"discrete_cql.hidden_sizes": [16], "log_interval": 2,
                                    "online.eps_anneal_frames": 200})
    first = train("offrl/cartpole/medium-v0", "discrete-cql", online_steps=100, name="r", **common)
    online = first.metrics[first.metrics["phase"] == "online"]
    eps = online.set_index("step")["epsilon"]
    assert list(eps.index) == [12, 14, 16, 18]
    assert eps.tolist() == pytest.approx([0.1 - 0.09 * f / 200 for f in (25, 50, 75, 100)], abs=1e-5)
    saved = torch.load(first.checkpoint, weights_only=True)["greedy_module"]
    assert float(saved["eps"]) == pytest.approx(eps.iloc[-1], abs=1e-6)
    second = train(resume=first.dir, force=True, online_steps=200, **common)
    eps2 = second.metrics[second.metrics["phase"] == "online"]["epsilon"]
    assert eps2.tolist() == pytest.approx([0.1 - 0.09 * f / 200 for f in range(25, 201, 25)], abs=1e-5)
