"""`offrl eval` on a run that the real `offrl train` wrote: it must reproduce the trainer's own final
evaluation (same policy, same seeds), and fail with one line when the env cannot be made."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers.cli import OFFRL, assert_user_error

from offrl.runs import evaluate_checkpoint


def _env(base: Path) -> dict[str, str]:
    return {**os.environ, "OFFRL_CACHE": str(base / "cache"), "MINARI_DATASETS_PATH": str(base / "minari"),
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    base = tmp_path_factory.mktemp("eval-cli")
    env = _env(base)
    cmd = [OFFRL, "train", "--dataset", "offrl/cartpole/medium-v0", "--algo", "dqn", "--steps", "2",
           "--eval-every", "2", "--eval-episodes", "3", "--out", str(base / "runs"), "--name", "s0", "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return base / "runs" / "offrl__cartpole__medium-v0" / "dqn" / "s0", env


def _eval(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([OFFRL, "eval", *args], env=env, capture_output=True, text=True, timeout=300)


def test_eval_reproduces_the_trainers_final_evaluation(trained, monkeypatch: pytest.MonkeyPatch):
    run, env = trained
    summary = json.loads((run / "summary.json").read_text())
    n = summary["final"]["episodes"]  # the last evaluation ran eval.final_episodes (20), not --eval-episodes (3)
    assert n == 20
    out = _eval(env, str(run), "--episodes", str(n), "--seed", "0", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["step"] == summary["final"]["step"] == 2
    assert res["seeds"] == list(range(n)) and len(res["returns"]) == n
    assert res["mean"] == pytest.approx(summary["final"]["return_mean"])
    assert res["return_ci95"] == pytest.approx(summary["final"]["return_ci95"])
    assert res["normalized_mean"] == pytest.approx(summary["final"]["normalized_score"])
    # summary.json keeps each episode's return of that last evaluation: any first k episodes can be rescored
    assert summary["final"]["episode_returns"] == pytest.approx(res["returns"], abs=1e-4)
    assert res["ref_source"] == summary["ref"]["source"] and res["env_id"] == "CartPole-v1"
    lo, hi = summary["ref"]["min"], summary["ref"]["max"]
    assert res["normalized"][0] == pytest.approx(100 * (res["returns"][0] - lo) / (hi - lo))
    # the same through the checkpoint file, in-process (the API the CLI calls)
    for key, value in env.items():
        if key.startswith(("OFFRL_", "MINARI_")):
            monkeypatch.setenv(key, value)
    result, loaded = evaluate_checkpoint(run / "checkpoints" / "step_2.pt", episodes=n, seed=0)
    assert loaded.step == 2 and loaded.run_dir == run
    assert result.returns.tolist() == res["returns"] and result.ref_source == "dataset metadata"


def test_eval_env_that_cannot_be_made_is_one_line(trained, tmp_path: Path):
    run, env = trained
    # an env whose optional extra is not installed (the MuJoCo extra may be: offrl[mujoco] recipes)
    missing_env, extra = ("Hopper-v5", "mujoco") if importlib.util.find_spec("mujoco") is None else (
        "AdroitHandDoor-v1", "robotics")
    out = _eval(env, str(run), "--env", missing_env, "--episodes", "1")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("offrl: error: ") and extra in lines[0].lower()
    missing = _eval(env, str(tmp_path / "nope"))
    assert_user_error(missing, "nope")
    stray = tmp_path / "stray.pt"
    stray.write_bytes(b"not a checkpoint")
    out = _eval(env, str(stray))
    assert_user_error(out, "config.yaml")


def test_eval_env_with_other_spaces_is_one_line(trained, tmp_path: Path):
    """A CartPole policy cannot act in Pendulum: one line naming --env and both spaces, no traceback."""
    run, env = trained
    out = _eval(env, str(run), "--env", "Pendulum-v1", "--episodes", "1")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("offrl: error: --env Pendulum-v1") and "space" in lines[0]
