"""Minari datasets stored as Apache Arrow: read episode by episode, identical to the same data in HDF5."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers.datafiles import cartpole_episodes

from offrl.data import load_dataset
from offrl.errors import UserError

HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None
SPACES = {
    "observation_space": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
    "action_space": gym.spaces.Discrete(2),
}


@pytest.fixture(autouse=True)
def _minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))


def _write(dataset_id, episodes, data_format):
    from minari import create_dataset_from_buffers
    from minari.data_collector.episode_buffer import EpisodeBuffer

    buffers = [
        EpisodeBuffer(
            id=i,
            infos={},
            **{k: ep[k] for k in ("observations", "actions", "rewards", "terminations", "truncations")},
        )
        for i, ep in enumerate(episodes)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        create_dataset_from_buffers(
            dataset_id, buffers, env="CartPole-v1", algorithm_name="test", data_format=data_format, **SPACES
        )
    return os.path.join(os.environ["MINARI_DATASETS_PATH"], dataset_id)


def _fake_arrow_dataset(root):
    """The folder layout Minari's Arrow storage writes (metadata.json + one folder per episode)."""
    from minari.serialization import serialize_space

    data = root / "test" / "cartpole" / "arrow-v0" / "data"
    (data / "0").mkdir(parents=True)
    (data / "0" / "part-0.arrow").write_bytes(b"ARROW1\0\0not really")
    meta = {
        "data_format": "arrow",
        "dataset_id": "test/cartpole/arrow-v0",
        "observation_space": serialize_space(SPACES["observation_space"]),
        "action_space": serialize_space(SPACES["action_space"]),
    }
    (data / "metadata.json").write_text(json.dumps(meta))
    return data.parent


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch):
    for name in ("pyarrow", "pyarrow.ipc"):  # as on a machine without the arrow extra
        monkeypatch.setitem(sys.modules, name, None)
    folder = _fake_arrow_dataset(tmp_path / "minari")
    with pytest.raises(UserError, match=r'needs pyarrow: pip install "offrl\[arrow\]"') as err:
        load_dataset(folder, cache_dir=tmp_path / "c")
    assert "\n" not in str(err.value) and "arrow-v0" in str(err.value)
    assert not (tmp_path / "c" / "datasets").exists() or not any((tmp_path / "c" / "datasets").iterdir())
    # The id resolves too, and `datasets list` sees it.
    from offrl.data.minari import list_local_minari

    assert list_local_minari() == ["test/cartpole/arrow-v0"]


@pytest.mark.skipif(not HAS_PYARROW, reason="needs pyarrow (offrl[arrow])")
def test_arrow_and_hdf5_convert_identically(tmp_path):
    episodes = cartpole_episodes((5, 8, 4, 11))
    arrow_path = _write("test/cartpole/arrow-v0", episodes, "arrow")
    arrow = load_dataset(arrow_path, cache_dir=tmp_path / "a")
    hdf5 = load_dataset(_write("test/cartpole/hdf5-v0", episodes, "hdf5"), cache_dir=tmp_path / "b")
    assert arrow.info.format == "minari-arrow" and hdf5.info.format == "minari"
    assert (
        (arrow.info.transitions, arrow.info.episodes)
        == (hdf5.info.transitions, hdf5.info.episodes)
        == (28, 4)
    )
    for key in hdf5.data.keys(include_nested=True, leaves_only=True):
        assert torch.equal(arrow.data.get(key), hdf5.data.get(key)), key
    small = load_dataset(arrow_path, cache_dir=tmp_path / "s", chunk_size=3)
    assert torch.equal(small.data["observation"], arrow.data["observation"])


@pytest.mark.skipif(not HAS_PYARROW, reason="needs pyarrow (offrl[arrow])")
def test_bad_arrow_datasets(tmp_path):
    from pathlib import Path

    folder = Path(_write("test/cartpole/arrow-v0", cartpole_episodes((5, 8)), "arrow"))
    part = sorted((folder / "data" / "1").glob("*.arrow"))[0]
    raw = part.read_bytes()
    part.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="truncated or corrupt Arrow data in episode 1") as err:
        load_dataset(folder, cache_dir=tmp_path / "c")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "c" / "datasets").exists() or not any((tmp_path / "c" / "datasets").iterdir())
