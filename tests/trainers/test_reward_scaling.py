"""Training with a reward scaler is training on scaled rewards: the same parameters, step for step, as a run
without one on a file whose rewards were scaled beforehand; the stored data stays raw, and the critic
diagnostics compare the critic with returns in the same scaled units."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers.engine import SMALL_CQL, SMALL_DQN, make_trainer, weights

from offrl.algos import calql
from offrl.data import load_dataset
from offrl.data.reward_scaling import RewardScaler, fit_reward_scaler
from offrl.errors import UserError
from offrl.evaluation import Evaluator
from offrl.trainers import CQLTrainer, DQNTrainer

STEPS = 25
# (fixture, config, reward_scaler, reward_scale, reward_bias): every fitted kind and the plain affine one
SETUP = {
    "cql-standard": ("pendulum", SMALL_CQL, "standard", 1.0, 0.0),
    "cql-affine": ("pendulum", SMALL_CQL, "none", 0.1, -1.0),
    "cql-min_max": ("pendulum", SMALL_CQL, "min_max", 2.0, 0.0),
    "dqn-return_based": ("cartpole", SMALL_DQN, "return_based", 100.0, 0.5),
}


def _prescaled(source: str, scaler: RewardScaler, root: Path) -> object:
    """A copy of the file whose rewards went through ``scaler``."""
    with h5py.File(source) as src:
        arrays = {k: src[k][()] for k in src}
        attrs = dict(src.attrs)
    arrays["rewards"] = scaler(torch.as_tensor(arrays["rewards"])).numpy()
    path = root / "prescaled.hdf5"
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
        f.attrs.update(attrs)
    return load_dataset(path, cache_dir=root / "cache")


@pytest.mark.parametrize("case", list(SETUP))
def test_scaled_run_equals_a_run_on_prescaled_rewards(case, request, tmp_path):
    fixture, cfg, kind, scale, bias = SETUP[case]
    algo = case.split("-")[0]
    source = request.getfixturevalue(fixture)
    raw = load_dataset(source, cache_dir=tmp_path / "cache")
    stored = raw.data["next", "reward"].clone()
    asked = dataclasses.replace(cfg, reward_scaler=kind, reward_scale=scale, reward_bias=bias)
    if algo == "cql":
        cfg, asked = (dataclasses.replace(c, actor_bc_weight=0.0) for c in (cfg, asked))
    scaled, parts = make_trainer(algo, raw, cfg=asked, offline_steps=STEPS)
    scaled.train()
    scaler = parts.reward_scaler
    assert isinstance(scaler, RewardScaler) and scaled.reward_scaler is scaler
    pre = _prescaled(source, scaler, tmp_path)
    plain, plain_parts = make_trainer(algo, pre, cfg=cfg, offline_steps=STEPS)
    plain.train()
    assert plain_parts.reward_scaler is None
    a, b = weights(scaled.loss_module), weights(plain.loss_module)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert torch.equal(raw.data["next", "reward"], stored)  # sampling scales copies, never the storage
    unscaled, _ = make_trainer(algo, raw, cfg=cfg, offline_steps=STEPS)  # and it is not a no-op
    unscaled.train()
    assert any(not torch.equal(a[k], v) for k, v in weights(unscaled.loss_module).items())
    # the diagnostics: the TD error and Q columns read in the critic's units, as on the prescaled file; V(s0)
    # (the prescaled critic's, in scaled units) is mapped back to the env's units beside the data's raw MC
    # return: minus the shift times sum(gamma^k) to the episode's termination (forever where it was truncated:
    # the critic bootstraps there), over the multiplier
    ours = Evaluator(raw, critic=scaled.loss_module, episodes=0)(parts.policy, STEPS)
    theirs = Evaluator(pre, critic=plain.loss_module, episodes=0)(plain_parts.policy, STEPS)
    for key in ("diag_td_error", "diag_q_data", "diag_q_policy"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
    raw_mc = Evaluator(raw, critic=unscaled.loss_module, episodes=0)(parts.policy, STEPS)["diag_mc_return_s0"]
    assert ours["diag_mc_return_s0"] == raw_mc != pytest.approx(theirs["diag_mc_return_s0"], rel=1e-3)
    gamma = raw.info.gamma
    episode = raw.data["episode"].reshape(-1).numpy()
    terminal = raw.data["next", "terminated"].reshape(-1).numpy()
    horizon = [(1 - gamma ** (episode == e).sum()) / (1 - gamma) if terminal[episode == e].any() else 1 / (1 - gamma)
               for e in episode[raw.data["step"].reshape(-1).numpy() == 0]]
    expected = (theirs["diag_v_s0"] - scaler.shift * np.mean(horizon)) / scaler.multiplier
    assert ours["diag_v_s0"] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_fitted_values_match_numpy(pendulum, cartpole, tmp_path):
    data = load_dataset(pendulum, cache_dir=tmp_path)
    r = data.data["next", "reward"].reshape(-1).double().numpy()
    std = fit_reward_scaler("standard", data)
    assert std.multiplier == pytest.approx(1 / (r.std() + 1e-3)) and std.shift == pytest.approx(
        -r.mean() / (r.std() + 1e-3))
    mm = fit_reward_scaler("min_max", data, scale=3.0, bias=1.0)
    assert mm(torch.tensor([r.min(), r.max()])).tolist() == pytest.approx([1.0, 4.0])
    ep = data.data["episode"].reshape(-1).numpy()
    returns = np.array([r[ep == e].sum() for e in np.unique(ep)])
    rb = fit_reward_scaler("return_based", data, scale=1000.0)
    assert rb.multiplier == pytest.approx(1000.0 / (returns.max() - returns.min())) and rb.shift == 0.0
    assert fit_reward_scaler("none", None) is None  # nothing changes the rewards: no scaler at all
    plain = fit_reward_scaler("none", None, scale=5.0, bias=-4.0)  # the authors' AntMaze-style (r - 0.8) * 5
    assert plain(torch.tensor([1.0])).item() == pytest.approx(1.0)
    # a discounted return over n rewards maps as the rewards do, summed
    g = np.array([np.sum(0.9 ** np.arange(4) * np.array([1.0, 2.0, 0.5, 3.0]))])
    scaled_g = np.sum(0.9 ** np.arange(4) * (5.0 * np.array([1.0, 2.0, 0.5, 3.0]) - 4.0))
    assert plain.returns(g, [4], 0.9)[0] == pytest.approx(scaled_g)
    assert plain.returns(np.array([10.0]), [3], 1.0)[0] == pytest.approx(5.0 * 10 - 12.0)
    # and a mean of values learnt on scaled rewards maps back (the inverse, averaged over the horizons)
    values = plain.returns(np.array([10.0, -3.0]), [3, 7], 0.9)
    assert plain.unscale_value(values.mean(), [3, 7], 0.9) == pytest.approx(3.5)


@pytest.mark.parametrize(("kind", "scale", "bias", "message"), [
    ("zscore", 1.0, 0.0, r"cql.reward_scaler: use one of none, standard, min_max, return_based, got 'zscore'"),
    ("none", 0.0, 0.0, r"cql.reward_scale: must be a finite number > 0, got 0.0"),
    ("none", float("nan"), 0.0, r"cql.reward_scale: must be a finite number > 0"),
    ("none", 1.0, float("inf"), r"cql.reward_bias: must be a finite number, got inf"),
])
def test_bad_settings_are_one_line(kind, scale, bias, message):
    with pytest.raises(UserError, match=message):
        fit_reward_scaler(kind, None, scale=scale, bias=bias, section="cql")


def test_constant_rewards_and_from_scratch_are_refused(cartpole, tmp_path):
    data = load_dataset(cartpole, cache_dir=tmp_path)  # CartPole: reward 1 on every step
    with pytest.raises(UserError, match=r"min_max: every reward of .* is 1, so there is no range to map"):
        fit_reward_scaler("min_max", data, section="dqn")
    with pytest.raises(UserError, match=r"dqn.reward_scaler=standard is fitted on a dataset's rewards, and a run "
                                        r"trained online from scratch has none"):
        fit_reward_scaler("standard", None, section="dqn")


def test_calql_refuses_a_shift_and_scales_its_bound(pendulum_medium):
    with pytest.raises(UserError, match=r"Cal-QL's Monte-Carlo bound cannot follow a reward shift"):
        calql.build_from_dataset(dataclasses.replace(SMALL_CQL, reward_bias=-1.0), pendulum_medium)
    parts = calql.build_from_dataset(dataclasses.replace(SMALL_CQL, reward_scaler="return_based"), pendulum_medium)
    trainer = CQLTrainer(loss_module=parts.loss_module, optimizer=parts.optimizer,
                         replay_buffer=pendulum_medium.replay_buffer(8), offline_steps=1, progress_bar=False)
    batch = pendulum_medium.data[torch.arange(8)]
    seen = trainer._scaled(batch)
    a = parts.reward_scaler.multiplier
    torch.testing.assert_close(seen["mc_return"], batch["mc_return"] * a)
    torch.testing.assert_close(seen["next", "reward"], batch["next", "reward"] * a)
    shifted = RewardScaler("none", 2.0, 1.0).scale_batch(batch)
    assert "mc_return" not in shifted.keys() and "mc_return" in batch.keys()  # no exact value: left out


def test_trainers_take_the_scaler_from_the_loss_and_reject_other_types(cartpole_medium):
    cfg = dataclasses.replace(SMALL_DQN, reward_scaler="return_based")
    _, parts = make_trainer("dqn", cartpole_medium, cfg=cfg, offline_steps=1)
    bare = DQNTrainer(loss_module=parts.loss_module, optimizer=parts.optimizer,
                      replay_buffer=cartpole_medium.replay_buffer(8), offline_steps=1, progress_bar=False)
    assert bare.reward_scaler is parts.reward_scaler is not None
    assert not any("reward" in k for k in parts.loss_module.state_dict())  # checkpoints unchanged
    with pytest.raises(UserError, match="reward_scaler must be an offrl.data.reward_scaling.RewardScaler"):
        DQNTrainer(loss_module=parts.loss_module, replay_buffer=cartpole_medium.replay_buffer(8), offline_steps=1,
                   reward_scaler=2.0, progress_bar=False)


def test_seeds_batch_together_only_with_the_same_scaling(cartpole_medium):
    from offrl.trainers.vectorized import vectorize_reason

    def trainer(seed: int, **cfg: object) -> DQNTrainer:
        return make_trainer("dqn", cartpole_medium, seed=seed, cfg=dataclasses.replace(SMALL_DQN, **cfg),
                            offline_steps=1)[0]

    assert vectorize_reason([trainer(0, reward_scale=0.5), trainer(1, reward_scale=0.5)]) is None
    assert vectorize_reason([trainer(0, reward_scale=0.5), trainer(1)]) == "every seed must scale rewards the same way"
    assert vectorize_reason([trainer(0, observation_scaler="standard"), trainer(1)]) == \
        "every seed must scale observations the same way"
