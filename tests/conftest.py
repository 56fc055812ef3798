"""Shared test set-up: every test gets its own cache and Minari root, so nothing leaks between tests
or into the user's home directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path_factory.mktemp("offrl-env")
    monkeypatch.setenv("OFFRL_CACHE", str(base / "cache"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(base / "minari"))
    monkeypatch.setenv("OFFRL_RUNS", str(base / "runs"))
    # pytest-xdist runs two workers on two cores: one thread each avoids oversubscription.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


# Bundled datasets, converted once per test session into one cache (tests that check conversion itself
# use their own files and the per-test OFFRL_CACHE above).
@pytest.fixture(scope="session")
def _bundled_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundled-cache")


def _bundled(name: str, cache: Path):
    from offrl.data import load_dataset

    return load_dataset(name, cache_dir=cache)


@pytest.fixture(scope="session")
def cartpole_medium(_bundled_cache: Path):
    return _bundled("offrl/cartpole/medium-v0", _bundled_cache)


@pytest.fixture(scope="session")
def cartpole_mixed(_bundled_cache: Path):
    return _bundled("offrl/cartpole/mixed-v0", _bundled_cache)


@pytest.fixture(scope="session")
def pendulum_medium(_bundled_cache: Path):
    return _bundled("offrl/pendulum/medium-v0", _bundled_cache)


@pytest.fixture(scope="session")
def pendulum_expert(_bundled_cache: Path):
    return _bundled("offrl/pendulum/expert-v0", _bundled_cache)


@pytest.fixture
def offrl_cli():
    """Run the real ``offrl`` console script: ``offrl_cli("train", "--dataset", ...)`` -> CompletedProcess."""
    from helpers.cli import offrl_cli as run

    return run


@pytest.fixture
def assert_user_error():
    """``assert_user_error(result, *needles)``: exit 2, one ``offrl: error:`` line naming each needle, no
    traceback (docs/contracts.md, "User errors")."""
    from helpers.cli import assert_user_error as check

    return check


# Small real D4RL-style files (random rollouts of real envs), written once per test module.
@pytest.fixture(scope="module")
def pendulum(tmp_path_factory: pytest.TempPathFactory) -> str:
    """10 random Pendulum-v1 episodes of 50 steps as an HDF5 file (its path)."""
    from helpers.train import pendulum_file

    return str(pendulum_file(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory: pytest.TempPathFactory) -> str:
    """40 random CartPole-v1 episodes as an HDF5 file (its path)."""
    from helpers.train import cartpole_file

    return str(cartpole_file(tmp_path_factory.mktemp("data")))
