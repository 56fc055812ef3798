"""D4RL-style and d3rlpy HDF5 files → TED: keys, shapes, dtypes, episode boundaries, terminated vs
truncated, next observations at boundaries, the cut-last-row rule, and mc_return."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from helpers.datafiles import write_d4rl

from offrl.data import load_dataset

TED_KEYS = {
    "observation",
    "action",
    "episode",
    "step",
    "mc_return",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
    ("next", "truncated"),
}


def _np(ds, key):
    return ds.data.get(key).numpy()


def test_keys_shapes_and_dtypes(tmp_path):
    write_d4rl(tmp_path / "d.hdf5", lengths=(10, 7, 13), terminal=(False, True, False), obs_dim=3, act_dim=2)
    ds = load_dataset(tmp_path / "d.hdf5")
    n = len(ds)
    # Two cut episodes (timeout) lose their last row; the terminated one keeps it.
    assert n == 30 - 2
    assert set(ds.data.keys(include_nested=True, leaves_only=True)) == TED_KEYS
    assert ds.data.batch_size == torch.Size([n])
    expected = {
        "observation": ((n, 3), torch.float32),
        "action": ((n, 2), torch.float32),
        "episode": ((n,), torch.int64),
        "step": ((n,), torch.int64),
        "mc_return": ((n, 1), torch.float32),
        ("next", "observation"): ((n, 3), torch.float32),
        ("next", "reward"): ((n, 1), torch.float32),
        ("next", "done"): ((n, 1), torch.bool),
        ("next", "terminated"): ((n, 1), torch.bool),
        ("next", "truncated"): ((n, 1), torch.bool),
    }
    for key, (shape, dtype) in expected.items():
        leaf = ds.data.get(key)
        assert leaf.shape == shape, key
        assert leaf.dtype == dtype, key
    info = ds.info
    assert info.format == "d4rl"
    assert (info.transitions, info.episodes, info.terminated, info.truncated) == (28, 3, 1, 2)
    assert info.action_space == {"kind": "continuous", "shape": [2], "low": -1.0, "high": 1.0}
    assert info.observation_shape == [3] and info.observation_dtype == "float32"
    assert info.dropped_rows == 2


def test_episode_boundaries_and_cut_last_row_rule(tmp_path):
    arrays = write_d4rl(tmp_path / "d.hdf5", lengths=(4, 3, 5), terminal=(False, True, False))
    ds = load_dataset(tmp_path / "d.hdf5")
    obs_id = _np(ds, "observation")[:, 0].astype(int)  # column 0 holds the source row index
    nxt_id = _np(ds, ("next", "observation"))[:, 0].astype(int)
    # Rows 3 (timeout) and 11 (timeout, also the file's end) have no successor: dropped.
    assert obs_id.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert _np(ds, "episode").tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert _np(ds, "step").tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3]
    term = _np(ds, ("next", "terminated"))[:, 0]
    trunc = _np(ds, ("next", "truncated"))[:, 0]
    done = _np(ds, ("next", "done"))[:, 0]
    assert np.flatnonzero(term).tolist() == [5]  # row 6, the terminal, is kept
    assert np.flatnonzero(trunc).tolist() == [2, 9]  # the rows before each dropped timeout row
    assert np.array_equal(done, term | trunc)
    # Inside an episode the next observation is the next row; a terminated row's is never used
    # (a copy of its own observation), and a truncated row's is the (dropped) successor row.
    assert nxt_id.tolist() == [1, 2, 3, 5, 6, 6, 8, 9, 10, 11]
    np.testing.assert_array_equal(_np(ds, ("next", "observation"))[2], arrays["observations"][3])
    np.testing.assert_allclose(_np(ds, ("next", "reward"))[:, 0], arrays["rewards"][obs_id])
    np.testing.assert_array_equal(_np(ds, "action"), arrays["actions"][obs_id])


def test_next_observations_keep_every_row(tmp_path):
    arrays = write_d4rl(
        tmp_path / "d.hdf5", lengths=(4, 3, 5), terminal=(False, True, False), next_observations=True
    )
    ds = load_dataset(tmp_path / "d.hdf5")
    assert len(ds) == 12 and ds.info.dropped_rows == 0
    np.testing.assert_array_equal(_np(ds, ("next", "observation")), arrays["next_observations"])
    assert np.flatnonzero(_np(ds, ("next", "terminated"))[:, 0]).tolist() == [6]
    # Timeout at row 3; the file's last row ends no episode by flag but is the end of the data.
    assert np.flatnonzero(_np(ds, ("next", "truncated"))[:, 0]).tolist() == [3, 11]
    assert _np(ds, "episode").tolist() == [0] * 4 + [1] * 3 + [2] * 5


def test_flag_shapes_and_dtypes_do_not_matter(tmp_path):
    write_d4rl(tmp_path / "a.hdf5", flag_shape="(N,)", flag_dtype=bool)
    write_d4rl(tmp_path / "b.hdf5", flag_shape="(N,1)", flag_dtype=np.float32)
    a = load_dataset(tmp_path / "a.hdf5").data
    b = load_dataset(tmp_path / "b.hdf5").data
    assert a.batch_size == b.batch_size
    for key in TED_KEYS:
        assert torch.equal(a.get(key), b.get(key)), key


def test_d3rlpy_export_with_discrete_actions(tmp_path):
    n = 12
    rng = np.random.default_rng(1)
    terminals = np.zeros(n, np.float32)
    terminals[4] = 1.0
    episode_terminals = np.zeros(n, np.float32)
    episode_terminals[[4, 8, 11]] = 1.0  # episode 2 (rows 5..8) ends by time limit
    with h5py.File(tmp_path / "d3.h5", "w") as f:
        f["observations"] = rng.standard_normal((n, 4)).astype(np.float32)
        f["actions"] = rng.integers(0, 3, n).astype(np.int32)
        f["rewards"] = np.ones(n, np.float32)
        f["terminals"] = terminals
        f["episode_terminals"] = episode_terminals
        f["discrete_action"] = True
        f["version"] = "1.0"
    ds = load_dataset(tmp_path / "d3.h5")
    assert ds.info.format == "d3rlpy"
    assert ds.info.action_space["kind"] == "discrete" and ds.info.action_space["n"] >= 2
    assert ds.data["action"].dtype == torch.int64 and ds.data["action"].shape == (len(ds),)
    # Rows 8 and 11 end cut episodes: dropped; row 4 ends a terminated one: kept.
    assert len(ds) == n - 2
    assert (ds.info.episodes, ds.info.terminated, ds.info.truncated) == (3, 1, 2)
    assert ds.data["episode"].tolist() == [0] * 5 + [1] * 3 + [2] * 2


def test_mc_return_is_the_discounted_return_to_go(tmp_path):
    write_d4rl(tmp_path / "d.hdf5", lengths=(6, 5, 9), terminal=(True, False, True))
    gamma = 0.9
    ds = load_dataset(tmp_path / "d.hdf5", gamma=gamma)
    reward = _np(ds, ("next", "reward"))[:, 0].astype(np.float64)
    done = _np(ds, ("next", "done"))[:, 0]
    expected = np.zeros_like(reward)
    g = 0.0
    for i in reversed(range(len(reward))):
        g = reward[i] + (0.0 if done[i] else gamma * g)
        expected[i] = g
    np.testing.assert_allclose(_np(ds, "mc_return")[:, 0], expected, rtol=1e-5, atol=1e-5)
    assert ds.info.gamma == gamma


def test_small_chunks_give_identical_data(tmp_path, monkeypatch):
    write_d4rl(tmp_path / "d.hdf5", lengths=(9, 4, 11, 6), terminal=(False, True, False, True))
    whole = load_dataset(tmp_path / "d.hdf5", cache_dir=tmp_path / "c1")
    chunked = load_dataset(tmp_path / "d.hdf5", cache_dir=tmp_path / "c2", chunk_size=3)
    for key in TED_KEYS:
        assert torch.equal(whole.data.get(key), chunked.data.get(key)), key
    assert whole.info.to_dict() | {"cache": None} == chunked.info.to_dict() | {"cache": None}


def test_metadata_and_d4rl_names_give_references_and_env(tmp_path):
    write_d4rl(tmp_path / "mine.hdf5", attrs={"ref_min_score": 1.0, "ref_max_score": 11.0})
    own = load_dataset(tmp_path / "mine.hdf5")
    assert (own.info.ref_min_score, own.info.ref_max_score, own.info.ref_source) == (
        1.0,
        11.0,
        "dataset metadata",
    )
    assert own.normalized_score(6.0) == pytest.approx(50.0)

    write_d4rl(tmp_path / "hopper-medium-v2.hdf5", obs_dim=11, act_dim=3)
    hopper = load_dataset(tmp_path / "hopper-medium-v2.hdf5")
    assert hopper.info.ref_source == "D4RL table"
    assert hopper.info.ref_min_score == pytest.approx(-20.272305)
    assert hopper.info.env_id == "Hopper-v5" and hopper.info.max_episode_steps == 1000
    user = load_dataset(tmp_path / "hopper-medium-v2.hdf5", ref_min_score=0.0, ref_max_score=100.0)
    assert user.info.ref_source == "user" and user.normalized_score([100.0]).tolist() == [100.0]

    plain = load_dataset(tmp_path / "mine.hdf5", ref_min_score=None)
    assert np.isnan(load_dataset(_no_refs(tmp_path)).normalized_score(1.0))
    assert plain.info.ref_source == "dataset metadata"


def test_the_names_references_are_dropped_for_an_env_of_another_family(tmp_path):
    """A file named like D4RL's hopper holding Pendulum data, evaluated in the Pendulum-v1 the user passes: the
    name's hopper references would normalize Pendulum returns (-38.5 for a mediocre policy); none are used."""
    write_d4rl(tmp_path / "hopper-medium-v2.hdf5", obs_dim=3, act_dim=1)
    other = load_dataset(tmp_path / "hopper-medium-v2.hdf5", env="Pendulum-v1")
    assert (other.info.ref_min_score, other.info.ref_max_score, other.info.ref_source) == (None, None, None)
    assert "Pendulum-v1" in (other.info.ref_hint or "")  # offrl's own Pendulum references are offered instead
    mujoco = pytest.importorskip("mujoco")  # noqa: F841 - Hopper-v4 must build for its spaces to be checked
    (tmp_path / "h").mkdir()
    write_d4rl(tmp_path / "h" / "hopper-medium-v2.hdf5", obs_dim=11, act_dim=3)
    same = load_dataset(tmp_path / "h" / "hopper-medium-v2.hdf5", env="Hopper-v4")  # another version: kept
    assert same.info.ref_source == "D4RL table" and same.info.ref_min_score == pytest.approx(-20.272305)


