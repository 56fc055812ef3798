"""d3rlpy files: 1.x exports (with their terminal-observation rows) and 2.x dumps written by d3rlpy itself."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from offrl.data import load_dataset
from offrl.errors import UserError


def write_d3rlpy_v1(path, episodes, *, seed=0):
    """A d3rlpy 1.x ``MDPDataset.dump`` file of CartPole-like episodes ``(T, failed)``.

    A failed episode of T transitions has T + 1 rows: the last holds the terminal observation, with
    ``terminals`` on it and on the row before and ``episode_terminals`` on it only. A timed-out one has T
    rows and ``episode_terminals`` on its last. Dtypes and keys as d3rlpy 1.x wrote them.
    """
    rng = np.random.default_rng(seed)
    rows = sum(t + (1 if failed else 0) for t, failed in episodes)
    obs = rng.standard_normal((rows, 4)).astype(np.float32)
    obs[:, 0] = np.arange(rows)
    terminals = np.zeros(rows, np.float32)
    episode_terminals = np.zeros(rows, np.float32)
    end = -1
    for t, failed in episodes:
        end += t + (1 if failed else 0)
        episode_terminals[end] = 1.0
        if failed:
            terminals[end - 1 : end + 1] = 1.0
    with h5py.File(path, "w") as f:
        f.create_dataset("observations", data=obs)
        f.create_dataset("actions", data=rng.integers(0, 2, rows).astype(np.int32))
        f.create_dataset("rewards", data=np.ones(rows, np.float32))
        f.create_dataset("terminals", data=terminals)
        f.create_dataset("episode_terminals", data=episode_terminals)
        f.create_dataset("discrete_action", data=True)
        f.create_dataset("version", data="1.0")
    return obs


EPISODES = [(9, True), (14, True), (20, False), (3, True), (11, True), (8, False)]


def test_d3rlpy_v1_terminal_rows_are_not_episodes(tmp_path):
    obs = write_d3rlpy_v1(tmp_path / "cartpole_v1.h5", EPISODES)
    ds = load_dataset(tmp_path / "cartpole_v1.h5", cache_dir=tmp_path / "c")
    # Failed episodes keep their T transitions; timed-out ones lose their cut last row.
    lengths = [t if failed else t - 1 for t, failed in EPISODES]
    assert ds.info.format == "d3rlpy"
    assert ds.info.episodes == len(EPISODES)
    assert len(ds) == sum(lengths)
    assert (ds.info.terminated, ds.info.truncated) == (4, 2)
    assert ds.info.episode_return["mean"] == pytest.approx(np.mean(lengths))
    assert ds.info.episode_length["min"] == min(lengths)
    rules = ds.info.to_dict()["row_rules"]
    assert rules["d3rlpy1-terminal-observation"]["rows"] == 4
    assert rules["cut-last-row"]["rows"] == 2
    assert not any("consecutive" in w for w in ds.info.warnings)
    # The last transition of the first episode: its next observation is the terminal-observation row.
    data = ds.data
    assert bool(data["next", "terminated"][8]) and data["observation"][8, 0] == 8
    assert torch.equal(data["next", "observation"][8], torch.from_numpy(obs[9]))
    assert data["observation"][9, 0] == 10  # the next episode starts after the dropped row
    assert data["episode"].unique().numel() == len(EPISODES)


def test_d3rlpy_v1_rule_is_chunk_independent(tmp_path):
    write_d3rlpy_v1(tmp_path / "v1.h5", EPISODES)
    whole = load_dataset(tmp_path / "v1.h5", cache_dir=tmp_path / "a").data
    for chunk in (1, 2, 3, 10):
        small = load_dataset(tmp_path / "v1.h5", cache_dir=tmp_path / f"c{chunk}", chunk_size=chunk).data
        for key in ("observation", ("next", "observation"), "action", ("next", "terminated"), "episode"):
            assert torch.equal(whole.get(key), small.get(key)), (chunk, key)


def test_consecutive_terminals_outside_the_pattern_still_warn(tmp_path):
    write_d3rlpy_v1(tmp_path / "v1.h5", [(5, True)])
    with h5py.File(tmp_path / "v1.h5", "a") as f:
        ept = f["episode_terminals"][()]
        ept[4] = 1.0  # both rows end their own episode: two one-step terminals, not a terminal-observation row
        f["episode_terminals"][...] = ept
    ds = load_dataset(tmp_path / "v1.h5", cache_dir=tmp_path / "c")
    assert "d3rlpy1-terminal-observation" not in ds.info.row_rules
    assert any("terminal flags on consecutive rows" in w for w in ds.info.warnings)


#: Writes a d3rlpy 2.x dump with d3rlpy itself and prints d3rlpy's own view of it as JSON; runs in a Python
#: that has d3rlpy (d3rlpy pins gymnasium 1.0 and needs gym, which torchrl must not see, so it usually lives in
#: its own environment: OFFRL_D3RLPY_PYTHON, as for benchmarks/suite.py's peer rows).
_WRITER = """
import json, sys
import numpy as np
from d3rlpy.dataset import MDPDataset

