"""Offline multi-agent Q-learning on the bundled simple_spread-n2 medium dataset (generated from its recipe):
QMIX, VDN and independent Q-learning with the per-agent CQL penalty beat the behaviour policy; without the
penalty VDN does worse than the behaviour at the same budget (why the penalty exists); a killed run resumes
bit-identical; a trained policy records a dataset; bad inputs are one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from helpers.cli import OFFRL, assert_user_error, kill_after_and_resume

from offrl.errors import UserError

pytest.importorskip("mpe2")

from offrl.datagen.marl import make_marl_dataset  # noqa: E402
from offrl.runs import train  # noqa: E402

MEDIUM = "offrl/simple_spread-n2/medium-v0"
TIMING = ("wall_time", "updates_per_s")


@pytest.fixture(scope="session")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The medium dataset, made from its recipe (datasets/recipes.yaml) once per session."""
    return make_marl_dataset(MEDIUM, tmp_path_factory.mktemp("marl-datasets"))


def _final(medium: Path, algo: str, steps: int, tmp_path: Path, **overrides) -> dict:
    """The final evaluation (20 episodes) of an offline run with the bundled simple_spread-n2 config
    (mixing.min_q_weight=1, gamma 0.9, lr 1e-3) and ``overrides``."""
    run = train(str(medium), algo, steps=steps, eval_every=steps, progress=False, out=tmp_path, name=algo,
                **{"eval.final_episodes": 20, **overrides})
    return json.loads((run.dir / "summary.json").read_text())["final"]


def _behaviour(medium: Path) -> float:
    """The medium data's mean team return: its behaviour policy's score."""
    with h5py.File(medium, "r") as f:
        team = np.asarray(f["rewards"]).mean(axis=1)
        ends = np.flatnonzero(np.asarray(f["terminals"]) | np.asarray(f["timeouts"]))
    return float(np.mean(np.add.reduceat(team, np.r_[0, ends[:-1] + 1])))


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "steps"), [("vdn", 1500), ("qmix", 2000), ("iql", 1500)])
def test_penalised_learners_beat_the_behaviour(medium, algo, steps, tmp_path):
    final = _final(medium, algo, steps, tmp_path)  # the bundled config: mixing.min_q_weight=1
    assert final["return_mean"] > _behaviour(medium) + 1.0, final


@pytest.mark.slow
def test_without_the_penalty_vdn_scores_below_the_behaviour(medium, tmp_path):
    """Why the penalty exists: at the budget where penalised VDN beats the behaviour (above), plain VDN's
    greedy joint policy follows Q-values of moves the data rarely took and scores below the behaviour that
    made the data (docs/multiagent.md: QMIX without it stays near random play)."""
    plain = _final(medium, "vdn", 1500, tmp_path, **{"mixing.min_q_weight": 0.0})
    assert plain["return_mean"] < _behaviour(medium), plain


def _train_cmd(data: Path, out: Path, name: str) -> list[str]:
    return [OFFRL, "train", "--dataset", str(data), "--algo", "qmix", "--steps", "160", "--batch-size", "32",
            "--eval-every", "60", "--eval-episodes", "1", "--no-progress", "--out", str(out), "--name", name,
            "--set", "mixing.hidden_sizes=[16]", "--set", "log_interval=10", "--set", "save_trainer_interval=40",
            "--set", "eval.final_episodes=1", "--set", "num_threads=1"]


def _small_dataset(path: Path) -> Path:
    """A few random episodes of simple_spread-n2's shapes (2 agents, 12 features, 5 moves, state 24)."""
    rng = np.random.default_rng(0)
    t = 100
    with h5py.File(path, "w") as f:
        f.attrs.update({"n_agents": 2, "n_actions": 5, "env_id": "mpe2/simple_spread-n2"})
        f["observations"] = rng.normal(size=(t, 2, 12)).astype(np.float32)
        f["next_observations"] = rng.normal(size=(t, 2, 12)).astype(np.float32)
        f["state"] = rng.normal(size=(t, 24)).astype(np.float32)
        f["next_state"] = rng.normal(size=(t, 24)).astype(np.float32)
        f["actions"] = rng.integers(0, 5, size=(t, 2))
        f["rewards"] = rng.normal(size=(t, 2)).astype(np.float32)
        f["terminals"] = np.zeros(t, bool)
        f["timeouts"] = (np.arange(t) % 25) == 24
    return path


