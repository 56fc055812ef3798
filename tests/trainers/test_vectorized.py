"""Seeds trained as one batched model (offrl.trainers.vectorized) against the same seeds trained on their own:
after K steps every seed's parameters, targets, Adam moments, logged rows and evaluations match its own run
(float rounding apart: the batched matmuls sum in another order), its sampler stream is the same draw for
draw, its checkpoint holds only its own state, a stopped group resumes exactly, and one seed resumes alone."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.engine import SMALL_CQL, SMALL_DCQL, SMALL_DQN, ListLogger, make_trainer, weights
from tensordict import TensorDict

from offrl.errors import UserError
from offrl.trainers import NonFiniteLossError, load_checkpoint
from offrl.trainers.vectorized import VectorizedSeeds

SEEDS = (0, 3, 4)
STEPS = 24
# rows every 4 steps, evaluations every 10: the stop at step 10 falls in the middle of a row
COMMON = dict(offline_steps=STEPS, log_interval=4, eval_interval=10, save_trainer_interval=8, handle_signals=False)
OBS = torch.tensor([[0.0, 0.1, -0.05, 0.2], [0.3, -0.2, 0.1, 0.0]])


def _evaluator(stop: dict | None = None):
    """A deterministic stand-in for env rollouts: the policy's Q-values on fixed states (and, with ``stop``,
    a stop request at ``stop["at"]``, as a Ctrl-C would make)."""

    def evaluate(policy, step):
        if stop is not None and step == stop["at"]:
            stop["group"].request_stop("test")
        q = policy(TensorDict(observation=OBS, batch_size=[2]))["action_value"]
        return {"eval_q": float(q.sum()), "eval_rand": float(torch.rand(()))}  # rand: the held RNG

    return evaluate


PENDULUM_OBS = torch.tensor([[1.0, 0.0, 0.1], [0.0, 1.0, -0.3]])


def _cql_evaluator(stop: dict | None = None):
    """As :func:`_evaluator`, for a continuous actor: its deterministic actions on fixed states."""

    def evaluate(policy, step):
        if stop is not None and step == stop["at"]:
            stop["group"].request_stop("test")
        action = policy(TensorDict(observation=PENDULUM_OBS, batch_size=[2]))["action"]
        return {"eval_action": float(action.sum()), "eval_rand": float(torch.rand(()))}

    return evaluate


def _trainers(kind, data, tmp, *, tag, stop=None, **kwargs):
    made = []
    evaluator = _cql_evaluator if kind == "cql" else _evaluator
    for seed in SEEDS:
        trainer, _ = make_trainer(kind, data, seed=seed, logger=ListLogger(), evaluator=evaluator(stop),
                                  save_trainer_file=tmp / tag / f"seed{seed}.pt", **{**COMMON, **kwargs})
        trainer.hold_rng()
        made.append(trainer)
    return made


def _close(a: dict, b: dict, rtol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=rtol, atol=1e-6), key


def _rows_close(a: ListLogger, b: ListLogger) -> None:
    ra, rb = a.comparable(), b.comparable()
    assert [(s, p, sorted(m)) for s, p, m in ra] == [(s, p, sorted(m)) for s, p, m in rb]
    for (_, _, ma), (_, _, mb) in zip(ra, rb, strict=True):
        for key in ma:
            assert math.isclose(ma[key], mb[key], rel_tol=1e-4, abs_tol=1e-5), key


CASES = [("dqn", "cartpole_medium", {"cfg": SMALL_DQN, "clip_norm": 0.05}),  # hard target every 5 steps, clipping
         ("dcql", "cartpole_medium", {"cfg": SMALL_DCQL.__class__(**{**SMALL_DCQL.__dict__, "target_update": "soft"})}),
         # continuous CQL draws actions in its loss: each seed from its own stream
         ("cql", "pendulum_medium", {"cfg": SMALL_CQL, "bc_steps": 6}),  # the BC warm start ends mid-run
         ("cql", "pendulum_medium", {"cfg": SMALL_CQL.__class__(**{**SMALL_CQL.__dict__, "with_lagrange": True,
                                                                   "backup_action": "mean", "actor_bc_weight": 2.5}),
                                     "clip_norm": 0.5}),
         # the group scales its stacked batch (observations and rewards) as each seed's trainer scales its own
         ("dqn", "cartpole_medium", {"cfg": SMALL_DQN.__class__(**{**SMALL_DQN.__dict__,
                                                                  "observation_scaler": "standard",
                                                                  "reward_scale": 0.5, "reward_bias": -1.0})})]


@pytest.mark.parametrize(("kind", "data", "kwargs"), CASES,
                         ids=["dqn", "dcql", "cql-bc-warm-start", "cql-lagrange-mean-backup-bc-clip", "dqn-scaled"])
def test_each_seed_trains_as_it_would_alone(kind, data, kwargs, request, tmp_path):
    dataset = request.getfixturevalue(data)
    evaluator = _cql_evaluator if kind == "cql" else _evaluator
    batched = _trainers(kind, dataset, tmp_path, tag="group", **kwargs)
    VectorizedSeeds(batched, handle_signals=False).train()
    for seed, trainer in zip(SEEDS, batched, strict=True):
        own, _ = make_trainer(kind, dataset, seed=seed, logger=ListLogger(), evaluator=evaluator(),
                              save_trainer_file=tmp_path / "alone" / f"seed{seed}.pt", **{**COMMON, **kwargs})
        own.train()
        assert trainer.step == own.step == STEPS
        _close(weights(trainer.loss_module), weights(own.loss_module))
        mine, theirs = trainer.optimizer.state_dict(), own.optimizer.state_dict()
        assert mine["param_groups"] == theirs["param_groups"]
        for index, state in theirs["state"].items():
            assert float(mine["state"][index]["step"]) == float(state["step"]) == STEPS
            _close({k: v for k, v in mine["state"][index].items() if k != "step"},
                   {k: v for k, v in state.items() if k != "step"})
        # the same sampler stream, draw for draw, and the same rows and evaluations (the held RNG included)
        assert torch.equal(trainer.replay_buffer._rng.get_state(), own.replay_buffer._rng.get_state())
        _rows_close(trainer.logger, own.logger)
        # its checkpoint holds its own state only (views of the stack are saved as their own tensors)
        ckpt, ref = tmp_path / "group" / f"seed{seed}.pt", tmp_path / "alone" / f"seed{seed}.pt"
        assert ckpt.stat().st_size < 1.1 * ref.stat().st_size
        a, b = load_checkpoint(ckpt), load_checkpoint(ref)
        assert a["step"] == b["step"] == STEPS and a["target_net_updater"] == b["target_net_updater"]
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])  # CQL: its loss's stream stands where its run's does
        assert torch.equal(a["replay_buffer"]["buffer"]["_rng"][0], b["replay_buffer"]["buffer"]["_rng"][0])
    # the seeds did learn apart (the comparison above could tell them apart)
    w0, w1 = weights(batched[0].loss_module), weights(batched[1].loss_module)
    assert any(not torch.allclose(w0[k], w1[k]) for k in w0)


@pytest.mark.parametrize(("kind", "data", "backend"), [("dcql", "cartpole_medium", "torch"),
                                                       ("dcql", "cartpole_medium", "memmap"),
                                                       ("cql", "pendulum_medium", "torch")])
def test_a_stopped_group_resumes_exactly(kind, data, backend, request, tmp_path, monkeypatch):
    """For CQL this also checks the seeds' random streams: each resumes from its own checkpointed state."""
    monkeypatch.setenv("CKPT_BACKEND", backend)
    dataset = request.getfixturevalue(data)
    evaluator = _cql_evaluator if kind == "cql" else _evaluator
    full = _trainers(kind, dataset, tmp_path, tag="full")
    VectorizedSeeds(full, handle_signals=False).train()

    stop = {"at": 10}
    first = _trainers(kind, dataset, tmp_path, tag="part", stop=stop)
    stop["group"] = group = VectorizedSeeds(first, handle_signals=False)
    group.train()
    assert group.stopped and all(t.step == 10 and t.saved_step == 10 for t in first)

    resumed = []
    for seed, old in zip(SEEDS, first, strict=True):
        trainer, _ = make_trainer(kind, dataset, seed=seed, logger=old.logger, evaluator=evaluator(),
                                  save_trainer_file=old.save_trainer_file, **COMMON)
        trainer.load_from_file(old.save_trainer_file)
        trainer.hold_rng()
        resumed.append(trainer)
    VectorizedSeeds(resumed, handle_signals=False).train()
    for a, b in zip(full, resumed, strict=True):
        assert b.step == STEPS
        wa, wb = weights(a.loss_module), weights(b.loss_module)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        assert a.logger.comparable() == b.logger.comparable()  # bit for bit, not within a tolerance

    # one seed of the stopped group can also go on alone (plain offrl train --resume RUN)
    seed, old = SEEDS[1], first[1]
    alone, _ = make_trainer(kind, dataset, seed=seed, logger=ListLogger(), evaluator=evaluator(),
                            save_trainer_file=tmp_path / "alone.pt", **COMMON)
    alone.load_from_file(old.save_trainer_file)
    alone.train()
    _close(weights(alone.loss_module), weights(full[1].loss_module))


