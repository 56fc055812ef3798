"""Each seed parameter of CQLTrainer / DQNTrainer has an observable effect or is validated."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.engine import ListLogger, ScalarLogger, make_trainer, weights
from torchrl.objectives import SACLoss, SoftUpdate

from offrl.errors import UserError
from offrl.trainers import CQLTrainer, DQNTrainer


def _sgd(parts, lr=1.0):
    """Plain SGD over the builder's named groups: parameter change = lr * (clipped) gradient."""
    return torch.optim.SGD([{"params": g["params"], "name": g["name"]} for g in parts.optimizer.param_groups],
                           lr=lr)


def _delta_norms(before, after, prefix):
    diffs = [(after[k] - before[k]).flatten() for k in before if k.startswith(prefix)]
    return torch.cat(diffs).norm().item(), torch.cat(diffs).abs().max().item()


@pytest.mark.parametrize("clip_norm", [None, 1e-3])
def test_clip_norm_bounds_each_groups_update(cartpole_medium, clip_norm):
    trainer, parts = make_trainer("dcql", cartpole_medium, offline_steps=1, log_interval=1, logger=ListLogger(),
                                  clip_norm=clip_norm)
    trainer.optimizer = _sgd(parts)
    before = weights(parts.loss_module)
    trainer.train()
    norm, _ = _delta_norms(before, weights(parts.loss_module), "value_network_params")
    logged = trainer.last_row["grad_norm"]
    assert logged > 1e-2  # the pre-clip norm is what gets logged
    if clip_norm is None:
        assert norm == pytest.approx(logged, rel=1e-4)
    else:
        assert norm == pytest.approx(clip_norm, rel=1e-3)


def test_clip_norm_clips_the_norm_over_all_groups(pendulum_medium):
    """torchrl's trainer runs one clip_grad_norm_ over every parameter: CQL's actor, critic and temperature
    groups are scaled by one factor, so the whole update's norm is clip_norm (not clip_norm per group)."""
    trainer, parts = make_trainer("cql", pendulum_medium, offline_steps=1, log_interval=1, logger=ListLogger(),
                                  clip_norm=1e-3)
    trainer.optimizer = _sgd(parts)
    before = weights(parts.loss_module)
    trainer.train()
    after = weights(parts.loss_module)
    moved = [k for k in before if (after[k] - before[k]).abs().max() > 0]
    total = torch.cat([(after[k] - before[k]).flatten() for k in moved]).norm().item()
    row = trainer.last_row
    groups = {k: v for k, v in row.items() if k.startswith("grad_norm_")}
    assert len(groups) >= 2 and row["grad_norm"] == pytest.approx(math.hypot(*groups.values()), rel=1e-5)
    assert row["grad_norm"] > 1e-2
    assert total == pytest.approx(1e-3, rel=1e-3)
    for name, prefix in (("grad_norm_actor", "actor_network_params"), ("grad_norm_critic", "qvalue_network_params")):
        moved_norm, _ = _delta_norms(before, after, prefix)  # each group scaled by the same factor
        assert moved_norm == pytest.approx(1e-3 * groups[name] / row["grad_norm"], rel=1e-3)


def test_clip_grad_norm_false_clips_values(cartpole_medium):
    trainer, parts = make_trainer("dcql", cartpole_medium, offline_steps=1, clip_grad_norm=False, clip_norm=1e-4)
    trainer.optimizer = _sgd(parts)
    before = weights(parts.loss_module)
    trainer.train()
    _, biggest = _delta_norms(before, weights(parts.loss_module), "value_network_params")
    assert biggest == pytest.approx(1e-4, rel=1e-4)


def test_log_interval_sets_rows_and_phase(cartpole_medium):
    counts = {}
    for interval in (2, 5):
        log = ListLogger()
        trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=10, log_interval=interval, logger=log)
        trainer.train()
        counts[interval] = [step for step, _, _ in log.rows]
        assert {phase for _, phase, _ in log.rows} == {"offline"}
    assert counts == {2: [2, 4, 6, 8, 10], 5: [5, 10]}


def test_last_partial_interval_is_logged_with_its_mean(cartpole_medium):
    log = ListLogger()
    trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=7, log_interval=5, logger=log)
    trainer.train()
    assert [s for s, _, _ in log.rows] == [5, 7]