def test_killed_run_resumes_bit_identical(tmp_path):
    data = _small_dataset(tmp_path / "team.hdf5")
    out = tmp_path / "runs"
    base = out / "team" / "qmix"
    kill_after_and_resume(_train_cmd(data, out, "full"), _train_cmd(data, out, "killed"),
                          base / "killed" / "checkpoints" / "step_80.pt", base / "killed")
    summary = json.loads((base / "killed" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed"] == 1 and summary["steps"] == 160

    def comparable(run: Path) -> pd.DataFrame:
        metrics = pd.read_csv(run / "metrics.csv")
        return metrics.drop(columns=[c for c in metrics if c in TIMING or c.startswith("time_")])

    metrics = comparable(base / "full")
    assert {"eval_return_mean", "eval_normalized_score", "eval_agent0_return_mean", "eval_agent1_return_mean",
            "loss_cql", "cql_gap"} <= set(metrics.columns)
    pd.testing.assert_frame_equal(comparable(base / "killed"), metrics)
    a, b = (torch.load(base / name / "checkpoints" / "latest.pt", weights_only=True)["loss_module"]
            for name in ("full", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_offline_bad_inputs_are_one_line(tmp_path):
    data = _small_dataset(tmp_path / "team.hdf5")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([OFFRL, "train", "--dataset", str(data), "--steps", "2", "--no-progress", "--out",
                               str(tmp_path / "runs"), *args], capture_output=True, text=True, timeout=300)

    assert_user_error(cli("--algo", "dqn"), "multi-agent dataset", "qmix, vdn or iql")
    common = dict(steps=2, progress=False, out=tmp_path / "runs", batch_size=16)
    for algo, extra, match in [("vdn", {"dataset.env_id": "mpe2/simple_spread"}, "n_agents=2 but env .* has 3"),
                               ("iql", {"mixing.min_q_weight": -1.0}, "mixing.min_q_weight"),
                               ("qmix", {"online_steps": 100}, "--online-steps: .* not both")]:
        with pytest.raises(UserError, match=match):
            train(str(data), algo, **common, **extra)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("summary.json"))


def test_a_trained_multi_agent_policy_records_a_dataset(tmp_path):
    data = _small_dataset(tmp_path / "team.hdf5")
    run = train(str(data), "vdn", steps=20, eval_every=0, progress=False, out=tmp_path / "runs", name="v",
                batch_size=16, **{"mixing.hidden_sizes": [16]}).dir
    made = subprocess.run([OFFRL, "datasets", "make", "--policy", str(run), "--episodes", "3", "--noise", "0.5",
                           "--dataset-id", "offrl-runs/team/policy-v0", "--root", str(tmp_path / "made")],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    path = tmp_path / "made" / "offrl-runs" / "team" / "policy-v0.hdf5"
    assert made.stdout.strip() == str(path)
    from offrl.data import load_dataset

    ds = load_dataset(path)
    assert (len(ds), ds.info.episodes, ds.info.extra["multiagent"]["n_agents"]) == (75, 3, 2)
    assert ds.info.env_id == "mpe2/simple_spread-n2"
    from offrl.datagen.from_run import dataset_from_run
    from offrl.runs.policy import evaluate_checkpoint

    with pytest.raises(UserError, match="holds no online replay buffer \\(it trained offline from a dataset\\).*--policy"):
        dataset_from_run(run)
    with pytest.raises(UserError, match="multi-agent run's team returns are its eval_\\* columns"):
        evaluate_checkpoint(run)
    from offrl import Run

    with pytest.raises(UserError, match=r"^a plain-module policy \(offrl export, Run.policy\(\)\) is CQL's tanh actor"):
        Run.load(run).policy()
    assert_user_error(subprocess.run([OFFRL, "export", str(run), "--format", "torchscript"], capture_output=True,
                                     text=True, timeout=300), "a plain-module policy")
