"""Multi-agent HDF5 files (docs/multiagent.md) -> torchrl's multi-agent TED keys: shapes, team and per-agent
rewards, episode boundaries and next observations, the cache, and bad inputs (one line, exit 2, nothing
written)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers.cli import assert_user_error, offrl_cli

from offrl.data import check, load_dataset
from offrl.errors import UserError

N_AGENTS, OBS, N_ACT, STATE = 2, 3, 4, 5


def write_marl(path, *, lengths=(6, 4, 5), terminal=(False, True, False), per_agent=True, with_state=True,
               masks=False, next_obs=False, seed=0, **override):
    """A small multi-agent file: episodes of ``lengths`` rows, each ending with a terminal or a timeout."""
    rng = np.random.default_rng(seed)
    t = sum(lengths)
    term, timeouts = np.zeros(t, bool), np.zeros(t, bool)
    for end, is_term in zip(np.cumsum(lengths) - 1, terminal, strict=True):
        (term if is_term else timeouts)[end] = True
    arrays = {
        "observations": rng.normal(size=(t, N_AGENTS, OBS)).astype(np.float32),
        "actions": rng.integers(0, N_ACT, size=(t, N_AGENTS)),
        "rewards": rng.normal(size=(t, N_AGENTS) if per_agent else (t,)).astype(np.float32),
        "terminals": term.astype(np.float32),
        "timeouts": timeouts,
    }
    if with_state:
        arrays["state"] = rng.normal(size=(t, STATE)).astype(np.float32)
    if masks:
        m = rng.random((t, N_AGENTS, N_ACT)) < 0.5
        m[np.arange(t)[:, None], np.arange(N_AGENTS)[None], arrays["actions"]] = True  # taken actions are legal
        arrays["action_masks"] = m
    if next_obs:
        arrays["next_observations"] = rng.normal(size=(t, N_AGENTS, OBS)).astype(np.float32)
        if with_state:
            arrays["next_state"] = rng.normal(size=(t, STATE)).astype(np.float32)
        if masks:
            arrays["next_action_masks"] = np.ones((t, N_AGENTS, N_ACT), bool)
    attrs = {"n_agents": N_AGENTS, "n_actions": N_ACT, "env_id": "mpe2/simple_spread-n2", "ref_min_score": -20.0,
             "ref_max_score": -5.0, "max_episode_steps": 25}
    for key, value in override.items():
        target = attrs if key in attrs or key.startswith("attr_") else arrays
        key = key.removeprefix("attr_")
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
        f.attrs.update(attrs)
    return arrays


def test_keys_shapes_boundaries_and_rewards(tmp_path):
    raw = write_marl(tmp_path / "ma.hdf5", masks=True)
    ds = load_dataset(tmp_path / "ma.hdf5")
    # Two episodes cut by a timeout lose their last row (no next observation in the file).
    n = 15 - 2
    expected = {
        ("agents", "observation"): ((n, N_AGENTS, OBS), torch.float32),
        ("next", "agents", "observation"): ((n, N_AGENTS, OBS), torch.float32),
        ("agents", "action"): ((n, N_AGENTS), torch.int64),
        ("next", "agents", "reward"): ((n, N_AGENTS, 1), torch.float32),
        ("agents", "action_mask"): ((n, N_AGENTS, N_ACT), torch.bool),
        ("next", "agents", "action_mask"): ((n, N_AGENTS, N_ACT), torch.bool),
        "state": ((n, STATE), torch.float32),
        ("next", "state"): ((n, STATE), torch.float32),
        ("next", "reward"): ((n, 1), torch.float32),
        ("next", "done"): ((n, 1), torch.bool),
        ("next", "terminated"): ((n, 1), torch.bool),
        ("next", "truncated"): ((n, 1), torch.bool),
        "episode": ((n,), torch.int64),
        "step": ((n,), torch.int64),
        "mc_return": ((n, 1), torch.float32),
    }
    assert set(ds.data.keys(include_nested=True, leaves_only=True)) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert (tuple(ds.data.get(key).shape), ds.data.get(key).dtype) == (shape, dtype), key
    # Kept source rows: episode 0 rows 0-4, episode 1 rows 6-9 (terminated: all kept), episode 2 rows 10-13.
    rows = np.r_[0:5, 6:10, 10:14]
    np.testing.assert_array_equal(ds.data["agents", "observation"].numpy(), raw["observations"][rows])
    np.testing.assert_array_equal(ds.data["agents", "action"].numpy(), raw["actions"][rows])
    np.testing.assert_array_equal(ds.data["state"].numpy(), raw["state"][rows])
    np.testing.assert_array_equal(ds.data["agents", "action_mask"].numpy(), raw["action_masks"][rows])
    # Next observation / state: the next row inside an episode; a terminated row keeps its own (never used).
    nxt = np.r_[1:6, 7:10, 9, 11:15]
    np.testing.assert_array_equal(ds.data["next", "agents", "observation"].numpy(), raw["observations"][nxt])
    np.testing.assert_array_equal(ds.data["next", "state"].numpy(), raw["state"][nxt])
    # Per-agent rewards stay per agent; the team reward is their mean.
    np.testing.assert_allclose(ds.data["next", "agents", "reward"].numpy()[..., 0], raw["rewards"][rows])
    np.testing.assert_allclose(ds.data["next", "reward"].numpy()[:, 0], raw["rewards"][rows].mean(1), rtol=1e-6)
    assert ds.data["next", "terminated"].numpy()[:, 0].nonzero()[0].tolist() == [8]
    assert ds.data["next", "truncated"].numpy()[:, 0].nonzero()[0].tolist() == [4, 12]
    ma = ds.info.extra["multiagent"]
    assert {k: ma[k] for k in ("n_agents", "observation_shape", "n_actions", "state_dim", "action_masks", "reward")} \
        == {"n_agents": 2, "observation_shape": [2, 3], "n_actions": 4, "state_dim": 5, "action_masks": True,
            "reward": "per-agent"}
    per_agent = [raw["rewards"][rows[ds.data["episode"].numpy() == e]].sum(0) for e in range(3)]
    np.testing.assert_allclose(ma["agent_return_mean"], np.mean(per_agent, axis=0), rtol=1e-5)
    team = ds.data["next", "reward"].numpy()[:, 0]
    np.testing.assert_allclose(ds.info.episode_return["mean"], team.sum() / 3, rtol=1e-5)
    assert (ds.info.env_id, ds.info.env_source, ds.info.ref_min_score, ds.info.ref_max_score) == (
        "mpe2/simple_spread-n2", "dataset metadata", -20.0, -5.0)
    assert ds.info.format == "marl-hdf5" and ds.info.row_rules["cut-last-row"]["rows"] == 2
    # offrl.data.check reads the converted multi-agent data as the conversion did (next_observations differ
    # from the next row: the file has none, so the check has nothing to compare)
    assert check(ds.data, had_next_observations=True) == ds.info.warnings == []


def test_team_rewards_reach_every_agent_and_next_observations_keep_every_row(tmp_path):
    raw = write_marl(tmp_path / "team.hdf5", per_agent=False, next_obs=True)
    ds = load_dataset(tmp_path / "team.hdf5")
    assert len(ds) == 15 and ds.info.extra["multiagent"]["reward"] == "team"
    agent_reward = ds.data["next", "agents", "reward"].numpy()[..., 0]
    np.testing.assert_array_equal(agent_reward, np.repeat(raw["rewards"][:, None], N_AGENTS, axis=1))
    np.testing.assert_array_equal(ds.data["next", "reward"].numpy()[:, 0], raw["rewards"])
    np.testing.assert_array_equal(ds.data["next", "agents", "observation"].numpy(), raw["next_observations"])
    np.testing.assert_array_equal(ds.data["next", "state"].numpy(), raw["next_state"])
    batch = ds.replay_buffer(8, seed=0).sample()
    assert batch["agents", "observation"].shape == (8, N_AGENTS, OBS)


def test_conversion_is_cached_and_a_changed_file_converts_again(tmp_path):
    write_marl(tmp_path / "ma.hdf5")
    first = load_dataset(tmp_path / "ma.hdf5")
    again = load_dataset(tmp_path / "ma.hdf5")
    assert again.cache_path == first.cache_path
    assert torch.equal(again.rows, first.rows)
    write_marl(tmp_path / "ma.hdf5", seed=1)
    changed = load_dataset(tmp_path / "ma.hdf5")
    assert changed.cache_path != first.cache_path and changed.digest != first.digest


_ACTIONS_BAD = np.zeros((15, N_AGENTS), np.int64)
_ACTIONS_BAD[3, 1] = N_ACT


@pytest.mark.parametrize(("override", "needles"), [
    ({"observations": np.zeros((15, 3, OBS), np.float32)}, ["'observations' has shape (15, 3, 3)", "(15, 2, *)"]),
    ({"actions": np.zeros((14, N_AGENTS), np.int64)}, ["'actions' has shape (14, 2)", "(15, 2)"]),
    ({"actions": _ACTIONS_BAD}, ["action index 4 is outside n_actions=4"]),
    ({"rewards": np.zeros((15, 3), np.float32)}, ["'rewards' has shape (15, 3)"]),
    ({"terminals": np.zeros((15, N_AGENTS))}, ["per-agent flags", "team flags"]),
    ({"timeouts": np.full(15, 2.0)}, ["'timeouts' holds 2.0 at row 0", "0 or 1"]),
    ({"attr_n_agents": "two"}, ["n_agents='two' is not a number of agents"]),
    ({"state": np.zeros((15,), np.float32)}, ["'state' has shape (15,)"]),
    ({"state": None, "next_state": np.zeros((15, STATE), np.float32)}, ["'next_state' without 'state'"]),
    ({"rewards": None}, ["missing required key 'rewards'"]),
])
def test_bad_files_are_one_line_naming_the_file(tmp_path, override, needles):
    path = tmp_path / "bad.hdf5"
    write_marl(path, **override)
    with pytest.raises(UserError) as err:
        load_dataset(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    import os

    cache = Path(os.environ["OFFRL_CACHE"])  # this test's own cache (conftest): nothing half-written there
    assert not [p for p in cache.rglob("*") if "bad" in p.name]
    write_marl(tmp_path / "bad-but-fixed.hdf5")  # the same cache holds an entry once a file loads
    load_dataset(tmp_path / "bad-but-fixed.hdf5")
    assert [p for p in cache.rglob("*") if "bad-but-fixed" in p.name]


def test_next_observations_without_next_state_and_illegal_masked_actions_are_refused(tmp_path):
    write_marl(tmp_path / "a.hdf5", next_obs=True, next_state=None)
    with pytest.raises(UserError, match="'next_observations' is given but 'next_state' is not"):
        load_dataset(tmp_path / "a.hdf5")
    raw = write_marl(tmp_path / "b.hdf5", masks=True)
    masks = raw["action_masks"].copy()
    masks[2, 1, raw["actions"][2, 1]] = False
    with h5py.File(tmp_path / "b.hdf5", "r+") as f:
        f["action_masks"][...] = masks
    with pytest.raises(UserError, match=f"agent 1 takes action {raw['actions'][2, 1]} at row 2, which its "
                                        "action_masks mark illegal"):
        load_dataset(tmp_path / "b.hdf5")


def test_cli_info_shows_agents_and_a_bad_file_is_exit_2(tmp_path):
    write_marl(tmp_path / "ma.hdf5")
    result = offrl_cli("datasets", "info", str(tmp_path / "ma.hdf5"), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) if "  " not in line else [s.strip() for s in line.split("  ", 1)]
                 for line in result.stdout.splitlines() if line and not line.startswith(" "))
    assert lines["agents"] == "2 (per-agent rewards)"
    assert lines["per-agent observation"] == "[3] float32"
    assert lines["per-agent actions"] == "discrete, n=4"
    assert lines["global state"] == "[5]"
    assert lines["team return"].startswith("min=") and lines["agent return mean"].startswith("[")
    payload = load_dataset(tmp_path / "ma.hdf5", cache_dir=tmp_path / "c").info.to_dict()  # what --json prints
    assert payload["multiagent"]["n_agents"] == 2 and payload["env_id"] == "mpe2/simple_spread-n2"
    # The same arrays without n_agents read as a single-agent file: the error says what is missing.
    write_marl(tmp_path / "plain.hdf5", attr_n_agents=None)
    bad = offrl_cli("datasets", "info", str(tmp_path / "plain.hdf5"), "--cache-dir", str(tmp_path / "c"))
    assert_user_error(bad, str(tmp_path / "plain.hdf5"), "n_agents", "docs/multiagent.md")
    assert not list((tmp_path / "c" / "datasets").glob("plain*"))