def test_enable_logging_false_drops_the_metric_hooks_only(pendulum_medium):
    """torchrl's meaning: no reward / action / observation statistics, but losses and norms are logged."""
    rows = {}
    for enabled in (True, False):
        log = ListLogger()
        trainer, _ = make_trainer("cql", pendulum_medium, offline_steps=4, log_interval=2, logger=log,
                                  enable_logging=enabled, log_observations=True)
        trainer.train()
        assert [s for s, _, _ in log.rows] == [2, 4] and trainer.step == 4
        rows[enabled] = log.rows[-1][2]
    stats = {"reward_mean", "reward_std", "action_mean", "action_std", "observation_mean", "observation_std"}
    assert stats <= set(rows[True]) and not stats & set(rows[False])
    assert set(rows[True]) - stats == set(rows[False])
    assert rows[False]["loss_qvalue"] == pytest.approx(rows[True]["loss_qvalue"], rel=1e-6)


def test_logger_none_logs_nothing(cartpole_medium):
    trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=6, log_interval=2, logger=None)
    rows = list(trainer.iterate())  # rows are still yielded
    assert [s for s, _ in rows] == [2, 4, 6] and trainer.step == 6


def test_torchrl_logger_gets_log_scalar_per_value(cartpole_medium):
    log = ScalarLogger()
    trainer, _ = make_trainer("dcql", cartpole_medium, offline_steps=4, log_interval=2, logger=log)
    trainer.train()
    names = {name for name, _, _ in log.calls}
    assert {"loss_qvalue", "loss_cql", "grad_norm", "q_data_mean", "updates_per_s"} <= names
    assert {step for _, _, step in log.calls} == {2, 4}
    assert all(isinstance(v, float) and math.isfinite(v) for _, v, _ in log.calls)


@pytest.mark.parametrize("flag,prefix", [("log_rewards", "reward_"), ("log_actions", "action_"),
                                         ("log_observations", "observation_")])
def test_batch_statistics_flags(pendulum_medium, flag, prefix):
    present = {}
    for value in (True, False):
        log = ListLogger()
        trainer, _ = make_trainer("cql", pendulum_medium, offline_steps=2, log_interval=2, logger=log,
                                  **{flag: value})
        trainer.train()
        present[value] = {k for k in log.rows[-1][2] if k.startswith(prefix)}
    assert present[True] == {prefix + "mean", prefix + "std"} and present[False] == set()


def test_cql_logs_losses_alpha_and_q_statistics(pendulum_medium):
    from helpers.engine import SMALL_CQL

    from offrl.algos import cql

    log = ListLogger()
    cfg = cql.CQLConfig(**{**SMALL_CQL.__dict__, "with_lagrange": True})
    trainer, _ = make_trainer("cql", pendulum_medium, offline_steps=2, log_interval=2, logger=log, cfg=cfg)
    trainer.train()
    row = log.rows[-1][2]
    for key in ("loss_actor", "loss_actor_bc", "loss_qvalue", "loss_cql", "loss_alpha", "loss_alpha_prime",
                "alpha", "alpha_prime", "entropy", "cql_gap", "q_data_mean", "q_data_std", "grad_norm",
                "grad_norm_actor", "grad_norm_critic", "grad_norm_alpha", "grad_norm_alpha_prime"):
        assert key in row and math.isfinite(row[key]), key


def test_log_timings_adds_phase_times(cartpole_medium):
    for value in (True, False):
        log = ListLogger()
        trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=2, log_interval=2, logger=log,
                                  log_timings=value)
        trainer.train()
        times = {k for k in log.rows[-1][2] if k.startswith("time_")}
        expected = {f"time_{p}" for p in ("sample", "forward", "backward", "optim", "target", "eval", "log")}
        assert times == (expected if value else set())
        assert all(log.rows[-1][2][k] >= 0 for k in times)


def test_progress_bar_writes_to_stderr(cartpole_medium, capsys):
    for value in (True, False):
        trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=3, progress_bar=value)
        trainer.train()
        err = capsys.readouterr().err
        assert ("dqn" in err) == value


def test_bc_steps_trains_actor_on_behaviour_cloning(pendulum_medium):
    """With bc_steps the actor's gradient comes from loss_actor_bc, so the Q-function does not move it."""
    from helpers.engine import SMALL_CQL

    from offrl.algos import cql

    deltas = {}
    for bc in (0, 5):
        trainer, parts = make_trainer("cql", pendulum_medium, offline_steps=1, cfg=cql.CQLConfig(
            **{**SMALL_CQL.__dict__, "bc_steps": bc}))
        trainer.optimizer = _sgd(parts, lr=1e-2)
        before = weights(parts.loss_module)
        trainer.train()
        after = weights(parts.loss_module)
        deltas[bc] = torch.cat([(after[k] - before[k]).flatten() for k in before if k.startswith("actor")])
    assert not torch.allclose(deltas[0], deltas[5])


