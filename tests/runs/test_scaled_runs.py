"""A run trained with an observation and a reward scaler, through the application layer: its config records
them, a restored policy re-fits the same observation scaler from the run's dataset and reproduces the run's
last evaluation, the critic diagnostics read in scaled-reward units; the bad settings are one line, exit 2,
nothing written. (Exact resume with a scaler, offline and online: the
discrete rows of tests/runs/test_resume_matrix.py.)"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from helpers.train import TINY_CQL

from offrl.algos.scaled import ScaledObservationPolicy
from offrl.config import load_yaml
from offrl.data.scaling import fit_observation_scaler
from offrl.runs import evaluate_checkpoint, load_policy
from offrl.runs.rundir import read_config_notes

SCALED = [*TINY_CQL, "cql.observation_scaler=standard", "cql.reward_scaler=return_based", "cql.reward_scale=10"]


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
    saved = load_yaml(run_dir / "config.yaml")["cql"]
    assert (saved["observation_scaler"], saved["reward_scaler"], saved["reward_scale"]) == ("standard",
                                                                                          "return_based", 10.0)
    notes = read_config_notes(run_dir)  # what was fitted, recorded in config.yaml and printed by offrl train
    assert any(n.startswith("cql.observation_scaler=standard: (obs - mean) / (std + 1e-3) per dimension") and
               "(3 dimensions)" in n for n in notes), notes
    assert any(n.startswith("cql.reward_scaler=return_based: reward -> ") and "episode returns" in n for n in notes)
    loaded = load_policy(run_dir)
    assert isinstance(loaded.policy, ScaledObservationPolicy)
    fitted = fit_observation_scaler("standard", loaded.dataset)
    assert torch.equal(loaded.policy.scaler.loc, fitted.loc) and torch.equal(loaded.policy.scaler.scale, fitted.scale)
    summary = json.loads((run_dir / "summary.json").read_text())
    n = summary["final"]["episodes"]
    result, _ = evaluate_checkpoint(run_dir, episodes=n, seed=0)
    assert float(result.returns.mean()) == pytest.approx(summary["final"]["return_mean"], rel=1e-6)
    # the V(s0) diagnostics read in the env's units: the critic, trained on rewards times 10 / (the range of
    # the data's 50-step episode returns, a few hundred), is mapped back beside the raw returns, which stay
    # Pendulum's hundreds (the scaled ones would be a few tens at most)
    rows = [r for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get("diag_achieved_return_s0")]
    assert rows and all(float(r["diag_mc_return_s0"]) < -100.0 for r in rows)
    assert all(float(r["diag_achieved_return_s0"]) < -300.0 for r in rows)


def test_bad_scaler_settings_are_one_line(offrl_cli, assert_user_error, pendulum, tmp_path):
    out = tmp_path / "runs"
    wrong = offrl_cli("train", "--dataset", pendulum, "--steps", "5", "--out", str(out),
                      "--set", "cql.observation_scaler=zscore", "--set", "dataset.env_id=Pendulum-v1",
                      env={"OFFRL_CACHE": str(tmp_path / "cache")})
    assert_user_error(wrong, "cql.observation_scaler", "use one of none, standard, min_max", "zscore")
    scratch = offrl_cli("train", "--env", "Pendulum-v1", "--online-steps", "20", "--out", str(out),
                        "--set", "cql.observation_scaler=standard")
    assert_user_error(scratch, "cql.observation_scaler=standard", "online from scratch")
    cases = [(["cql.reward_scaler=zscore"], ("cql.reward_scaler", "use one of none, standard, min_max, "
                                                                  "return_based", "zscore")),
             (["cql.reward_scale=0"], ("cql.reward_scale", "must be > 0")),
             (["cql.reward_bias=-1", "online.calql=true"], ("Cal-QL's Monte-Carlo bound cannot follow a reward shift",))]
    for dotlist, words in cases:
        sets = [a for d in ["dataset.env_id=Pendulum-v1", *dotlist] for a in ("--set", d)]
        done = offrl_cli("train", "--dataset", pendulum, "--steps", "5", "--out", str(out), *sets,
                         env={"OFFRL_CACHE": str(tmp_path / "cache")})
        assert_user_error(done, *words)
    scratch = offrl_cli("train", "--env", "Pendulum-v1", "--online-steps", "20", "--out", str(out),
                        "--set", "cql.reward_scaler=min_max")
    assert_user_error(scratch, "cql.reward_scaler=min_max", "online from scratch", "reward_scale/reward_bias need no data")
    assert not out.exists()
