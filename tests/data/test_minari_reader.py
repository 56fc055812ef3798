"""Minari datasets (written by minari itself) → TED: folders, data/ folders and ids, 0.4 and 0.5
metadata, Dict observations kept nested, and the bundled datasets' reference scores."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers.datafiles import cartpole_episodes, to_minari_04, write_minari

from offrl.data import load_dataset

CARTPOLE = gym.make("CartPole-v1")


def _cartpole(dataset_id="test/cartpole/rand-v0", **kwargs):
    return write_minari(
        dataset_id,
        cartpole_episodes(**kwargs),
        observation_space=CARTPOLE.observation_space,
        action_space=CARTPOLE.action_space,
        env="CartPole-v1",
        ref_min_score=10.0,
        ref_max_score=500.0,
    )


def test_minari_id_folder_and_data_folder_agree(tmp_path):
    folder = _cartpole()
    by_id = load_dataset("test/cartpole/rand-v0")
    by_folder = load_dataset(folder)
    by_data = load_dataset(folder / "data")
    by_file = load_dataset(folder / "data" / "main_data.hdf5")
    assert by_id.digest == by_folder.digest == by_data.digest == by_file.digest
    assert by_id.cache_path == by_folder.cache_path
    assert by_id.name == "test/cartpole/rand-v0"
    assert by_folder.info.format == "minari"
    _cartpole("test/cartpole/rand-v2")
    latest = load_dataset("test/cartpole/rand")  # no version: the highest one, as minari resolves ids
    assert latest.name == "test/cartpole/rand-v2"


def test_minari_transitions(tmp_path):
    eps = cartpole_episodes((5, 8, 4))
    write_minari(
        "test/cartpole/t-v0",
        eps,
        observation_space=CARTPOLE.observation_space,
        action_space=CARTPOLE.action_space,
        env="CartPole-v1",
    )
    ds = load_dataset("test/cartpole/t-v0")
    assert len(ds) == 17
    obs = np.concatenate([e["observations"][:-1] for e in eps])
    nxt = np.concatenate([e["observations"][1:] for e in eps])
    np.testing.assert_array_equal(ds.data["observation"].numpy(), obs)
    np.testing.assert_array_equal(ds.data["next", "observation"].numpy(), nxt)
    np.testing.assert_array_equal(ds.data["action"].numpy(), np.concatenate([e["actions"] for e in eps]))
    assert ds.data["action"].dtype == torch.int64
    assert ds.data["episode"].tolist() == [0] * 5 + [1] * 8 + [2] * 4
    assert ds.data["step"].tolist() == list(range(5)) + list(range(8)) + list(range(4))
    term = ds.data["next", "terminated"][:, 0]
    trunc = ds.data["next", "truncated"][:, 0]
    assert torch.nonzero(term).flatten().tolist() == [4, 12]
    assert torch.nonzero(trunc).flatten().tolist() == [16]
    info = ds.info
    assert info.action_space == {"kind": "discrete", "n": 2}
    assert (info.episodes, info.terminated, info.truncated) == (3, 2, 1)
    assert info.env_id == "CartPole-v1" and info.max_episode_steps == 500
    assert info.env_source == "dataset env_spec"
    assert info.episode_length == {"min": 4.0, "mean": pytest.approx(17 / 3), "max": 8.0}
    assert info.ref_source is None


def test_episode_without_end_flag_is_truncated(tmp_path):
    eps = cartpole_episodes((5, 6), last_truncated=True)
    eps[1]["truncations"][:] = False  # recording stopped: neither flag on the last step
    write_minari(
        "test/cartpole/cut-v0",
        eps,
        observation_space=CARTPOLE.observation_space,
        action_space=CARTPOLE.action_space,
    )
    ds = load_dataset("test/cartpole/cut-v0")
    assert bool(ds.data["next", "truncated"][-1, 0]) and not bool(ds.data["next", "terminated"][-1, 0])
    assert ds.info.truncated == 1 and ds.info.terminated == 1


def test_minari_04_root_attributes(tmp_path):
    folder = _cartpole("test/cartpole/old-v0")
    new = load_dataset(folder)
    to_minari_04(folder)
    assert not (folder / "data" / "metadata.json").exists()
    old = load_dataset(folder)
    assert old.digest != new.digest  # different files, same content
    for key in new.data.keys(include_nested=True, leaves_only=True):
        assert torch.equal(new.data.get(key), old.data.get(key)), key
    assert (old.info.ref_min_score, old.info.ref_max_score, old.info.ref_source) == (
        10.0,
        500.0,
        "dataset metadata",
    )
    assert old.info.env_id == "CartPole-v1"
    assert old.info.action_space == {"kind": "discrete", "n": 2}


def test_dict_observations_stay_nested(tmp_path):
    space = gym.spaces.Dict(
        {
            "pos": gym.spaces.Box(-1, 1, (3,), np.float32),
            "goal": gym.spaces.Dict({"xy": gym.spaces.Box(-1, 1, (2, 2), np.float32)}),
        }
    )
    rng = np.random.default_rng(0)
    eps = []
    for t in (4, 6):
        eps.append(
            {
                "observations": {
                    "pos": rng.standard_normal((t + 1, 3)).astype(np.float32),
                    "goal": {"xy": rng.standard_normal((t + 1, 2, 2)).astype(np.float32)},
                },
                "actions": rng.uniform(-1, 1, (t, 2)).astype(np.float32),
                "rewards": rng.standard_normal(t),
                "terminations": np.r_[np.zeros(t - 1, bool), True],
                "truncations": np.zeros(t, bool),
            }
        )
    write_minari(
        "test/dict/nested-v0",
        eps,
        observation_space=space,
        action_space=gym.spaces.Box(-1, 1, (2,), np.float32),
    )
    ds = load_dataset("test/dict/nested-v0")
    assert ds.data["observation", "pos"].shape == (10, 3)
    assert ds.data["observation", "goal", "xy"].shape == (10, 2, 2)
    assert ds.data["next", "observation", "goal", "xy"].shape == (10, 2, 2)
    xy = np.concatenate([e["observations"]["goal"]["xy"][:-1] for e in eps])
    nxt_pos = np.concatenate([e["observations"]["pos"][1:] for e in eps])
    np.testing.assert_array_equal(ds.data["observation", "goal", "xy"].numpy(), xy)
    np.testing.assert_array_equal(ds.data["next", "observation", "pos"].numpy(), nxt_pos)
    assert ds.info.observation_shape == {"pos": [3], "goal/xy": [2, 2]}
    batch = ds.replay_buffer(4, seed=0).sample()
    assert batch["observation", "goal", "xy"].shape == (4, 2, 2)


@pytest.mark.parametrize("name", ["offrl/cartpole/random-v0", "offrl/pendulum/random-v0"])
def test_bundled_datasets_reference_scores(name):
    ds = load_dataset(name)
    info = ds.info
    assert info.ref_source == "dataset metadata"
    assert info.ref_min_score < info.ref_max_score
    assert ds.normalized_score(info.ref_min_score) == pytest.approx(0.0)
    assert ds.normalized_score(info.ref_max_score) == pytest.approx(100.0)
    # The random flavour's behaviour return sits near the random reference, far below the expert's.
    assert abs(ds.normalized_score(info.episode_return["mean"])) < 25
    assert info.env_id in ("CartPole-v1", "Pendulum-v1")
    assert info.warnings == []
