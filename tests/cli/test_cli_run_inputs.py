"""``offrl train`` inputs that used to be recorded wrongly, ignored or refused too late, through the real console
script: a relative --dataset path is recorded as an absolute one, a run that lost latest.pt is not restarted from
step 0, and options that cannot apply (or contradict each other) are one line, exit 2, no run folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from helpers.cli import assert_user_error
from helpers.train import TINY_CQL, offrl_cli, pendulum_file

TINY = [a for s in TINY_CQL for a in ("--set", s)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return pendulum_file(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory, data) -> Path:
    """A tiny run trained from a working directory with --dataset given as a relative path."""
    work = tmp_path_factory.mktemp("work")
    (work / "f").mkdir()
    shutil.copy(data, work / "f" / "ok.hdf5")
    result = offrl_cli("train", "--dataset", "f/ok.hdf5", "--steps", "10", "--batch-size", "16", "--eval-every",
                       "0", "--no-progress", "--out", str(work / "runs"), "--name", "rel", *TINY,
                       "--set", "save_trainer_interval=5", cwd=work)
    assert result.returncode == 0, result.stderr
    return work / "runs" / "ok" / "cql" / "rel"


def _no_run(out: Path) -> None:
    assert not out.exists() or not any(out.rglob("*")), "a bad input must leave no run folder"


def test_a_relative_dataset_path_is_recorded_absolute(relative_run, tmp_path):
    config = yaml.safe_load((relative_run / "config.yaml").read_text())
    recorded = Path(config["dataset"]["id"])
    assert recorded.is_absolute() and recorded.is_file(), config["dataset"]
    assert Path(config["dataset"]["path"]).is_absolute()
    # and the run is usable from another working directory
    result = offrl_cli("eval", str(relative_run), "--episodes", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_resume_without_latest_names_the_newest_step_checkpoint(relative_run, tmp_path):
    run = tmp_path / "rel"
    shutil.copytree(relative_run, run)
    (run / "checkpoints" / "latest.pt").unlink()
    summary = (run / "summary.json").read_text()
    line = assert_user_error(offrl_cli("train", "--resume", str(run), "--no-progress", cwd=tmp_path),
                             "latest.pt is missing", "step_10.pt", "copy it to")
    assert "after 10 steps" in line
    assert not (run / "checkpoints" / "latest.pt").exists()
    assert (run / "summary.json").read_text() == summary, "a refused resume must not touch the run"


def test_resume_without_any_checkpoint_after_steps_is_refused(relative_run, tmp_path):
    run = tmp_path / "rel"
    shutil.copytree(relative_run, run)
    for ckpt in (run / "checkpoints").iterdir():
        ckpt.unlink()
    assert json.loads((run / "summary.json").read_text())["steps"] == 10
    assert_user_error(offrl_cli("train", "--resume", str(run), "--no-progress"),
                      "latest.pt is missing", "start a new run")


@pytest.mark.parametrize(("sets", "needles"), [
    (["dataset.ref_min_score=10", "dataset.ref_max_score=1"], ["dataset.ref_min_score", "dataset.ref_max_score",
                                                               "below the maximum"]),
    (["dataset.ref_min_score=nan", "dataset.ref_max_score=1"], ["dataset.ref_min_score", "dataset.ref_max_score",
                                                                "finite"]),
    (["eval.final_episodes=1"], ["eval.final_episodes", "eval.episodes (10)"]),
    (["cql.hidden_sizes=[0.5]"], ["--set cql.hidden_sizes=[0.5]", "a list of integers"]),
    (["cql=5"], ["--set cql=5", "a section"]),
], ids=["reversed refs", "nan ref", "final below episodes", "hidden float", "section scalar"])
def test_bad_config_values_name_the_key(data, tmp_path, sets, needles):
    out = tmp_path / "runs"
    result = offrl_cli("train", "--dataset", str(data), "--steps", "10", "--eval-every", "0", "--no-progress",
                       "--out", str(out), *[a for s in sets for a in ("--set", s)])
    line = assert_user_error(result, *needles)
    assert "$VALUE" not in line and "Merge error" not in line
    _no_run(out)


def test_datasets_info_refuses_non_finite_references(data):
    assert_user_error(offrl_cli("datasets", "info", str(data), "--ref-min-score", "nan", "--ref-max-score", "inf"),
                      "--ref-min-score", "--ref-max-score", "finite")
    assert_user_error(offrl_cli("datasets", "info", str(data), "--ref-min-score", "5", "--ref-max-score", "1"),
                      "--ref-min-score", "--ref-max-score", "below the maximum")


@pytest.mark.parametrize(("extra", "needles"), [
    (["--force"], ["--force", "only with --resume"]),
    (["--utd", "5"], ["--utd", "--online-steps"]),
    (["--frames-per-batch", "10"], ["--frames-per-batch", "--online-steps"]),
    (["--async-collection"], ["--async-collection", "--online-steps"]),
    (["--algo", "qmix"], ["--algo qmix", "--algo cql"]),
], ids=["force", "utd", "frames", "async", "qmix"])
def test_options_that_cannot_apply_are_refused(data, tmp_path, extra, needles):
    out = tmp_path / "runs"
    result = offrl_cli("train", "--dataset", str(data), "--steps", "10", "--eval-every", "0", "--no-progress",
                       "--out", str(out), *extra)
    line = assert_user_error(result, *needles)
    assert "discrete-cql" not in line
    _no_run(out)


def test_select_fqe_without_an_evaluation_env_is_refused_before_training(tmp_path):
    plain = tmp_path / "noenv.hdf5"
    _write(plain, actions=np.random.default_rng(0).uniform(-1, 1, (400, 1)).astype(np.float32))
    out = tmp_path / "runs"
    result = offrl_cli("train", "--dataset", str(plain), "--steps", "10", "--eval-every", "0", "--no-progress",
                       "--out", str(out), "--select", "fqe")
    assert_user_error(result, "--select fqe", "--env ENV_ID")
    _no_run(out)


def test_cql_refuses_a_constant_action_dimension_outside_unit_range(tmp_path):
    const = tmp_path / "act_const.hdf5"
    _write(const, actions=np.full((400, 1), 5.0, np.float32))
    out = tmp_path / "runs"
    result = offrl_cli("train", "--dataset", str(const), "--steps", "10", "--eval-every", "0", "--no-progress",
                       "--out", str(out))
    assert_user_error(result, "action bounds are equal on dimension 0", "rescale the actions into [-1, 1]")
    _no_run(out)


def _write(path: Path, *, actions: np.ndarray) -> Path:
    """A Pendulum-shaped D4RL-style file that names no env (episodes of 50 rows)."""
    rng = np.random.default_rng(1)
    n = len(actions)
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 3)).astype(np.float32)
        f["next_observations"] = rng.normal(size=(n, 3)).astype(np.float32)
        f["actions"] = actions
        f["rewards"] = rng.normal(size=n).astype(np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = (np.arange(n) % 50) == 49
    return path


def test_resume_names_the_dataset_by_its_relative_path_too(relative_run, tmp_path):
    work = relative_run.parents[3]
    run = tmp_path / "rel"
    shutil.copytree(relative_run, run)
    result = offrl_cli("train", "--resume", str(run), "--dataset", "f/ok.hdf5", "--no-progress", cwd=work)
    assert result.returncode == 0, result.stderr


def test_sweep_trials_get_the_absolute_dataset_path(data, tmp_path, monkeypatch):
    from offrl.cli.sweep_spec import SweepOptions, SweepSpec, plan_trials

    (tmp_path / "f").mkdir()
    shutil.copy(data, tmp_path / "f" / "ok.hdf5")
    monkeypatch.chdir(tmp_path)
    spec = SweepSpec(datasets=["f/ok.hdf5"], algos=["cql"], seeds=[0], steps=10)
    trials = plan_trials(spec, SweepOptions(cache_dir=str(tmp_path / "cache")), tmp_path / "sweep")
    assert [t.dataset for t in trials] == [str(tmp_path / "f" / "ok.hdf5")] and trials[0].dataset_is_path


@pytest.mark.parametrize("online", [False, True])
def test_an_env_guessed_from_the_file_name_that_does_not_fit_the_data_is_refused(data, tmp_path, online):
    """Pendulum data in a file named like D4RL's hopper: the name map picks Hopper-v5 (11-dim observations),
    which used to crash the first evaluation (or the online collector) with a matmul traceback."""
    mujoco = pytest.importorskip("mujoco")  # noqa: F841 - Hopper-v5 must build for the shapes to be compared
    named = tmp_path / "hopper-medium-v2.hdf5"
    shutil.copy(data, named)
    out = tmp_path / "runs"
    extra = ["--eval-every", "0", "--online-steps", "50"] if online else ["--eval-every", "5"]
    tiny = [a for s in TINY_CQL if not s.startswith("dataset.env_id") for a in ("--set", s)]  # no env given
    line = assert_user_error(offrl_cli("train", "--dataset", str(named), "--steps", "10", "--batch-size", "16",
                                       "--no-progress", "--out", str(out), *tiny, *extra),
                             str(named), "Hopper-v5", "(3,)", "(11,)", "guessed from its name")
    assert "--env" in line or online
    _no_run(out)
    # the right env passed explicitly trains
    ok = offrl_cli("train", "--dataset", str(named), "--env", "Pendulum-v1", "--steps", "10", "--batch-size", "16",
                   "--eval-every", "5", "--eval-episodes", "1", "--no-progress", "--out", str(out), *tiny)
    assert ok.returncode == 0, ok.stderr