def test_a_diverging_seed_stops_the_group_after_the_others_checkpoint(cartpole_medium, tmp_path):
    trainers = _trainers("dqn", cartpole_medium, tmp_path, tag="nan", cfg=SMALL_DQN)
    group = VectorizedSeeds(trainers, handle_signals=False)
    with torch.no_grad():
        group.loss.params[0][1].fill_(float("nan"))  # seed 3's first layer
    with pytest.raises(NonFiniteLossError, match="became nan"):
        group.train()
    assert trainers[1].stop_reason == "diverged" and trainers[1].saved_step == -1
    for t in (trainers[0], trainers[2]):
        assert t.stopped and t.saved_step == 4 and load_checkpoint(t.save_trainer_file)["step"] == 4


def test_refuses_seeds_it_cannot_batch(cartpole_medium, pendulum_medium, tmp_path):
    def group(*pairs):
        return VectorizedSeeds([make_trainer(kind, data, seed=i, handle_signals=False, **kw)[0]
                                for i, (kind, data, kw) in enumerate(pairs)])

    small = dict(offline_steps=4)
    with pytest.raises(UserError, match="same settings"):
        group(("dqn", cartpole_medium, small), ("dqn", cartpole_medium, {"offline_steps": 5}))
    with pytest.raises(UserError, match="same trainer"):
        group(("dqn", cartpole_medium, small), ("dcql", cartpole_medium, small))
    with pytest.raises(UserError, match="fp32"):
        group(("dqn", cartpole_medium, {**small, "precision": "bf16"}),
              ("dqn", cartpole_medium, {**small, "precision": "bf16"}))
    with pytest.raises(UserError, match="fused continuous CQL loss"):
        unfused = SMALL_CQL.__class__(**{**SMALL_CQL.__dict__, "fused": False})
        group(("cql", pendulum_medium, {**small, "cfg": unfused}), ("cql", pendulum_medium, {**small, "cfg": unfused}))
    with pytest.raises(UserError, match="hold_rng"):  # CQL seeds would otherwise share one action-noise stream
        group(("cql", pendulum_medium, small), ("cql", pendulum_medium, small))
    with pytest.raises(UserError, match="same bc_steps"):
        group(("cql", pendulum_medium, {**small, "bc_steps": 2}), ("cql", pendulum_medium, small))
    with pytest.raises(UserError, match="update_order=joint only; run the seeds without --vectorize"):
        critic_first = {**small, "update_order": "critic_first"}
        group(("cql", pendulum_medium, critic_first), ("cql", pendulum_medium, critic_first))
