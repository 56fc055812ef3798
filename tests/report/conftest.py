"""Fixtures of the report tests: a folder of real run directories."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.report import make_run


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    """Pendulum (cql) and CartPole (discrete-cql, dqn), 3 seeds each; one dqn seed stopped at step 600
    without summary.json (crashed or still running)."""
    root = tmp_path / "runs"
    for seed in range(3):
        make_run(root, seed=seed, final_score=60 + 5 * seed)
        make_run(root, dataset="offrl/cartpole/mixed-v0", algo="discrete-cql", seed=seed, final_score=80 + seed)
        make_run(root, dataset="offrl/cartpole/mixed-v0", algo="dqn", seed=seed, final_score=30 + seed,
                 status=None if seed == 2 else "completed", stop_at=600 if seed == 2 else None)
    return root
