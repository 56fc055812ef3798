"""`offrl train --online-steps` end to end: the real console script, the run folder's online columns and
summary, resume of the online phase, and a dataset made from the run."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
from helpers.cli import OFFRL

from offrl.data import load_dataset
from offrl.datagen.from_run import dataset_from_run
from offrl.runs import train


def test_cli_finetunes_writes_online_metrics_and_a_replay_dataset(tmp_path):
    cmd = [OFFRL, "train", "--dataset", "offrl/cartpole/medium-v0", "--algo", "dqn", "--steps", "40",
           "--online-steps", "200", "--frames-per-batch", "50", "--utd", "4", "--eval-every", "0", "--no-progress",
           "--out", str(tmp_path / "runs"), "--name", "ft", "--set", "log_interval=4",
           "--set", "online.replay=append", "--set", "online.eps_init=0.2", "--set", "dqn.hidden_sizes=[16]"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs" / "offrl__cartpole__medium-v0" / "dqn" / "ft"
    metrics = pd.read_csv(run / "metrics.csv")
    online = metrics[metrics["phase"] == "online"]
    assert metrics["phase"].tolist() == ["offline"] * 10 + ["online"] * 4  # 40 steps, then 4 batches x 4
    assert online["frames"].tolist() == [50, 100, 150, 200]
    # append mode: the offline share is the dataset's share of the one buffer
    n = load_dataset("offrl/cartpole/medium-v0").info.transitions
    assert online["offline_fraction"].tolist() == pytest.approx([n / (n + f) for f in (50, 100, 150, 200)])
    assert online["epsilon"].iloc[0] < 0.2 and online["online_episodes"].iloc[-1] >= 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["online"]["frames"] == 200
    # `offrl datasets make --from-run RUN` calls this (its CLI errors: test_from_run.py)
    made = dataset_from_run(run, name="runs/ft/replay-v0", root=tmp_path / "minari")
    replay = load_dataset(made, cache_dir=tmp_path / "cache")
    assert replay.info.transitions == 200 and replay.info.ref_max_score is not None


def test_online_phase_resumes_from_its_checkpoint(tmp_path):
    kwargs = dict(steps=20, eval_every=0, progress=False, out=tmp_path / "runs", name="r", frames_per_batch=25,
                  utd=2, **{"dqn.hidden_sizes": [16], "log_interval": 2})
    first = train("offrl/cartpole/medium-v0", "dqn", online_steps=100, **kwargs)
    assert first.summary["online"]["frames"] == 100 and first.summary["steps"] == 20 + 4 * 2
    kwargs.pop("name")
    second = train(resume=first.dir, force=True, online_steps=200, **kwargs)  # a longer online budget
    assert second.summary["status"] == "completed" and second.summary["steps"] == 20 + 8 * 2
    assert second.summary["online"]["frames"] == 200
    metrics = second.metrics
    assert metrics["frames"].dropna().tolist() == [25, 50, 75, 100, 125, 150, 175, 200]
    # the restored buffer kept the first 100 online transitions and grew by 100
    from offrl.datagen.from_run import online_rows

    assert online_rows(second.checkpoint).shape[0] == 200


def test_calql_finetuning_through_the_config(tmp_path):
    """--calql: the run's loss is Cal-QL offline and online, online episodes enter the buffer whole with
    their Monte-Carlo returns, and the bound rate is logged."""
    from offrl.datagen.from_run import online_rows

    run = train("offrl/pendulum/medium-v0", "cql", steps=10, online_steps=300, calql=True, frames_per_batch=100,
                utd=2, eval_every=0, progress=False, out=tmp_path / "runs", batch_size=32,
                **{"cql.hidden_sizes": [16], "cql.num_random": 2, "log_interval": 2,
                   "online.min_q_weight": 0.5})
    assert run.summary["status"] == "completed" and run.summary["online"]["episodes"] == 1
    metrics = run.metrics
    assert metrics["calql_bound_rate"].between(0, 1).all() and "online" in set(metrics["phase"])
    rows = online_rows(run.checkpoint)
    assert rows["mc_return"].shape == (200, 1) and bool(rows["mc_return"].isfinite().all())  # one whole episode
    assert run.config.online.calql is True


def test_online_training_from_scratch_without_a_dataset(tmp_path):
    """`offrl train --env CartPole-v1 --algo dqn --online-steps N` (the API call the CLI makes)."""
    from offrl.errors import UserError

    common = dict(progress=False, out=tmp_path / "runs", frames_per_batch=25, utd=2,
                  **{"dqn.hidden_sizes": [16], "log_interval": 2, "batch_size": 16})
    run = train(None, "dqn", online_env="CartPole-v1", online_steps=100, eval_every=4, eval_episodes=1,
                name="scratch", **common)
    assert run.dir == tmp_path / "runs" / "env__CartPole-v1" / "dqn" / "scratch"
    summary = run.summary
    assert summary["status"] == "completed" and summary["steps"] == 8 and summary["online"]["frames"] == 100
    assert summary["final"]["return_mean"] > 0 and (run.dir / "report.html").exists()
    metrics = run.metrics
    assert set(metrics["phase"]) == {"online"} and metrics["epsilon"].is_monotonic_decreasing
    assert metrics["offline_fraction"].eq(0).all() and run.config.dataset.id == "env:CartPole-v1"
    with pytest.raises(UserError, match="--steps"):
        train(None, "dqn", online_env="CartPole-v1", online_steps=100, steps=10, **common)
    with pytest.raises(UserError, match="continuous actions"):
        train(None, "cql", online_env="CartPole-v1", online_steps=100, progress=False, out=tmp_path / "runs")
