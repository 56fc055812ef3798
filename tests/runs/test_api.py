"""``offrl.train`` end to end on small real datasets: the run folder, its files, determinism, bad input."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest
import torch
import yaml
from helpers.train import TINY_CQL, TINY_DQN

from offrl.errors import UserError
from offrl.runs import Run, train

#: Columns that measure the machine, not the learning: excluded from equality checks.
TIMING = ("wall_time", "updates_per_s")


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in df.columns if c in TIMING or c.startswith("time_")])


def small_cql(pendulum, out, name, eval_every=10, **kw):
    return train(pendulum, out=out, name=name, steps=20, batch_size=16, eval_every=eval_every, eval_episodes=1,
                 progress=False, dotlist=[*TINY_CQL, "save_trainer_interval=10"], **kw)


def test_run_folder_contents(pendulum, tmp_path):
    run = small_cql(pendulum, tmp_path, "a", seed=3)
    assert isinstance(run, Run)
    assert run.dir == tmp_path / "pendulum-random" / "cql" / "a"
    names = {p.name for p in run.dir.iterdir()}
    assert {"config.yaml", "metrics.csv", "summary.json", "checkpoints", "report.html"} <= names
    assert {"latest.pt", "step_10.pt", "step_20.pt"} <= {p.name for p in (run.dir / "checkpoints").iterdir()}
    assert not [p for p in run.dir.parent.iterdir() if p.name.startswith(".")], "temporary sibling left"

    config = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert config["seed"] == 3 and config["algo"] == "cql" and config["offline_steps"] == 20
    assert config["dataset"]["digest"] and config["dataset"]["id"] == pendulum
    assert config["cql"]["hidden_sizes"] == [16, 16] and "min_q_weight" in config["cql"]
    assert {"torch", "torchrl", "tensordict", "offrl", "python"} <= set(config["versions"])
    assert config["command"] and config["created"]

    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary == run.summary
    assert summary["status"] == "completed" and summary["steps"] == 20 and summary["seed"] == 3
    assert summary["updates_per_s"] > 0
    assert summary["final"]["step"] == 20 and summary["best"]["step"] in (10, 20)
    assert summary["dataset"]["digest"] == config["dataset"]["digest"]
    assert summary["dataset"]["mean_return"] < 0  # random Pendulum returns are negative

    metrics = run.metrics
    assert list(metrics.columns[:3]) == ["step", "phase", "wall_time"]
    assert metrics["step"].tolist() == [5, 10, 15, 20]
    assert (metrics["phase"] == "offline").all()
    assert {"loss_qvalue", "loss_actor", "alpha"} <= set(metrics.columns)
    evals = metrics.dropna(subset=["eval_return_mean"])
    assert evals["step"].tolist() == [10, 20]
    assert summary["final"]["return_mean"] == pytest.approx(evals["eval_return_mean"].iloc[-1])
    assert run.config.dataset.digest == config["dataset"]["digest"]
    assert Run.load(run.dir).summary["steps"] == 20


def test_same_seed_same_metrics_other_seed_differs(pendulum, tmp_path):
    a = comparable(small_cql(pendulum, tmp_path, "a", eval_every=20, seed=1).metrics)
    b = comparable(small_cql(pendulum, tmp_path, "b", eval_every=20, seed=1).metrics)
    c = comparable(small_cql(pendulum, tmp_path, "c", eval_every=20, seed=2).metrics)
    assert a["eval_return_mean"].notna().sum() == 1
    pd.testing.assert_frame_equal(a, b)
    assert not a["loss_qvalue"].equals(c["loss_qvalue"])


def test_weights_match_between_identical_runs(cartpole, tmp_path):
    runs = [train(cartpole, "dqn", out=tmp_path, name=n, steps=15, batch_size=8, eval_every=0, progress=False,
                  dotlist=TINY_DQN) for n in ("x", "y")]
    states = [torch.load(r.checkpoint, weights_only=True)["loss_module"] for r in runs]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert runs[0].summary["final"] is None  # no evaluation asked for


def test_bad_input_leaves_no_run_folder(pendulum, tmp_path):
    with pytest.raises(UserError, match="continuous actions"):
        train(pendulum, "dqn", out=tmp_path, name="bad")
    with pytest.raises(UserError, match="cql.nope"):
        train(pendulum, out=tmp_path, name="bad", dotlist=["cql.nope=1"])
    with pytest.raises(UserError, match="--steps"):
        train(pendulum, out=tmp_path, name="bad", steps=0)
    with pytest.raises(UserError, match="--config"):
        train(pendulum, out=tmp_path, config=tmp_path / "missing.yaml")
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(UserError, match=r"offrl\[tensorboard\]"):
            train(pendulum, out=tmp_path, logger="tensorboard", dotlist=TINY_CQL)
    with pytest.raises(UserError, match="dataset.env_id"):  # no evaluation env: caught before any file
        train(pendulum, out=tmp_path, eval_every=5)
    assert list(tmp_path.iterdir()) == []
    small_cql(pendulum, tmp_path, "taken")
    with pytest.raises(UserError, match="already exists"):
        small_cql(pendulum, tmp_path, "taken")
    with pytest.raises(UserError, match="not an offrl run"):
        Run.load(tmp_path)


def test_bundled_dataset_uses_its_bundled_config(tmp_path):
    run = train("offrl/cartpole/medium-v0", out=tmp_path, name="b", steps=20, eval_every=0, progress=False,
                dotlist=["log_interval=10"])
    config = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert config["algo"] == "discrete-cql"  # auto: discrete actions
    assert config["discrete_cql"]["hidden_sizes"] == [64, 64] and config["num_threads"] == 1  # bundled YAML
    assert config["offline_steps"] == 20  # explicit values win over it
    assert run.dir.parent.parent.name == "offrl__cartpole__medium-v0"
    assert run.summary["dataset"]["mean_return"] == pytest.approx(187.0, abs=1.0)
    assert run.summary["ref"]["source"] and run.summary["ref"]["max"] == 500.0