def _no_refs(tmp_path):
    write_d4rl(tmp_path / "anon.hdf5")
    return tmp_path / "anon.hdf5"


def test_infos_group_and_metadata_group_are_accepted(tmp_path):
    path = tmp_path / "d.hdf5"
    write_d4rl(path)
    with h5py.File(path, "a") as f:
        infos = f.create_group("infos")
        infos["qpos"] = np.zeros((30, 2))
        meta = f.create_group("metadata")
        meta.attrs["env_name"] = "Pendulum-v1"
        meta["algorithm"] = "SAC"
    ds = load_dataset(path)
    assert len(ds) == 28
    assert ds.info.env_id is not None


def test_without_timeouts_the_file_end_cuts_the_last_episode(tmp_path):
    write_d4rl(tmp_path / "d.hdf5", lengths=(5, 4), terminal=(True, False), with_timeouts=False)
    ds = load_dataset(tmp_path / "d.hdf5")
    assert len(ds) == 8 and ds.info.dropped_rows == 1
    assert _np(ds, ("next", "terminated"))[:, 0].tolist() == [False] * 4 + [True] + [False] * 3
    assert _np(ds, ("next", "truncated"))[:, 0].tolist() == [False] * 7 + [True]
    assert _np(ds, ("next", "observation"))[-1, 0] == 8.0  # the dropped last row is its successor


def test_float_zero_one_actions_in_a_discrete_env_say_how_to_mark_them_discrete(tmp_path):
    from offrl.errors import UserError

    path = tmp_path / "mine.hdf5"
    n = 30
    actions = (np.arange(n) % 2).astype(np.float32)  # CartPole's 0/1 stored as floats, no discrete_action attr
    write_d4rl(path, lengths=(10, 10, 10), obs_dim=4, overrides={"actions": actions})
    with pytest.raises(UserError, match=r"continuous actions but env CartPole-v1 has discrete ones .*'discrete_action'"):
        load_dataset(path, env="CartPole-v1")
    with h5py.File(path, "a") as f:  # flagged: read as the discrete actions they are
        f.attrs["discrete_action"] = True
    ds = load_dataset(path, env="CartPole-v1")
    assert ds.info.discrete and ds.data["action"].unique().tolist() == [0, 1]