path, tuple_obs, discrete, seed = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", int(sys.argv[4])
rng = np.random.default_rng(seed)
n = 40
obs = rng.standard_normal((n, 3)).astype(np.float32)
observations = (obs, rng.standard_normal((n, 2, 2)).astype(np.float32)) if tuple_obs else obs
actions = rng.integers(0, 3, n) if discrete else rng.uniform(-1, 1, (n, 2)).astype(np.float32)
rewards = rng.standard_normal(n).astype(np.float32)
terminals, timeouts = np.zeros(n), np.zeros(n)
terminals[[6, 20]] = 1
timeouts[[13, 39]] = 1
ds = MDPDataset(observations, actions, rewards, terminals, timeouts)
ds.dump(path)
first = ds.episodes[0].observations
print(json.dumps({
    "episodes": len(ds.episodes),
    "transition_count": int(ds.transition_count),
    "terminated": int(sum(bool(e.terminated) for e in ds.episodes)),
    "returns": [float(e.rewards[: e.transition_count].sum()) for e in ds.episodes],
    "first_next_obs": (first[1][0] if tuple_obs else first[1]).tolist(),
}))
"""


def _d3rlpy_python() -> str:
    """A Python that can import d3rlpy: this one, else ``OFFRL_D3RLPY_PYTHON``; skip the test otherwise."""
    if importlib.util.find_spec("d3rlpy") is not None:
        try:
            import d3rlpy  # noqa: F401

            return sys.executable
        except ImportError:
            pass
    python = os.environ.get("OFFRL_D3RLPY_PYTHON")
    if python and Path(python).exists():
        return python
    pytest.skip("needs d3rlpy 2.x: pip install d3rlpy==2.8.1 here, or set OFFRL_D3RLPY_PYTHON to a Python with it")


def _d3rlpy2(path, *, tuple_obs=False, discrete=True, seed=0) -> SimpleNamespace:
    """Dump a d3rlpy 2.x dataset to ``path`` with d3rlpy; returns d3rlpy's own view of it."""
    proc = subprocess.run([_d3rlpy_python(), "-c", _WRITER, str(path), "1" if tuple_obs else "0",
                           "1" if discrete else "0", str(seed)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(**json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("discrete", [True, False])
def test_d3rlpy2_dump_matches_d3rlpy_view(tmp_path, discrete):
    d3 = _d3rlpy2(tmp_path / "d2.h5", discrete=discrete)
    ds = load_dataset(tmp_path / "d2.h5", cache_dir=tmp_path / "c")
    assert ds.info.format == "d3rlpy2"
    assert ds.info.episodes == d3.episodes
    assert len(ds) == d3.transition_count
    assert ds.info.terminated == d3.terminated
    returns = d3.returns
    dist = ds.info.episode_return_distribution
    assert dist["min"] == pytest.approx(min(returns), abs=1e-4)
    assert dist["max"] == pytest.approx(max(returns), abs=1e-4)
    assert ds.info.episode_return["mean"] == pytest.approx(np.mean(returns), abs=1e-4)
    np.testing.assert_allclose(ds.data["next", "observation"][0].numpy(), np.asarray(d3.first_next_obs, np.float32))
    assert ds.info.action_space["kind"] == ("discrete" if discrete else "continuous")


def test_d3rlpy2_tuple_observations_become_a_dict(tmp_path):
    d3 = _d3rlpy2(tmp_path / "tuple.h5", tuple_obs=True)
    ds = load_dataset(tmp_path / "tuple.h5", cache_dir=tmp_path / "c")
    assert ds.info.observation_shape == {"0": [3], "1": [2, 2]}
    assert len(ds) == d3.transition_count
    np.testing.assert_allclose(ds.data["observation", "1"][0].numpy(), np.asarray(d3.first_next_obs, np.float32))


def _assert_bad(path, cache, match):
    with pytest.raises(UserError, match=match) as err:
        load_dataset(path, cache_dir=cache)
    assert "\n" not in str(err.value) and str(path.name) in str(err.value)
    assert not any((cache / "datasets").glob("*")) if (cache / "datasets").exists() else True


def test_d3rlpy2_bad_inputs(tmp_path):
    _d3rlpy2(tmp_path / "good.h5")
    raw = (tmp_path / "good.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(raw[: len(raw) // 2])
    _assert_bad(tmp_path / "cut.h5", tmp_path / "c1", "truncated or corrupt")
    _d3rlpy2(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "missing.h5", "a") as f:
        del f["actions_1"]
    _assert_bad(tmp_path / "missing.h5", tmp_path / "c2", "actions_1")
    _d3rlpy2(tmp_path / "lengths.h5")
    with h5py.File(tmp_path / "lengths.h5", "a") as f:
        rew = f["rewards_0"][()]
        del f["rewards_0"]
        f["rewards_0"] = rew[:-2]
    _assert_bad(tmp_path / "lengths.h5", tmp_path / "c3", "rewards")


def test_d3rlpy_v1_bad_inputs(tmp_path):
    write_d3rlpy_v1(tmp_path / "v1.h5", EPISODES)
    with h5py.File(tmp_path / "v1.h5", "a") as f:
        ept = f["episode_terminals"][()]
        del f["episode_terminals"]
        f["episode_terminals"] = ept[:-3]
    _assert_bad(tmp_path / "v1.h5", tmp_path / "c", "episode_terminals")


def test_named_env_offers_offrl_references_for_that_env(tmp_path):
    """A user's CartPole export names no env and no references: with --env CartPole-v1 offrl offers its
    CartPole references (random 19.22, scripted expert 500) as the options that apply them, and applying
    them normalizes the behaviour data; the named env's spaces are checked."""
    write_d3rlpy_v1(tmp_path / "v1.h5", EPISODES)
    bare = load_dataset(tmp_path / "v1.h5", cache_dir=tmp_path / "c")
    assert (bare.info.ref_min_score, bare.info.ref_source, bare.info.env_id, bare.info.ref_hint) == (None,) * 4
    named = load_dataset(tmp_path / "v1.h5", cache_dir=tmp_path / "c", env="CartPole-v1")
    assert named.info.ref_min_score is None and named.info.normalized_score is None  # offered, not applied
    assert "--ref-min-score 19.22 --ref-max-score 500" in named.info.ref_hint
    applied = load_dataset(tmp_path / "v1.h5", cache_dir=tmp_path / "c", env="CartPole-v1",
                           ref_min_score=19.22, ref_max_score=500)
    mean = applied.info.episode_return["mean"]
    assert applied.info.normalized_score["mean"] == pytest.approx(100 * (mean - 19.22) / (500 - 19.22))
    with pytest.raises(UserError, match="Pendulum-v1") as err:  # spaces checked against the named env
        load_dataset(tmp_path / "v1.h5", cache_dir=tmp_path / "c", env="Pendulum-v1")
    assert "\n" not in str(err.value)
