"""Training with an observation scaler is training on scaled data: the same parameters, step for step, as a
run without one on a file whose observations were scaled beforehand; the policies and the critic read the
env's raw observations, and the stored data stays raw."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import pytest
import torch
from helpers.engine import SMALL_CQL, SMALL_DQN, make_trainer, weights
from tensordict import TensorDict

from offrl.data import load_dataset
from offrl.data.scaling import fit_observation_scaler
from offrl.evaluation import critic_from_loss
from offrl.trainers import CQLTrainer

STEPS = 25
SETUP = {"cql": ("pendulum", SMALL_CQL, "standard"), "dqn": ("cartpole", SMALL_DQN, "min_max")}


def _prescaled(source: str, kind: str, root: Path) -> tuple[object, object]:
    """The file as it is, and a copy whose observations went through the scaler fitted on it."""
    raw = load_dataset(source, cache_dir=root / "cache")
    scaler = fit_observation_scaler(kind, raw)
    with h5py.File(source) as src:
        arrays = {k: src[k][()] for k in src}
        attrs = dict(src.attrs)
    for key in ("observations", "next_observations"):
        arrays[key] = scaler(torch.as_tensor(arrays[key])).numpy()
    path = root / f"prescaled-{kind}.hdf5"
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
        f.attrs.update(attrs)
    return raw, load_dataset(path, cache_dir=root / "cache")


@pytest.mark.parametrize("algo", ["cql", "dqn"])
def test_scaled_run_equals_a_run_on_prescaled_data(algo, request, tmp_path):
    fixture, cfg, kind = SETUP[algo]
    raw, pre = _prescaled(request.getfixturevalue(fixture), kind, tmp_path)
    stored = raw.data["observation"].clone()
    if algo == "cql":
        cfg = dataclasses.replace(cfg, actor_bc_weight=0.0)  # the same setting on both files, whatever the data
    # each built right before it trains: a trainer seeds the process RNG that CQL's loss draws from
    scaled, parts = make_trainer(algo, raw, cfg=dataclasses.replace(cfg, observation_scaler=kind),
                                 offline_steps=STEPS)
    scaled.train()
    plain, plain_parts = make_trainer(algo, pre, cfg=cfg, offline_steps=STEPS)
    plain.train()
    assert parts.observation_scaler is not None and plain_parts.observation_scaler is None
    a, b = weights(scaled.loss_module), weights(plain.loss_module)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert torch.equal(raw.data["observation"], stored)  # sampling scaled copies, never the storage
    # the policy reads raw observations: on the raw file's rows it acts as the plain policy on scaled rows
    rows = torch.arange(0, len(raw), 7)
    act = parts.policy(TensorDict(observation=raw.data["observation"][rows], batch_size=[len(rows)]))
    ref = plain_parts.policy(TensorDict(observation=pre.data["observation"][rows], batch_size=[len(rows)]))
    assert torch.equal(act["action"], ref["action"])
    assert torch.equal(act["observation"], raw.data["observation"][rows])  # what a collector stores: raw
    # ... and so does the critic behind the diagnostics
    critic = critic_from_loss(scaled.loss_module, parts.observation_scaler)
    plain_critic = critic_from_loss(plain.loss_module)
    torch.testing.assert_close(critic.v(raw.data["observation"][rows]), plain_critic.v(pre.data["observation"][rows]),
                               rtol=0, atol=0)
    # and the scaling is not a no-op on this data
    unscaled, _ = make_trainer(algo, raw, cfg=cfg, offline_steps=STEPS)
    unscaled.train()
    assert any(not torch.equal(a[k], v) for k, v in weights(unscaled.loss_module).items())


def test_update_scales_a_raw_batch_as_training_does(request, tmp_path):
    fixture, cfg, kind = SETUP["dqn"]
    raw, pre = _prescaled(request.getfixturevalue(fixture), kind, tmp_path)
    scaled, _ = make_trainer("dqn", raw, cfg=dataclasses.replace(cfg, observation_scaler=kind), offline_steps=1)
    plain, _ = make_trainer("dqn", pre, cfg=cfg, offline_steps=1)
    rows = torch.arange(0, 64)
    batch = raw.data[rows].clone()
    given = batch.clone()
    for _ in range(3):  # torchrl's Trainer.update(batch): the batch as a replay buffer returns it, used again
        out = scaled.update(batch)
        ref = plain.update(pre.data[rows].clone())
        assert torch.equal(out["loss"], ref["loss"])
        assert (batch == given).all()  # the caller's batch is not scaled in place (nor its "next" entries)
    for key, value in weights(plain.loss_module).items():
        assert torch.equal(weights(scaled.loss_module)[key], value), key


def test_the_trainer_finds_the_scaler_on_the_loss_and_rejects_other_types(pendulum_medium):
    cfg = dataclasses.replace(SMALL_CQL, observation_scaler="standard")
    _, parts = make_trainer("cql", pendulum_medium, cfg=cfg, offline_steps=1)
    # built as the README's example builds it: no trainer_kwargs, the scaler comes with the loss
    bare = CQLTrainer(loss_module=parts.loss_module, optimizer=parts.optimizer,
                      replay_buffer=pendulum_medium.replay_buffer(8), offline_steps=1, progress_bar=False)
    assert bare.observation_scaler is parts.observation_scaler is parts.policy.scaler
    assert "observation_scaler.loc" not in parts.loss_module.state_dict()  # checkpoints unchanged
    with pytest.raises(Exception, match="observation_scaler must be an offrl.data.scaling.ObservationScaler"):
        CQLTrainer(loss_module=parts.loss_module, replay_buffer=pendulum_medium.replay_buffer(8), offline_steps=1,
                   observation_scaler=lambda x: x, progress_bar=False)