def test_save_trainer_interval_and_file(cartpole_medium, tmp_path):
    target = tmp_path / "ck" / "latest.pt"
    trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=9, save_trainer_file=target,
                              save_trainer_interval=4, keep_checkpoints=True)
    trainer.train()
    assert sorted(p.name for p in target.parent.iterdir()) == ["latest.pt", "step_4.pt", "step_8.pt", "step_9.pt"]
    trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=3)  # no file: nothing written, no error
    trainer.train()


def test_target_net_updater_is_stepped(cartpole_medium):
    from helpers.engine import SMALL_DQN

    from offrl.algos import dqn

    cfg = dqn.DQNConfig(**{**SMALL_DQN.__dict__, "target_update_interval": 3})
    trainer, parts = make_trainer("dqn", cartpole_medium, offline_steps=3, cfg=cfg)
    target0 = {k: v for k, v in weights(parts.loss_module).items() if k.startswith("target_")}
    trainer.train()  # HardUpdate copies after its interval: 3 steps -> not yet
    target3 = {k: v for k, v in weights(parts.loss_module).items() if k.startswith("target_")}
    assert all(torch.equal(target0[k], target3[k]) for k in target0)
    trainer.offline_steps = 4
    trainer.train()
    w = weights(parts.loss_module)
    assert all(torch.equal(w[k], w[k.replace("target_", "")]) for k in target0)
    assert not all(torch.equal(w[k], target0[k]) for k in target0)


def test_evaluator_called_every_interval_without_changing_training(cartpole_medium):
    calls = []

    def evaluator(policy, step):
        calls.append(step)
        torch.rand(100)  # an evaluator that consumes RNG must not change the training trajectory
        return {"eval_return_mean": float(step)}

    logs = []
    for ev in (evaluator, None):
        log = ListLogger()
        trainer, _ = make_trainer("dcql", cartpole_medium, offline_steps=10, log_interval=5, logger=log,
                                  evaluator=ev, eval_interval=4 if ev else 0)
        trainer.train()
        logs.append(log)
    assert calls == [4, 8, 10]
    rows = {s: m for s, _, m in logs[0].comparable()}
    assert set(rows) == {4, 5, 8, 10} and rows[4] == {"eval_return_mean": 4.0}
    plain = {s: m for s, _, m in logs[1].comparable()}
    for step in (5, 10):
        assert {k: v for k, v in rows[step].items() if not k.startswith("eval_")} == plain[step]


def test_request_stop_stops_at_next_boundary(cartpole_medium):
    box = {}

    def evaluator(policy, step):
        box["t"].request_stop("enough")
        return {}

    trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=100, evaluator=evaluator, eval_interval=3)
    box["t"] = trainer
    trainer.train()
    assert trainer.step == 3 and trainer.stop_reason == "enough"
    trainer.train()  # a new train() call continues
    assert trainer.step == 6


def test_request_stop_before_train_stops_it_at_the_first_step(cartpole_medium, tmp_path):
    """torchrl keeps a stop requested before train(): that train() does one step, checkpoints and returns."""
    trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=50, save_trainer_file=tmp_path / "c.pt")
    trainer.request_stop("early")
    trainer.train()
    assert trainer.step == 1 and trainer.stopped and trainer.stop_reason == "early"
    assert trainer.saved_step == 1 and (tmp_path / "c.pt").exists()
    trainer.train()  # the stop ended with the train() it stopped
    assert trainer.step == 50 and not trainer.stopped


def test_load_from_file_passes_torch_load_keywords_and_refuses_others(cartpole_medium, tmp_path):
    trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=2, save_trainer_file=tmp_path / "c.pt")
    trainer.train()
    other, _ = make_trainer("dqn", cartpole_medium, offline_steps=2)
    other.load_from_file(tmp_path / "c.pt", map_location="cpu", mmap=True)
    assert other.step == 2
    with pytest.raises(TypeError, match="bogus_kw"):
        other.load_from_file(tmp_path / "c.pt", bogus_kw=1)


