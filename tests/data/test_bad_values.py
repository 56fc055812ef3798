"""Bad values in every reader (D4RL-style HDF5, .npz, d3rlpy 2.x, Minari): non-numeric or complex rewards and
next observations, flags that are not 0/1, all-NaN or non-flat actions, float actions under a Discrete space,
malformed metadata. Each is one ``offrl: error:`` line naming the file and the key, exit code 2, and nothing in
the cache. Also: integer vector observations are stored as float32 and train; Dict observations get a coverage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
from helpers.datafiles import cartpole_episodes, write_d4rl, write_minari

from offrl.data import load_dataset
from offrl.data.coverage import action_coverage

N = 30


def _cache_is_empty() -> bool:
    datasets = Path(os.environ["OFFRL_CACHE"]) / "datasets"
    return not datasets.exists() or not os.listdir(datasets)


def _check(offrl_cli, assert_user_error, target, *needles, extra=()):
    line = assert_user_error(offrl_cli("datasets", "info", *extra, str(target)), *needles)
    assert _cache_is_empty(), line
    return line


# --------------------------------------------------------------------------- D4RL-style HDF5
def _d4rl(tmp_path, name, **kwargs):
    path = tmp_path / name
    write_d4rl(path, **kwargs)
    return path


D4RL_CASES = {
    "str_rewards": (dict(overrides={"rewards": np.array([b"abc"] * 30)}), ("'rewards'", "|S3", "real numbers")),
    "numeric_str_rewards": (dict(overrides={"rewards": np.array([b"1.5"] * 30)}), ("'rewards'", "real numbers")),
    "complex_rewards": (dict(overrides={"rewards": np.ones(30, np.complex64)}), ("'rewards'", "complex64")),
    "str_next_observations": (dict(next_observations=True, overrides={"next_observations": np.full((30, 3), b"x")}),
                              ("'next_observations'", "real numbers")),
    "all_nan_action_column": (dict(overrides={"actions": np.stack([np.zeros(30), np.full(30, np.nan)], 1)}),
                              ("'actions' column 1 is NaN in every row",)),
    "actions_3d": (dict(overrides={"actions": np.zeros((30, 1, 1), np.float32)}),
                   ("continuous 'actions' have shape (N, 1, 1)", "reshape them to (N, 1)")),
    "action_size_str": (dict(overrides={"actions": np.zeros(30, np.int64)}, attrs={"action_size": "two"}),
                        ("attribute 'action_size' is 'two'",)),
}


@pytest.mark.parametrize("case", list(D4RL_CASES))
def test_d4rl_bad_values(tmp_path, offrl_cli, assert_user_error, case):
    kwargs, needles = D4RL_CASES[case]
    path = _d4rl(tmp_path, f"{case}.hdf5", lengths=(10, 10, 10), terminal=(False, True, False), **kwargs)
    _check(offrl_cli, assert_user_error, path, path.name, *needles)


def test_all_nan_action_column_even_with_allow_nan(tmp_path, offrl_cli, assert_user_error):
    path = _d4rl(tmp_path, "nan.hdf5", lengths=(10, 10, 10), terminal=(False, True, False),
                 overrides={"actions": np.full((30, 1), np.nan, np.float32)})
    _check(offrl_cli, assert_user_error, path, "'actions' column 0", extra=("--allow-nan",))


def test_integer_vector_observations_are_stored_as_float32_and_train(tmp_path, offrl_cli):
    obs = np.arange(30 * 3, dtype=np.int8).reshape(30, 3)
    path = _d4rl(tmp_path, "int8.hdf5", lengths=(10, 10, 10), terminal=(False, True, False),
                 overrides={"observations": obs})
    ds = load_dataset(path, cache_dir=tmp_path / "c")
    assert ds.info.observation_dtype == "float32"
    assert ds.data["observation"].dtype.is_floating_point
    np.testing.assert_array_equal(ds.data["observation"][:3].numpy(), obs[:3].astype(np.float32))
    run = offrl_cli("train", "--dataset", str(path), "--steps", "2", "--batch-size", "16", "--eval-every", "0",
                    "--no-progress", "--out", str(tmp_path / "runs"))
    assert run.returncode == 0, run.stderr


# --------------------------------------------------------------------------- .npz
def _npz(tmp_path, name, **override):
    rng = np.random.default_rng(0)
    starts = np.zeros(N, bool)
    starts[[0, 10, 20]] = True
    arrays = {"obs": rng.standard_normal((N, 4)), "actions": rng.uniform(-1, 1, (N, 2)),
              "rewards": rng.standard_normal(N), "episode_starts": starts}
    arrays.update(override)
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


NPZ_CASES = {
    "str_rewards": (dict(rewards=np.array(["a"] * N)), ("'rewards'", "real numbers")),
    "complex_rewards": (dict(rewards=np.ones(N, np.complex64)), ("'rewards'", "complex64")),
    "str_next_obs": (dict(next_obs=np.full((N, 4), "x")), ("'next_obs'", "real numbers")),
    "all_nan_actions": (dict(actions=np.full((N, 2), np.nan)), ("'actions' column 0 is NaN in every row",)),
    "actions_3d": (dict(actions=np.zeros((N, 1, 2))), ("continuous 'actions' have shape (N, 1, 2)",)),
    "str_dones": (dict(dones=np.array(["False"] * N)), ("'dones'", "0/1 flags")),
    "half_dones": (dict(dones=np.full(N, 0.5)), ("'dones' holds 0.5", "flags must be 0 or 1")),
    "half_starts": (dict(episode_starts=np.r_[1.0, np.full(N - 1, 0.5)], next_obs=np.zeros((N, 4))),
                    ("'episode_starts' holds 0.5 at row 1",)),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_npz_bad_values(tmp_path, offrl_cli, assert_user_error, case):
    override, needles = NPZ_CASES[case]
    path = _npz(tmp_path, f"{case}.npz", **override)
    _check(offrl_cli, assert_user_error, path, path.name, *needles)


# --------------------------------------------------------------------------- d3rlpy 2.x
def _d3rlpy2(path, *, lengths=(10, 12), discrete=False, obs=None, mutate=None):
    """A d3rlpy 2.x dump's layout (``ReplayBuffer.dump``), written with h5py."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["columns"] = np.array([b"observations", b"actions", b"rewards", b"terminated"])
        f["num_episodes"] = len(lengths)
        f["version"] = "2.1"
        for i, t in enumerate(lengths):
            f[f"observations_{i}"] = rng.standard_normal((t, 3)).astype(np.float32) if obs is None else obs[i]
            f[f"actions_{i}"] = rng.integers(0, 3, (t, 1)) if discrete else rng.uniform(-1, 1, (t, 2))
            f[f"rewards_{i}"] = rng.standard_normal((t, 1)).astype(np.float32)
            f[f"terminated_{i}"] = np.float32(i == 0)
        if mutate:
            mutate(f)
    return path


