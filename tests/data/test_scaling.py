"""Observation scalers fitted on real files: the statistics d3rlpy's scalers compute, and the bad inputs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from offrl.data import load_dataset
from offrl.data.scaling import fit_observation_scaler
from offrl.errors import UserError


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory, pendulum: str) -> tuple[object, np.ndarray]:
    """The Pendulum rollouts with one dimension in large units, one offset, and a constant one added."""
    root = tmp_path_factory.mktemp("scaling")
    with h5py.File(pendulum) as src:
        arrays = {k: src[k][()] for k in src}
    obs = arrays["observations"]
    factor = np.array([1000.0, 1.0, 0.05], np.float32)
    shift = np.array([0.0, 250.0, 0.0], np.float32)
    for key in ("observations", "next_observations"):
        arrays[key] = np.concatenate([arrays[key] * factor + shift, np.full((len(obs), 1), 7.0, np.float32)], 1)
    path = root / "skewed.hdf5"
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
        f.attrs["env_id"] = "Pendulum-v1"
    return load_dataset(path, cache_dir=root / "cache"), arrays["observations"]


def test_standard_scaler_is_mean_and_std(skewed):
    dataset, obs = skewed
    scaler = fit_observation_scaler("standard", dataset)
    np.testing.assert_allclose(scaler.loc.numpy(), obs.astype(np.float64).mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scaler.scale.numpy(), obs.astype(np.float64).std(0) + 1e-3, rtol=1e-6)
    scaled = scaler(torch.as_tensor(obs))
    np.testing.assert_allclose(scaled.mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(scaled[:, :3].std(0, unbiased=False).numpy(), 1.0, rtol=1e-2)
    assert (scaled[:, 3] == 0).all()  # a constant dimension: (7 - 7) / (0 + eps)
    assert scaled.dtype == torch.float32


def test_min_max_scaler_maps_the_data_range_to_unit_box(skewed):
    dataset, obs = skewed
    scaled = fit_observation_scaler("min_max", dataset)(torch.as_tensor(obs))
    np.testing.assert_allclose(scaled[:, :3].amin(0).numpy(), -1.0, atol=1e-6)
    np.testing.assert_allclose(scaled[:, :3].amax(0).numpy(), 1.0, atol=1e-6)
    assert (scaled[:, 3] == 0).all()  # constant: scale 1, centred on its value


def test_none_fits_nothing(skewed):
    assert fit_observation_scaler("none", skewed[0]) is None


def test_bad_scaler_inputs(skewed, tmp_path: Path):
    with pytest.raises(UserError, match=r"^cql.observation_scaler: use one of none, standard, min_max, got 'z'$"):
        fit_observation_scaler("z", skewed[0], option="cql.observation_scaler")
    with pytest.raises(UserError, match="trained online from scratch has none"):
        fit_observation_scaler("standard", None)
