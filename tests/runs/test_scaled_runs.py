"""A run trained with an observation scaler, through the application layer: its config records the scaler,
a restored policy re-fits the same one from the run's dataset and reproduces the run's last evaluation; the
bad settings are one line, exit 2, nothing written. (Exact resume with a scaler, offline and online: the
discrete rows of tests/runs/test_resume_matrix.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.train import TINY_CQL

from offrl.algos.scaled import ScaledObservationPolicy
from offrl.config import load_yaml
from offrl.data.scaling import fit_observation_scaler
from offrl.runs import evaluate_checkpoint, load_policy

SCALED = [*TINY_CQL, "cql.observation_scaler=standard"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, pendulum: str) -> tuple[Path, Path]:
    from offrl import train

    base = tmp_path_factory.mktemp("scaled-run")
    done = train(pendulum, "cql", out=base / "runs", name="scaled", steps=30, eval_every=15, eval_episodes=2,
                 progress=False, cache_dir=base / "cache", dotlist=SCALED)
    return done.dir, base / "cache"


def test_restored_policy_scales_as_the_run_did(run, monkeypatch):
    run_dir, cache = run
    monkeypatch.setenv("OFFRL_CACHE", str(cache))
    assert load_yaml(run_dir / "config.yaml")["cql"]["observation_scaler"] == "standard"
    loaded = load_policy(run_dir)
    assert isinstance(loaded.policy, ScaledObservationPolicy)
    fitted = fit_observation_scaler("standard", loaded.dataset)
    assert torch.equal(loaded.policy.scaler.loc, fitted.loc) and torch.equal(loaded.policy.scaler.scale, fitted.scale)
    summary = json.loads((run_dir / "summary.json").read_text())
    n = summary["final"]["episodes"]
    result, _ = evaluate_checkpoint(run_dir, episodes=n, seed=0)
    assert float(result.returns.mean()) == pytest.approx(summary["final"]["return_mean"], rel=1e-6)


def test_bad_scaler_settings_are_one_line(offrl_cli, assert_user_error, pendulum, tmp_path):
    out = tmp_path / "runs"
    wrong = offrl_cli("train", "--dataset", pendulum, "--steps", "5", "--out", str(out),
                      "--set", "cql.observation_scaler=zscore", "--set", "dataset.env_id=Pendulum-v1",
                      env={"OFFRL_CACHE": str(tmp_path / "cache")})
    assert_user_error(wrong, "cql.observation_scaler", "use one of none, standard, min_max", "zscore")
    scratch = offrl_cli("train", "--env", "Pendulum-v1", "--online-steps", "20", "--out", str(out),
                        "--set", "cql.observation_scaler=standard")
    assert_user_error(scratch, "cql.observation_scaler=standard", "online from scratch")
    assert not out.exists()