def _replace(key, value):
    def mutate(f):
        del f[key]
        f[key] = value

    return mutate


D3RLPY_CASES = {
    "str_rewards": (_replace("rewards_0", np.full((10, 1), b"a")), ("'rewards_0'", "real numbers")),
    "num_episodes_str": (_replace("num_episodes", b"two"), ("'num_episodes' is 'two'",)),
    "terminated_empty": (_replace("terminated_0", np.zeros(0)), ("'terminated_0' holds 0 values",)),
    "terminated_str": (_replace("terminated_0", b"False"), ("'terminated_0'", "0/1 flags")),
    "terminated_half": (_replace("terminated_0", np.float32(0.5)), ("'terminated_0' holds 0.5",)),
    "all_nan_actions": (lambda f: [_replace(f"actions_{i}", np.c_[np.zeros(t), np.full(t, np.nan)])(f)
                                   for i, t in ((0, 10), (1, 12))], ("'actions' column 1 is NaN in every row",)),
    "actions_3d": (lambda f: [_replace(f"actions_{i}", np.zeros((t, 1, 2)))(f) for i, t in ((0, 10), (1, 12))],
                   ("continuous 'actions' have shape (N, 1, 2)",)),
}


@pytest.mark.parametrize("case", list(D3RLPY_CASES))
def test_d3rlpy2_bad_values(tmp_path, offrl_cli, assert_user_error, case):
    mutate, needles = D3RLPY_CASES[case]
    path = _d3rlpy2(tmp_path / f"{case}.h5", mutate=mutate)
    _check(offrl_cli, assert_user_error, path, path.name, *needles)


def test_d3rlpy2_float_actions_after_discrete_ones(tmp_path, offrl_cli, assert_user_error):
    path = _d3rlpy2(tmp_path / "floatep.h5", discrete=True, mutate=_replace("actions_1", np.full((12, 1), 0.7)))
    _check(offrl_cli, assert_user_error, path, path.name, "'actions_1' hold non-integer values")


