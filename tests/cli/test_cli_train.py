"""``offrl train`` through the real console script in a subprocess: help, a run, and every bad input
(exit 2, one line on stderr, no traceback, no run folder left behind)."""

from __future__ import annotations

import pytest
from helpers.cli import assert_user_error
from helpers.train import TINY_CQL, TINY_DCQL, cartpole_file, offrl_cli, pendulum_file

FLAGS = ["--dataset", "--algo", "--steps", "--batch-size", "--seed", "--device", "--eval-every",
         "--eval-episodes", "--config", "--set", "--out", "--name", "--resume", "--force", "--logger",
         "--no-progress", "--cache-dir"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"pendulum": str(pendulum_file(root)), "cartpole": str(cartpole_file(root))}


def test_help_documents_every_flag():
    result = offrl_cli("train", "--help")
    assert result.returncode == 0
    for flag in FLAGS:
        assert flag in result.stdout, flag
    assert "auto" in result.stdout and "discrete-cql" in result.stdout


def test_a_run_prints_its_folder_and_score(data, tmp_path):
    result = offrl_cli("train", "--dataset", data["cartpole"], "--steps", "30", "--batch-size", "16",
                       "--eval-every", "15", "--eval-episodes", "1", "--out", str(tmp_path), "--name", "r",
                       "--no-progress", *[a for s in TINY_DCQL for a in ("--set", s)])
    assert result.returncode == 0, result.stderr
    run = tmp_path / "cartpole-random" / "discrete-cql" / "r"
    assert f"run: {run}" in result.stdout
    assert "completed 30 steps" in result.stdout and "final return" in result.stdout
    assert (run / "summary.json").exists() and (run / "checkpoints" / "latest.pt").exists()
    assert "Traceback" not in result.stderr


# Each costs a Python start with torch; the other bad values are checked in-process (test_api, test_config).
BAD = [
    (["--algo", "sac"], "invalid choice"),
    (["--algo", "dqn"], "continuous actions"),
    (["--set", "cql.nope=1"], "cql.nope"),
    (["--set", "batch_size=1.5"], "batch_size"),
    (["--steps", "0"], "--steps"),
    (["--batch-size", "-3"], "--batch-size"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_exit_2_one_line(data, tmp_path, extra, message):
    out = tmp_path / "runs"
    result = offrl_cli("train", "--dataset", data["pendulum"], "--out", str(out), "--no-progress", *extra)
    assert_user_error(result, message)
    assert not out.exists() or not any(out.rglob("*")), "a bad input must leave no run folder"


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notarun").mkdir()
    result = offrl_cli("train", "--resume", str(tmp_path / "notarun"))
    assert_user_error(result, "not an offrl run")


def test_unwritable_output_folder(data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = offrl_cli("train", "--dataset", data["pendulum"], "--out", str(blocker / "runs"), "--no-progress")
    assert_user_error(result, "--out")
    assert blocker.read_text() == ""


def test_score_line_says_why_there_was_no_evaluation(data, tmp_path):
    result = offrl_cli("train", "--dataset", data["pendulum"], "--out", str(tmp_path / "runs"), "--no-progress",
                       "--steps", "4", "--set", "eval.interval=0", *(a for item in TINY_CQL for a in ("--set", item)))
    assert result.returncode == 0, result.stderr
    assert "no evaluation (eval.interval is 0: --eval-every N evaluates every N steps)" in result.stdout
