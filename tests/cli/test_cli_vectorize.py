"""``offrl train --seeds N --vectorize``: the seeds as batched models (one process, or --jobs groups), through the
real CLI.

Each seed's run folder holds what the same seed trained alone writes (metrics within float rounding, the same
evaluations), ``offrl eval`` reads it like any run, a SIGTERM stops every seed after a checkpoint and
``--vectorize --resume`` continues the group bit for bit, and the inputs it cannot batch are one line, exit 2.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.cli import OFFRL, assert_user_error
from helpers.train import TINY_CQL, TINY_DCQL, TINY_DQN, offrl_cli

SETS = [a for s in [*TINY_DCQL, "num_threads=1", "eval.final_episodes=2"] for a in ("--set", s)]
BASE = ["--batch-size", "16", "--eval-every", "20", "--eval-episodes", "2", "--no-progress"]
TIMING = ("wall_time", "updates_per_s")


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def _metrics(run) -> pd.DataFrame:
    df = pd.read_csv(run / "metrics.csv")
    return df.drop(columns=[c for c in df.columns if c in TIMING])


STOP_STEPS = 4000


def _assert_resumed_as_uninterrupted(run, reference, steps: int) -> None:
    """A stopped-then-resumed run equals the uninterrupted one: metrics and final weights, bit for bit."""
    summary = _summary(run)
    assert summary["status"] == "completed" and summary["steps"] == steps and summary["resumed"] == 1
    pd.testing.assert_frame_equal(_metrics(run), _metrics(reference))
    a, b = (torch.load(r / "checkpoints" / "latest.pt", weights_only=True) for r in (run, reference))
    assert all(torch.equal(a["loss_module"][k], b["loss_module"][k]) for k in b["loss_module"])


def test_a_vectorized_seed_trains_as_the_same_seed_alone(cartpole, tmp_path):
    """The strongest form of 'each seed learns like a separate run': with the same draws, the same numbers."""
    group = offrl_cli("train", "--dataset", cartpole, "--steps", "40", *BASE, "--seeds", "0,2", "--vectorize",
                      "--jobs", "1", "--out", str(tmp_path / "g"), "--name", "v", *SETS)
    alone = offrl_cli("train", "--dataset", cartpole, "--steps", "40", *BASE, "--seed", "2",
                      "--out", str(tmp_path / "a"), "--name", "a", *SETS)
    assert group.returncode == 0 and alone.returncode == 0, group.stderr + alone.stderr
    algo = "cartpole-random/discrete-cql"
    runs = {s: tmp_path / "g" / algo / f"v-seed{s}" for s in (0, 2)}
    for seed, run in runs.items():
        summary = _summary(run)
        assert summary["status"] == "completed" and summary["steps"] == 40 and summary["seed"] == seed
        assert f"seed {seed}: {run}" in group.stdout
        assert "vectorized_seeds:\n- 0\n- 2" in (run / "config.yaml").read_text()
    assert "2 of 2 seeds" in group.stdout and (tmp_path / "g" / algo / "v-report" / "index.html").exists()

    mine, theirs = _metrics(runs[2]), _metrics(tmp_path / "a" / algo / "a")
    assert list(mine.columns) == list(theirs.columns) and list(mine["step"]) == list(theirs["step"]) == [5 * i for i in range(1, 9)]
    evals = [c for c in theirs.columns if c.startswith("eval_")]
    assert evals and mine[evals].equals(theirs[evals])  # the same policy: the same episodes, exactly
    numeric = [c for c in theirs.columns if c not in evals and theirs[c].dtype.kind == "f"]
    np.testing.assert_allclose(mine[numeric].to_numpy(), theirs[numeric].to_numpy(), rtol=1e-4, atol=1e-5)
    assert not _metrics(runs[0])[numeric].equals(mine[numeric])  # and seed 0 learned something else

    # offrl eval's engine reads a vectorized seed's folder like any run's: the final evaluation's episodes again
    from offrl.runs.policy import evaluate_checkpoint

    result, _ = evaluate_checkpoint(runs[2], episodes=2)
    assert result.metrics()["eval_return_mean"] == mine["eval_return_mean"].dropna().iloc[-1]


def test_sigterm_then_vectorized_resume_equals_uninterrupted(cartpole, tmp_path):
    steps = ["--steps", "600", "--set", "save_trainer_interval=50", "--set", "log_interval=10", "--batch-size", "16",
             "--eval-every", "300", "--eval-episodes", "1", "--no-progress"]
    args = ["train", "--dataset", cartpole, *steps, "--seeds", "1,3", "--vectorize", "--jobs", "1"]
    algo = tmp_path / "cartpole-random" / "dqn"
    dqn = ["--algo", "dqn", *[a for s in [*TINY_DQN, "num_threads=1", "eval.final_episodes=2"] for a in ("--set", s)]]
    proc = subprocess.Popen([OFFRL, *args, *dqn, "--out", str(tmp_path), "--name", "t"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpt = algo / "t-seed3" / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 240
    while not ckpt.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    runs = [algo / "t-seed1", algo / "t-seed3"]
    if _summary(runs[0])["status"] == "completed":
        pytest.skip("the run finished before SIGTERM arrived")
    assert proc.returncode == 130, err
    stopped = [_summary(run) for run in runs]
    assert {s["status"] for s in stopped} == {"stopped"} and stopped[0]["steps"] == stopped[1]["steps"] < 600
    assert f"offrl train --vectorize --resume {runs[0]} {runs[1]}" in err

    resumed = offrl_cli("train", "--vectorize", "--jobs", "1", "--resume", *map(str, runs), "--no-progress")
    full = offrl_cli(*args, *dqn, "--out", str(tmp_path), "--name", "full")
    assert resumed.returncode == 0 and full.returncode == 0, resumed.stderr + full.stderr
    for run, seed in zip(runs, (1, 3), strict=True):
        _assert_resumed_as_uninterrupted(run, algo / f"full-seed{seed}", 600)


def test_groups_in_parallel_processes_stop_resume_and_report_as_one(cartpole, tmp_path):
    """--jobs 2 splits seeds 1,3,5 into batched groups [1, 3] and [5], one process each: a SIGTERM stops both
    after a checkpoint, the one printed command resumes them (the same groups), and every seed ends equal to an
    uninterrupted grouped run, which equals the seeds batched in one process within float rounding."""
    # 4,000 steps: long enough that the one-seed group cannot finish while the other process is still starting
    steps = ["--steps", str(STOP_STEPS), "--set", "save_trainer_interval=200", "--set", "log_interval=10", "--batch-size", "16",
             "--eval-every", "300", "--eval-episodes", "1", "--no-progress"]
    dqn = ["--algo", "dqn", *[a for s in [*TINY_DQN, "eval.final_episodes=2"] for a in ("--set", s)]]
    args = ["train", "--dataset", cartpole, *steps, "--seeds", "1,3,5", "--vectorize", *dqn, "--out", str(tmp_path)]
    algo = tmp_path / "cartpole-random" / "dqn"
    proc = subprocess.Popen([OFFRL, *args, "--jobs", "2", "--name", "t"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpts = [algo / f"t-seed{s}" / "checkpoints" / "latest.pt" for s in (1, 5)]
    deadline = time.monotonic() + 240
    while not all(c.exists() for c in ckpts):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    runs = [algo / f"t-seed{s}" for s in (1, 3, 5)]
    assert not any(_summary(run)["status"] == "completed" for run in runs), "a group finished before SIGTERM"
    assert proc.returncode == 130, err
    assert "as 2 batched models (2+1) in parallel processes, 1 torch thread(s) each" in out
    stopped = [_summary(run) for run in runs]
    assert {s["status"] for s in stopped} == {"stopped"} and stopped[0]["steps"] == stopped[1]["steps"] < STOP_STEPS
    assert "vectorized_seeds:\n- 1\n- 3\n" in (runs[0] / "config.yaml").read_text()
    assert "vectorized_seeds:\n- 5\n" in (runs[2] / "config.yaml").read_text()
    command = f"offrl train --vectorize --resume {runs[0]} {runs[1]} {runs[2]}"
    assert command in err

    resumed = offrl_cli(*command.split()[1:], "--jobs", "2", "--no-progress")
    full = offrl_cli(*args, "--jobs", "2", "--name", "full")
    together = offrl_cli(*args, "--jobs", "1", "--name", "one")
    assert resumed.returncode == 0 and full.returncode == 0 and together.returncode == 0, resumed.stderr + full.stderr
    assert full.stdout.count("3 of 3 seeds") == 1  # one report over both groups
    for run, seed in zip(runs, (1, 3, 5), strict=True):
        reference = algo / f"full-seed{seed}"
        _assert_resumed_as_uninterrupted(run, reference, STOP_STEPS)
        one = _metrics(algo / f"one-seed{seed}")
        numeric = [c for c in one.columns if not c.startswith("eval_") and one[c].dtype.kind == "f"]
        np.testing.assert_allclose(_metrics(reference)[numeric].to_numpy(), one[numeric].to_numpy(), rtol=1e-4,
                                   atol=1e-5)


def test_the_groups_and_their_processes():
    from offrl.cli.seeds import _vectorized_jobs, seed_groups, seed_list

    assert seed_list("3") == [0, 1, 2] and seed_list("5,") == [5] and seed_list("2,4") == [2, 4]

    assert seed_groups([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]] and seed_groups([7, 8], 2) == [[7], [8]]
    assert seed_groups(list(range(8)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert _vectorized_jobs(5, 3, "cpu") == 3  # never more processes than seeds
    assert _vectorized_jobs(None, 8, "cuda:0") == 1  # one batched model on a GPU
    import os

    assert _vectorized_jobs(None, 8, "cpu") == min(os.cpu_count() or 1, 8)


BAD = [
    (["--vectorize"], "--seeds"),
    (["--seeds", "2", "--vectorize", "--online-steps", "10"], "--online-steps"),
    (["--resume", "a", "b"], "--vectorize"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_what_it_cannot_batch_is_one_line_and_writes_nothing(cartpole, tmp_path, extra, message):
    out = tmp_path / "runs"
    result = offrl_cli("train", "--dataset", cartpole, "--steps", "5", "--eval-episodes", "2", "--out", str(out),
                       *extra, *SETS)
    assert_user_error(result, message)
    assert not out.exists() or not any(out.rglob("*")), "a bad input must leave no run folder"


def test_a_vectorized_cql_seed_trains_as_the_same_seed_alone(pendulum, tmp_path):
    """Continuous CQL samples actions in its loss: each seed draws them from its own stream, so a batched seed
    still equals the same seed trained alone (and the group's other seed learns something else)."""
    sets = [a for s in [*TINY_CQL, "num_threads=1", "eval.final_episodes=2", "cql.bc_steps=10"]
            for a in ("--set", s)]
    group = offrl_cli("train", "--dataset", pendulum, "--steps", "30", *BASE, "--seeds", "0,4", "--vectorize",
                      "--jobs", "1", "--out", str(tmp_path / "g"), "--name", "v", *sets)
    alone = offrl_cli("train", "--dataset", pendulum, "--steps", "30", *BASE, "--seed", "4",
                      "--out", str(tmp_path / "a"), "--name", "a", *sets)
    assert group.returncode == 0 and alone.returncode == 0, group.stderr + alone.stderr
    algo = next((tmp_path / "a").iterdir()).name + "/cql"
    mine, theirs = _metrics(tmp_path / "g" / algo / "v-seed4"), _metrics(tmp_path / "a" / algo / "a")
    assert list(mine.columns) == list(theirs.columns) and list(mine["step"]) == list(theirs["step"])
    assert {"loss_actor_bc", "loss_cql", "alpha", "cql_gap", "q_data_mean"} <= set(theirs.columns)
    numeric = [c for c in theirs.columns if theirs[c].dtype.kind == "f" and not c.startswith("eval_")]
    np.testing.assert_allclose(mine[numeric].to_numpy(), theirs[numeric].to_numpy(), rtol=1e-4, atol=1e-5)
    evals = [c for c in theirs.columns if c.startswith("eval_return")]
    np.testing.assert_allclose(mine[evals].to_numpy(dtype=float), theirs[evals].to_numpy(dtype=float), rtol=1e-4)
    assert not _metrics(tmp_path / "g" / algo / "v-seed0")[numeric].equals(mine[numeric])


@pytest.mark.parametrize(("sets", "message"), [("discrete_cql.dueling=true", "dueling"), ("precision=bf16", "precision"),
                                               ("discrete_cql.fused=false", "fused"), ("log_timings=true", "log_timings"),
                                               ("cql.max_q_backup=true", "max_q_backup"), ("cql.fused=false", "fused")])
def test_each_setting_it_cannot_batch_is_named(cartpole, pendulum, sets, message):
    from offrl.errors import UserError
    from offrl.runs.compose import compose_run_config
    from offrl.runs.vectorized import check_vectorizable

    data, tiny = (pendulum, TINY_CQL) if sets.startswith("cql.") else (cartpole, TINY_DCQL)
    cfg, _ = compose_run_config(data, dotlist=[*tiny, sets])
    with pytest.raises(UserError, match=message):
        check_vectorizable(cfg)


def test_resuming_a_folder_that_is_not_a_run_is_one_line_before_any_group_starts(tmp_path):
    (tmp_path / "empty").mkdir()
    result = offrl_cli("train", "--vectorize", "--jobs", "2", "--resume", str(tmp_path / "empty"),
                       str(tmp_path / "missing"))
    assert_user_error(result, f"--resume {tmp_path / 'empty'}", "not an offrl run folder")
    assert "batched models" not in result.stdout  # refused in the parent: no group was started
    twice = offrl_cli("train", "--vectorize", "--resume", str(tmp_path / "empty"), str(tmp_path / "empty"))
    assert_user_error(twice, "--resume", "listed twice")