def test_tuple_observations_get_a_coverage(tmp_path, offrl_cli):
    """A tuple observation (a Dict in offrl) with continuous actions: the coverage uses the leaves side by side."""
    rng = np.random.default_rng(1)
    def tuple_obs(f):  # d3rlpy's layout of a tuple observation: observations_<i>_<j>
        for i, t in enumerate((20, 22)):
            del f[f"observations_{i}"]
            f[f"observations_{i}_0"] = rng.standard_normal((t, 3)).astype(np.float32)
            f[f"observations_{i}_1"] = rng.standard_normal((t, 2)).astype(np.float32)

    path = _d3rlpy2(tmp_path / "tuple.h5", lengths=(20, 22), mutate=tuple_obs)
    coverage = action_coverage(load_dataset(path, cache_dir=tmp_path / "c"))
    assert coverage is not None and 0.5 < coverage.action_spread < 1.5  # uniform random actions
    info = offrl_cli("datasets", "info", str(path))
    assert info.returncode == 0 and "action spread" in info.stdout, info.stderr


# --------------------------------------------------------------------------- Minari
def _minari(dataset_id, *, episodes=None, observation_space=None, action_space=None, mutate=None):
    episodes = episodes or cartpole_episodes((12, 14, 10))
    folder = write_minari(dataset_id, episodes,
                          observation_space=observation_space or gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
                          action_space=action_space or gym.spaces.Discrete(2))
    if mutate:
        with h5py.File(folder / "data" / "main_data.hdf5", "a") as f:
            mutate(f)
    return folder


MINARI_CASES = {
    "rew_str": (_replace("episode_0/rewards", np.full(12, b"a")), ("'episode_0/rewards'", "real numbers")),
    "term_str": (_replace("episode_0/terminations", np.full(12, b"False")), ("'episode_0/terminations'", "0/1")),
    "term_half": (_replace("episode_1/terminations", np.full(14, 0.5)), ("'episode_1/terminations' holds 0.5",)),
    "act_float_disc": (_replace("episode_0/actions", np.full(12, 0.7)),
                       ("episode_0/actions hold non-integer values under the Discrete action space",)),
}


@pytest.mark.parametrize("case", list(MINARI_CASES))
def test_minari_bad_values(offrl_cli, assert_user_error, case):
    mutate, needles = MINARI_CASES[case]
    _minari(f"test/{case.replace('_', '-')}-v0", mutate=mutate)
    _check(offrl_cli, assert_user_error, f"test/{case.replace('_', '-')}-v0", "main_data.hdf5", *needles)


def test_minari_metadata_dtype_contradicting_the_data(offrl_cli, assert_user_error):
    folder = _minari("test/dtype-v0")
    meta_file = folder / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    from minari.serialization import serialize_space

    meta["observation_space"] = serialize_space(gym.spaces.Box(0, 255, (4,), np.uint8))
    meta_file.write_text(json.dumps(meta))
    _check(offrl_cli, assert_user_error, "test/dtype-v0", "dtype-v0", "stored as float32",
           "observation space says uint8")


def test_minari_dict_observations_get_a_coverage(offrl_cli):
    rng = np.random.default_rng(0)
    space = gym.spaces.Dict({"a": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
                             "b": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)})
    episodes = [{"observations": {"a": rng.standard_normal((t + 1, 3)).astype(np.float32),
                                  "b": rng.standard_normal((t + 1, 2)).astype(np.float32)},
                 "actions": rng.uniform(-1, 1, (t, 1)).astype(np.float32), "rewards": np.ones(t),
                 "terminations": np.r_[np.zeros(t - 1, bool), True], "truncations": np.zeros(t, bool)}
                for t in (15, 15)]
    _minari("test/dict-v0", episodes=episodes, observation_space=space,
            action_space=gym.spaces.Box(-1, 1, (1,), np.float32))
    info = offrl_cli("datasets", "info", "test/dict-v0")
    assert info.returncode == 0 and "action spread" in info.stdout, info.stderr


def test_minari_arrow_flags_must_be_0_or_1(offrl_cli, assert_user_error):
    episodes = cartpole_episodes((12, 14, 10))
    episodes[1]["terminations"] = np.full(14, 0.5)
    write_minari("test/arrow-half-v0", episodes, observation_space=gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
                 action_space=gym.spaces.Discrete(2), data_format="arrow")
    _check(offrl_cli, assert_user_error, "test/arrow-half-v0", "arrow-half-v0", "'1/terminations' holds 0.5")
