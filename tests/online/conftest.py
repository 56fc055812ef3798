from __future__ import annotations

import pytest

from offrl.data import load_dataset


@pytest.fixture(scope="session")
def _online_cache(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("online-cache")


@pytest.fixture(scope="session")
def cartpole_medium(_online_cache):
    return load_dataset("offrl/cartpole/medium-v0", cache_dir=_online_cache)


@pytest.fixture(scope="session")
def pendulum_medium(_online_cache):
    return load_dataset("offrl/pendulum/medium-v0", cache_dir=_online_cache)