@pytest.mark.parametrize("kwargs,match", [
    ({"offline_steps": 0}, "offline_steps"),
    ({"offline_steps": -1}, "offline_steps"),
    ({"offline_steps": 5, "log_interval": 0}, "log_interval"),
    ({"offline_steps": 5, "save_trainer_interval": 0}, "save_trainer_interval"),
    ({"offline_steps": 5, "frame_skip": 0}, "frame_skip"),
    ({"offline_steps": 5, "optim_steps_per_batch": 0}, "optim_steps_per_batch"),
    ({"offline_steps": 5, "clip_norm": -1.0}, "clip_norm"),
    ({"offline_steps": 5, "replay_buffer": None}, "replay_buffer"),
    ({"offline_steps": 5, "async_collection": True}, "async_collection"),
    ({"offline_steps": 5, "evaluator": lambda p, s: {}, "policy": None}, "policy"),
    ({"offline_steps": 5, "mixing_strategy": "qmix"}, "aggregated_reward_key"),
    ({"offline_steps": 5, "mixing_strategy": "vdn", "aggregated_reward_key": "r"}, "aggregated"),
    ({"offline_steps": 5, "mixing_strategy": "nope"}, "mixing_strategy"),
])
def test_bad_arguments_are_user_errors(cartpole_medium, kwargs, match):
    with pytest.raises(UserError, match=match):
        make_trainer("dqn", cartpole_medium, **kwargs)


def test_iql_mixing_and_custom_keys_are_accepted(cartpole_medium):
    log = ListLogger()
    trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=2, log_interval=2, logger=log,
                              mixing_strategy="iql", reward_key="not_there", observation_key="observation",
                              log_observations=True)
    trainer.train()
    row = log.rows[-1][2]
    assert "reward_mean" not in row and "observation_mean" in row


def test_done_and_terminated_keys_reach_the_loss(cartpole_medium):
    # the multi-agent keys and reward aggregation: tests/trainers/test_marl_trainer.py
    trainer, parts = make_trainer("dqn", cartpole_medium, offline_steps=1, done_key="d", terminated_key="t")
    keys = parts.loss_module.tensor_keys
    assert (keys.done, keys.terminated) == ("d", "t")


def test_action_key_is_where_the_loss_reads_actions(cartpole_medium):
    """DQN's action_key: a batch whose actions sit under another key trains as the same batch would."""
    trainer, parts = make_trainer("dqn", cartpole_medium, offline_steps=1, action_key="act")
    assert parts.loss_module.tensor_keys.action == "act"
    reference, _ = make_trainer("dqn", cartpole_medium, offline_steps=1)
    batch = cartpole_medium.replay_buffer(32, seed=0).sample()
    renamed = batch.clone().rename_key_("action", "act")
    ours, theirs = trainer.update(renamed), reference.update(batch)
    assert float(ours["loss"]) == pytest.approx(float(theirs["loss"]), rel=1e-6)
    with pytest.raises((KeyError, AttributeError)):
        trainer.update(batch)  # no "act" in it: not trained on


def test_loss_module_the_trainer_cannot_drive(cartpole_medium, pendulum_medium):
    from offrl.algos import cql

    parts = cql.build_from_dataset(cql.CQLConfig(hidden_sizes=(8,)), pendulum_medium, seed=0)
    rb = pendulum_medium.replay_buffer(8, seed=0)
    with pytest.raises(UserError, match="DQNTrainer drives"):
        DQNTrainer(loss_module=parts.loss_module, replay_buffer=rb, offline_steps=1)
    sac = SACLoss(parts.loss_module.actor_network, parts.loss_module.qvalue_network)
    with pytest.raises(UserError, match="CQLTrainer drives"):
        CQLTrainer(loss_module=sac, replay_buffer=rb, offline_steps=1, target_net_updater=SoftUpdate(sac, tau=0.1))
    _, dqn_parts = make_trainer("dqn", cartpole_medium, offline_steps=1)
    with pytest.raises(UserError, match="CQLTrainer drives"):
        CQLTrainer(loss_module=dqn_parts.loss_module, replay_buffer=rb, offline_steps=1)


def test_progress_bar_names_the_algorithm(cartpole_medium, pendulum_medium):
    from helpers.engine import make_trainer

    assert make_trainer("dcql", cartpole_medium, offline_steps=1)[0].display_name == "discrete-cql"
    assert make_trainer("cql", pendulum_medium, offline_steps=1)[0].display_name == "cql"
    assert make_trainer("dqn", cartpole_medium, offline_steps=1)[0].display_name == "dqn"
