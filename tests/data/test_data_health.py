"""Health warnings, each triggered by a crafted real file, and silent on clean data."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from helpers.datafiles import cartpole_episodes, write_d4rl, write_minari

from offrl.data import check, load_dataset
from offrl.errors import UserError


def _warnings(path, **kwargs):
    return load_dataset(path, **kwargs).info.warnings


def _has(warnings, text):
    return any(text in w for w in warnings)


def test_clean_data_has_no_warnings(tmp_path):
    write_d4rl(tmp_path / "d.hdf5", next_observations=True)
    ds = load_dataset(tmp_path / "d.hdf5")
    assert ds.info.warnings == []
    assert check(ds.data, had_next_observations=True) == []


def test_time_limits_mislabelled_as_terminals(tmp_path):
    write_d4rl(tmp_path / "d.hdf5", lengths=(10, 10, 10), terminal=(True, True, True))
    ws = _warnings(tmp_path / "d.hdf5")
    assert _has(ws, "mislabelled as terminals")


def test_terminal_flags_on_consecutive_rows(tmp_path):
    write_d4rl(tmp_path / "d.hdf5", lengths=(6, 1, 1, 5), terminal=(True, True, True, False))
    ws = _warnings(tmp_path / "d.hdf5")
    assert _has(ws, "2 terminal flags on consecutive rows")


def test_next_observations_that_disagree_with_the_next_row(tmp_path):
    arrays = write_d4rl(tmp_path / "ok.hdf5", next_observations=True)
    nxt = arrays["next_observations"].copy()
    nxt[3] += 1.0  # inside episode 0
    write_d4rl(tmp_path / "bad.hdf5", next_observations=True, overrides={"next_observations": nxt})
    ws = _warnings(tmp_path / "bad.hdf5")
    assert _has(ws, "1 next_observations differ from the next row inside an episode (first at transition 3)")
    # The same data checked on the converted TensorDict, in small chunks, agrees.
    ds = load_dataset(tmp_path / "bad.hdf5")
    assert check(ds.data, had_next_observations=True, chunk_size=4) == ds.info.warnings


def test_timeouts_that_disagree_with_max_episode_steps(tmp_path):
    # hopper-* maps to Hopper-v5 (time limit 1000); these episodes time out after 1200 steps.
    write_d4rl(
        tmp_path / "hopper-medium-v2.hdf5",
        lengths=(1200, 1200),
        terminal=(False, False),
        obs_dim=11,
        act_dim=3,
    )
    ws = _warnings(tmp_path / "hopper-medium-v2.hdf5")
    assert _has(ws, "longer than the env's max_episode_steps=1000")

    # A Minari CartPole dataset (time limit 500) whose episodes are all truncated at 7 steps.
    eps = cartpole_episodes((7, 7, 7), last_truncated=True)
    for ep in eps:
        ep["terminations"][:] = False
        ep["truncations"][-1] = True
    space = gym.make("CartPole-v1")
    write_minari(
        "test/cartpole/short-v0",
        eps,
        observation_space=space.observation_space,
        action_space=space.action_space,
        env="CartPole-v1",
    )
    ws = _warnings("test/cartpole/short-v0")
    assert _has(ws, "all 3 truncated episodes have length 7 but the env's max_episode_steps is 500")


def test_constant_columns_and_large_rewards(tmp_path):
    arrays = write_d4rl(tmp_path / "ok.hdf5")
    obs = arrays["observations"].copy()
    obs[:, 2] = 0.5
    write_d4rl(tmp_path / "d.hdf5", overrides={"observations": obs, "rewards": arrays["rewards"] * 1e4})
    ws = _warnings(tmp_path / "d.hdf5")
    assert _has(ws, "1 constant observation column(s) [2]")
    assert _has(ws, "very large reward scale")


def test_nan_is_an_error_unless_allowed(tmp_path):
    arrays = write_d4rl(tmp_path / "ok.hdf5")
    rewards = arrays["rewards"].copy()
    rewards[5] = np.nan
    write_d4rl(tmp_path / "nan.hdf5", overrides={"rewards": rewards})
    with pytest.raises(UserError, match=r"nan\.hdf5: NaN/inf values in reward .*--allow-nan"):
        load_dataset(tmp_path / "nan.hdf5")
    ds = load_dataset(tmp_path / "nan.hdf5", allow_nan=True)
    assert _has(ds.info.warnings, "1 NaN/inf values in reward")
    # The cache now holds it, but loading without allow_nan still refuses.
    with pytest.raises(UserError, match="NaN/inf"):
        load_dataset(tmp_path / "nan.hdf5")


def test_health_across_chunk_boundaries_matches_one_pass(tmp_path):
    arrays = write_d4rl(
        tmp_path / "ok.hdf5", lengths=(10, 7, 13), terminal=(False, True, True), next_observations=True
    )
    nxt = arrays["next_observations"].copy()
    nxt[[4, 5, 20]] += 1.0  # 4|5 straddle a chunk boundary at chunk_size=5
    write_d4rl(
        tmp_path / "bad.hdf5",
        lengths=(10, 7, 13),
        terminal=(False, True, True),
        next_observations=True,
        overrides={"next_observations": nxt},
    )
    whole = load_dataset(tmp_path / "bad.hdf5", cache_dir=tmp_path / "a")
    small = load_dataset(tmp_path / "bad.hdf5", cache_dir=tmp_path / "b", chunk_size=5)
    assert whole.info.warnings == small.info.warnings
    assert _has(
        whole.info.warnings,
        "3 next_observations differ from the next row inside an episode (first at transition 4)",
    )
    for size in (1, 4, 5, 64):
        assert check(whole.data, had_next_observations=True, chunk_size=size) == whole.info.warnings


def test_nan_error_names_the_first_row_and_column(tmp_path):
    arrays = write_d4rl(tmp_path / "ok.hdf5", lengths=(100, 100), terminal=(False, True))
    obs = arrays["observations"].copy()
    obs[7, 2] = np.nan
    obs[150, 1] = np.inf
    write_d4rl(tmp_path / "nan.hdf5", lengths=(100, 100), terminal=(False, True), overrides={"observations": obs})
    for chunk in (None, 7, 4):  # a chunk boundary just before the bad row must not move the blame
        with pytest.raises(UserError, match=r"observations row 7, column 2 is NaN") as err:
            load_dataset(tmp_path / "nan.hdf5", cache_dir=tmp_path / f"c{chunk}", chunk_size=chunk)
        assert "rows 0.." not in str(err.value)
    ds = load_dataset(tmp_path / "nan.hdf5", cache_dir=tmp_path / "c", allow_nan=True)
    assert ds.info.warnings[0].startswith("2 NaN/inf values")
    with pytest.raises(UserError, match=r"first: observations row 7, column 2 is NaN"):
        load_dataset(tmp_path / "nan.hdf5", cache_dir=tmp_path / "c")


def test_return_distribution_and_normalized_score(tmp_path):
    write_d4rl(tmp_path / "d.hdf5", lengths=(10, 7, 13, 5), terminal=(True, True, True, True))
    ds = load_dataset(tmp_path / "d.hdf5", ref_min_score=-10.0, ref_max_score=10.0)
    dist = ds.info.to_dict()["episode_return_distribution"]
    assert list(dist) == ["min", "q25", "median", "q75", "max"]
    assert dist["min"] <= dist["q25"] <= dist["median"] <= dist["q75"] <= dist["max"]
    assert dist["min"] == pytest.approx(ds.info.episode_return["min"])
    score = ds.info.to_dict()["normalized_score"]
    assert score["mean"] == pytest.approx(100 * (ds.info.episode_return["mean"] + 10) / 20)
    assert load_dataset(tmp_path / "d.hdf5").info.normalized_score is None


def test_a_file_without_env_says_how_to_give_one(tmp_path):
    write_d4rl(tmp_path / "mine.hdf5")
    info = load_dataset(tmp_path / "mine.hdf5").info
    assert info.env_id is None
    assert "--env ID" in info.env_note and "--set dataset.env_id=" in info.env_note


def test_env_given_checks_spaces_and_time_limit(tmp_path):
    # Pendulum-v1: 3-dim observations, 1-dim actions, time limit 200; these episodes run 250 steps.
    write_d4rl(tmp_path / "pend.hdf5", lengths=(250, 250), terminal=(False, False), obs_dim=3, act_dim=1)
    info = load_dataset(tmp_path / "pend.hdf5", env="Pendulum-v1").info
    assert info.max_episode_steps == 200
    assert any("longer than the env's max_episode_steps=200" in w for w in info.warnings)
    assert not any("longer than" in w for w in load_dataset(tmp_path / "pend.hdf5").info.warnings)
    with pytest.raises(UserError, match=r"pend\.hdf5: observations have shape \(3,\) but env CartPole-v1") as err:
        load_dataset(tmp_path / "pend.hdf5", env="CartPole-v1")
    assert "\n" not in str(err.value)
    write_d4rl(tmp_path / "act.hdf5", obs_dim=3, act_dim=2)
    with pytest.raises(UserError, match=r"act\.hdf5: actions have shape \(2,\) but env Pendulum-v1"):
        load_dataset(tmp_path / "act.hdf5", env="Pendulum-v1")
