"""Demonstration archives in .npz, written as Stable-Baselines' ``generate_expert_traj`` wrote them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offrl.data import load_dataset
from offrl.errors import UserError

LENGTHS = (6, 9, 4)


def write_sb_expert(path, *, lengths=LENGTHS, dones=False, next_obs=False, discrete=True, seed=0, **override):
    """``numpy.savez(path, actions=, obs=, rewards=, episode_returns=, episode_starts=)`` as SB did:
    actions ``(N, 1)`` for Discrete, ``episode_starts`` True on each episode's first row."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    obs = rng.standard_normal((n + 1, 4))
    obs[:, 0] = np.arange(n + 1)
    starts = np.zeros(n, bool)
    starts[np.cumsum((0, *lengths[:-1]))] = True
    rewards = rng.standard_normal(n)
    ends = np.cumsum(lengths) - 1
    arrays = {
        "actions": rng.integers(0, 2, (n, 1)) if discrete else rng.uniform(-1, 1, (n, 2)),
        "obs": obs[:n],
        "rewards": rewards,
        "episode_returns": np.array([rewards[e - t + 1 : e + 1].sum() for e, t in zip(ends, lengths, strict=True)]),
        "episode_starts": starts,
    }
    if dones:
        arrays["dones"] = np.isin(np.arange(n), ends)
    if next_obs:
        arrays["next_obs"] = obs[1 : n + 1]
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_without_dones_every_episode_end_is_a_cut(tmp_path):
    write_sb_expert(tmp_path / "expert.npz")
    ds = load_dataset(tmp_path / "expert.npz", cache_dir=tmp_path / "c")
    assert ds.info.format == "npz"
    assert len(ds) == sum(LENGTHS) - len(LENGTHS)
    assert (ds.info.episodes, ds.info.terminated, ds.info.truncated) == (3, 0, 3)
    assert ds.info.row_rules["cut-last-row"]["rows"] == 3
    # Row 4 is the last kept row of episode 0: its next observation is row 5 of the file.
    assert ds.data["next", "observation"][4, 0] == 5 and bool(ds.data["next", "truncated"][4])
    assert ds.info.action_space == {"kind": "discrete", "n": 2}


def test_dones_mark_terminated_episodes(tmp_path):
    arrays = write_sb_expert(tmp_path / "expert.npz", dones=True)
    ds = load_dataset(tmp_path / "expert.npz", cache_dir=tmp_path / "c")
    assert len(ds) == sum(LENGTHS)
    assert (ds.info.terminated, ds.info.truncated) == (3, 0)
    np.testing.assert_allclose(
        sorted(ds.info.episode_return_distribution[k] for k in ("min", "max")),
        sorted([arrays["episode_returns"].min(), arrays["episode_returns"].max()]),
        rtol=1e-5,
    )


def test_next_obs_keeps_every_row(tmp_path):
    arrays = write_sb_expert(tmp_path / "expert.npz", next_obs=True, discrete=False)
    ds = load_dataset(tmp_path / "expert.npz", cache_dir=tmp_path / "c")
    assert len(ds) == sum(LENGTHS) and ds.info.truncated == 3
    assert torch.equal(ds.data["next", "observation"], torch.from_numpy(arrays["next_obs"].astype(np.float32)))
    assert ds.info.action_space["kind"] == "continuous"


def _assert_bad(path, cache, match):
    with pytest.raises(UserError, match=match) as err:
        load_dataset(path, cache_dir=cache)
    assert "\n" not in str(err.value) and path.name in str(err.value)
    assert not (cache / "datasets").exists() or not any((cache / "datasets").iterdir())


def test_bad_archives(tmp_path):
    write_sb_expert(tmp_path / "good.npz")
    raw = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    _assert_bad(tmp_path / "cut.npz", tmp_path / "c1", "corrupt")
    write_sb_expert(tmp_path / "missing.npz", episode_starts=None)
    _assert_bad(tmp_path / "missing.npz", tmp_path / "c2", "missing required key 'episode_starts'")
    write_sb_expert(tmp_path / "lengths.npz", rewards=np.zeros(5))
    _assert_bad(tmp_path / "lengths.npz", tmp_path / "c3", "'rewards' has 5 rows")
    write_sb_expert(tmp_path / "returns.npz", episode_returns=np.zeros(2))
    _assert_bad(tmp_path / "returns.npz", tmp_path / "c4", "'episode_returns' has 2 values")


def test_nan_names_the_archive_row(tmp_path):
    arrays = write_sb_expert(tmp_path / "ok.npz")
    obs = arrays["obs"].copy()
    obs[7, 2] = np.nan
    write_sb_expert(tmp_path / "nan.npz", obs=obs)
    with pytest.raises(UserError, match=r"observations row 7, column 2 is NaN"):
        load_dataset(tmp_path / "nan.npz", cache_dir=tmp_path / "c")
