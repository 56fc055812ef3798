"""Checkpoints and exact resume: a run stopped at step k and resumed ends equal to an uninterrupted one."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from helpers.engine import ListLogger, make_trainer, weights

from offrl.errors import UserError
from offrl.trainers import load_checkpoint

STEPS, STOP_AT = 24, 10


def _stop_at(k: int):
    """An evaluator that asks the trainer to stop at step k (the trainer is bound after construction)."""
    box: dict = {}

    def evaluator(policy, step):
        if step == k:
            box["trainer"].request_stop("test")
        return {"eval_marker": float(step)}

    return evaluator, box


@pytest.mark.parametrize("kind", ["cql", "cql-critic-first", "dcql", "dqn"])
@pytest.mark.parametrize("backend", ["torch", "memmap"])
def test_stop_and_resume_matches_uninterrupted(kind, backend, request, tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_BACKEND", backend)
    order = "critic_first" if kind == "cql-critic-first" else "joint"
    kind = kind.removesuffix("-critic-first")
    data = request.getfixturevalue("pendulum_medium" if kind == "cql" else "cartpole_medium")
    common = dict(offline_steps=STEPS, log_interval=3, eval_interval=5, save_trainer_interval=7)
    # SoftUpdate/HardUpdate counters, Adam moments, bc switch (cql) and sampler RNG all matter here
    if kind == "cql":
        from helpers.engine import SMALL_CQL

        from offrl.algos import cql

        common["cfg"] = cql.CQLConfig(**{**SMALL_CQL.__dict__, "bc_steps": 12, "with_lagrange": True,
                                         "update_order": order})

    full_log = ListLogger()
    ev, _ = _stop_at(-1)
    full, _ = make_trainer(kind, data, logger=full_log, evaluator=ev, **common)
    full.train()

    ckpt = tmp_path / "ckpt" / "latest.pt"
    part_log = ListLogger()
    ev, box = _stop_at(STOP_AT)
    first, _ = make_trainer(kind, data, logger=part_log, evaluator=ev, save_trainer_file=ckpt, **common)
    box["trainer"] = first
    first.train()
    assert first.stopped and first.step == STOP_AT
    assert ckpt.exists() and (ckpt.is_dir() == (backend == "memmap"))

    ev, _ = _stop_at(-1)
    resumed, _ = make_trainer(kind, data, logger=part_log, evaluator=ev, save_trainer_file=ckpt, **common)
    resumed.load_from_file(ckpt)
    assert resumed.step == STOP_AT
    resumed.train()
    assert resumed.step == STEPS

    w_full, w_res = weights(full.loss_module), weights(resumed.loss_module)
    assert w_full.keys() == w_res.keys()
    for key in w_full:
        assert torch.equal(w_full[key], w_res[key]), key
    assert part_log.comparable() == full_log.comparable()
    # the checkpoint written at the end is the final state
    assert load_checkpoint(ckpt)["step"] == STEPS


def test_same_seed_same_metrics_different_seed_differs(cartpole_medium):
    logs = []
    for seed in (3, 3, 4):
        log = ListLogger()
        trainer, _ = make_trainer("dcql", cartpole_medium, seed=seed, logger=log, offline_steps=20, log_interval=5)
        trainer.train()
        logs.append(log.comparable())
    assert logs[0] == logs[1]
    assert logs[0] != logs[2]
    # a different trainer seed alone (same network init) changes the sampled batches
    log = ListLogger()
    trainer, _ = make_trainer("dcql", cartpole_medium, seed=5, build_seed=3, logger=log, offline_steps=20,
                              log_interval=5)
    trainer.train()
    assert log.comparable() != logs[0]


def test_checkpoint_loads_with_weights_only_and_records_state(pendulum_medium, tmp_path):
    ckpt = tmp_path / "c.pt"
    cfg_kwargs = {}
    trainer, _ = make_trainer("cql", pendulum_medium, offline_steps=6, save_trainer_file=ckpt,
                              save_trainer_interval=4, keep_checkpoints=True, **cfg_kwargs)
    trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "step_4.pt", "step_6.pt"]
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 6 and state["format"] == 1
    assert "log_alpha" in state["loss_module"]
    assert any(k.startswith("target_qvalue_network_params") for k in state["loss_module"])
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    buffer_state = state["replay_buffer"]["buffer"]
    assert buffer_state["_rng"] is not None  # the sampling generator
    assert buffer_state["_storage"] == {"offrl_dataset_len": len(pendulum_medium.data)}  # never the data
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp files left behind


def test_load_rejects_other_algorithm_and_missing_file(cartpole_medium, tmp_path):
    ckpt = tmp_path / "d.pt"
    trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=2, save_trainer_file=ckpt)
    trainer.train()
    other, _ = make_trainer("dcql", cartpole_medium, offline_steps=2)
    with pytest.raises(UserError, match="written by dqn"):
        other.load_from_file(ckpt)
    with pytest.raises(UserError, match="does not exist"):
        other.load_from_file(tmp_path / "nope.pt")


def test_load_rejects_other_network_sizes_in_one_short_line(cartpole_medium, tmp_path):
    from dataclasses import replace

    from helpers.engine import SMALL_DQN

    ckpt = tmp_path / "d.pt"
    trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=2, save_trainer_file=ckpt)
    trainer.train()
    wider, _ = make_trainer("dqn", cartpole_medium, offline_steps=2, cfg=replace(SMALL_DQN, hidden_sizes=(48, 48)))
    with pytest.raises(UserError, match="does not match this trainer's networks") as info:
        wider.load_from_file(ckpt)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400 and "size" in message  # the cause, not whole dicts


def test_sigint_requests_stop_checkpoints_and_restores_handlers(cartpole_medium, tmp_path):
    ckpt = tmp_path / "latest.pt"
    before = signal.getsignal(signal.SIGINT)

    def evaluator(policy, step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # handled between steps: no KeyboardInterrupt
        return {}

    trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=50, evaluator=evaluator, eval_interval=2,
                              save_trainer_file=ckpt, save_trainer_interval=1000)
    trainer.train()
    assert trainer.stopped and trainer.stop_reason == "SIGINT"
    assert trainer.step == 4
    assert load_checkpoint(ckpt)["step"] == 4
    assert signal.getsignal(signal.SIGINT) is before


def test_second_sigint_aborts(cartpole_medium):
    def evaluator(policy, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return {}

    trainer, _ = make_trainer("dqn", cartpole_medium, offline_steps=50, evaluator=evaluator, eval_interval=2)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()


def test_memmap_checkpoint_keeps_non_finite_floats(tmp_path):
    """A best return of -inf before any online episode, a NaN statistic: the memmap backend's JSON would turn
    them into None (and resuming an online run then failed); they come back as the same floats."""
    import math

    from offrl.trainers.checkpoint import save_checkpoint

    state = {"online": {"best_return": float("-inf"), "regret": float("nan"), "top": float("inf"), "n": 3,
                        "none": None, "name": "x"}}
    back = load_checkpoint(save_checkpoint(state, tmp_path / "ckpt", backend="memmap"))["online"]
    assert back["best_return"] == float("-inf") and back["top"] == float("inf") and math.isnan(back["regret"])
    assert (back["n"], back["none"], back["name"]) == (3, None, "x")
