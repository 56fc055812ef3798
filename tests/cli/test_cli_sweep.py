"""``offrl sweep`` without Ray: bad sweep specs fail in one line before any trial starts, and the local
engine (the process pool of ``offrl train --seeds``) runs trials into ordinary run folders.

Real console-script subprocesses on the bundled CartPole data; the Ray engine is tested in
test_cli_sweep_ray.py."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers.cli import assert_user_error, offrl_cli

TINY = ["--steps", "200", "--eval-every", "200", "--eval-episodes", "1", "--set", "discrete_cql.hidden_sizes=[16,16]",
        "--set", "log_interval=50"]


def _file(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)


BAD_FILES = [
    ("datasets: [offrl/cartpole/medium-v0]\nlearning_rate: 3\n", "unknown key 'learning_rate'"),
    ("datasets: [offrl/cartpole/medium-v0]\ngrid:\n  discrete_cql.min_q_weight: []\n", "the grid is empty"),
    ("datasets: [offrl/cartpole/medium-v0]\nseeds: [1, 1]\n", "seeds"),
    ("- just\n- a list\n", "expected a mapping"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES, ids=["unknown-key", "empty-grid", "seed-twice", "not-a-map"])
def test_a_bad_sweep_file_is_one_line_before_any_trial(tmp_path, text, message):
    out = tmp_path / "sweep"
    line = assert_user_error(offrl_cli("sweep", _file(tmp_path, text), "--out", str(out)), "sweep.yaml", message)
    assert line.startswith("offrl: error: sweep file")
    assert not out.exists()


BAD_FLAGS = [
    (["--dataset", "offrl/cartpole/medium-v0", "--grid", "discrete_cql.min_q_weight="], "the grid is empty"),
    (["--dataset", "offrl/cartpole/medium-v0", "--grid", "discrete_cql.min_q_weight"], "--grid"),
    (["--grid", "discrete_cql.min_q_weight=1,5"], "--dataset"),
    (["--dataset", "offrl/nope/medium-v0"], "offrl/nope/medium-v0"),
    (["--dataset", "offrl/cartpole/medium-v0", "--grid", "discrete_cql.nope=1,2"], "discrete_cql.nope"),
    (["--dataset", "offrl/cartpole/medium-v0", "--grid", "cql.min_q_weight=1,5"], "no trial of this sweep trains cql"),
    (["--dataset", "offrl/cartpole/medium-v0", "--engine", "local", "--address", "h:1"], "--address"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_FLAGS,
                         ids=["empty-grid", "no-values", "no-dataset", "unknown-dataset", "unknown-key",
                              "key-of-no-trial", "address-local"])
def test_a_bad_sweep_spec_is_one_line_before_any_trial(tmp_path, extra, message):
    out = tmp_path / "sweep"
    assert_user_error(offrl_cli("sweep", *extra, "--out", str(out), "--cache-dir", str(tmp_path / "c")), message)
    assert not out.exists(), "a bad spec must not start a trial or write the sweep folder"


def test_local_engine_runs_trials_as_run_folders_and_reports(tmp_path):
    out = tmp_path / "sweep"
    result = offrl_cli("sweep", "--engine", "local", "--dataset", "offrl/cartpole/medium-v0", "--seeds", "1", *TINY,
                       "--grid", "discrete_cql.min_q_weight=1,5", "--out", str(out), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    assert "running 2 trial(s) at a time on this machine" in result.stdout
    runs = sorted((out / "runs" / "offrl__cartpole__medium-v0" / "discrete-cql").iterdir())
    assert [r.name for r in runs] == ["discrete_cql.min_q_weight=1-seed0", "discrete_cql.min_q_weight=5-seed0"]
    weights = []
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 200 and summary["final"], summary
        assert (run / "checkpoints" / "latest.pt").exists() and (run / "report.html").exists()
        weights.append(yaml.safe_load((run / "config.yaml").read_text())["discrete_cql"]["min_q_weight"])
        assert f"seed 0: final return {summary['final']['return_mean']:.1f}" in result.stdout
    assert weights == [1.0, 5.0]  # each grid value reached its run's config
    html = (out / "report" / "index.html").read_text()
    assert "Chosen config per dataset" in html and "Selection on the test set" in html
    assert "chosen config, offrl/cartpole/medium-v0: discrete-cql (discrete_cql.min_q_weight=" in result.stdout
    assert f"report: {out / 'report' / 'index.html'}" in result.stdout
