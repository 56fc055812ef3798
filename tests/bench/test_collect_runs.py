"""benchmarks/collect_runs.py: a study's finished runs leave the scratch folder as records, once each."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from helpers.bench import benchmark_module

import offrl


def _collect():
    return benchmark_module("collect_runs")


def test_collects_finished_runs_once_with_a_like_for_like_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs, dest = tmp_path / "runs", tmp_path / "report" / "runs"
    run = offrl.train("offrl/cartpole/random-v0", algo="dqn", seed=0, steps=20, out=runs, name="seed0",
                      dotlist=["eval.interval=10", "eval.episodes=2"]).dir
    slug = run.parents[1]
    # a finished peer run beside it (its records and the config the suite gave it), and a run still training
    peer = slug / "d3rlpy-dqn" / "seed0"
    peer.mkdir(parents=True)
    for name in ("config.yaml", "metrics.csv", "summary.json"):
        shutil.copyfile(run / name, peer / name)
    given = runs / ".peer-configs" / f"{slug.name}.dqn.seed0.json"
    given.parent.mkdir()
    given.write_text('{"config_hash": "x"}')
    training = slug / "dqn" / "seed1"
    shutil.copytree(run, training)
    summary = json.loads((training / "summary.json").read_text())
    (training / "summary.json").write_text(json.dumps({**summary, "status": "running"}))

    assert _collect().main([str(runs), str(dest), "--last-episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "collected offrl__cartpole__random-v0/dqn/seed0 (last over 3 episodes:" in out
    assert "collected offrl__cartpole__random-v0/d3rlpy-dqn/seed0" in out and "seed1" not in out
    for rel in ("dqn/seed0", "d3rlpy-dqn/seed0"):
        kept = dest / slug.name / rel
        assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "metrics.csv", "summary.json"]
        assert (kept / "metrics.csv").read_bytes() == (slug / rel / "metrics.csv").read_bytes()
    assert (dest / ".peer-configs" / given.name).read_text() == given.read_text()
    assert not (dest / slug.name / "dqn" / "seed1").exists()
    # the row is the final checkpoint on episodes 0-2, as `offrl eval RUN --episodes 3 --seed 0` scores it
    rows = list(csv.DictReader((dest.parent / "offrl_last_3_episodes.csv").open()))
    from offrl.runs import evaluate_checkpoint

    result, _ = evaluate_checkpoint(run, episodes=3, seed=0)
    assert rows == [{"dataset": "offrl/cartpole/random-v0", "algo": "dqn", "seed": "0", "step": "20", "episodes": "3",
                     "return_mean": f"{result.mean:.4f}", "normalized_mean": f"{result.normalized_mean:.4f}"}]

    # a second call finds nothing new and appends nothing
    assert _collect().main([str(runs), str(dest), "--last-episodes", "3"]) == 0
    assert "nothing new" in capsys.readouterr().out
    assert len(list(csv.DictReader((dest.parent / "offrl_last_3_episodes.csv").open()))) == 1


@pytest.mark.parametrize("case", ["missing", "negative", "no-checkpoints", "restore-missing"])
def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    runs, dest = tmp_path / "runs", tmp_path / "dest"
    argv = [str(runs), str(dest)]
    if case == "restore-missing":  # --restore REPORT RUNS with no such report: nothing is created
        argv = ["--restore", str(runs), str(dest)]
    elif case == "negative":
        runs.mkdir()
        argv += ["--last-episodes", "-1"]
    elif case == "no-checkpoints":
        run = runs / "offrl__x__y-v0" / "cql" / "seed0"
        run.mkdir(parents=True)
        for name in ("config.yaml", "metrics.csv"):
            (run / name).write_text("")
        (run / "summary.json").write_text('{"status": "completed"}')
        argv += ["--last-episodes", "10"]
    with pytest.raises(SystemExit) as exc:
        _collect().main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("collect_runs.py: error: "), err
    assert not dest.exists()  # nothing half-written


def test_a_run_in_training_is_carried_restored_and_resumed_exactly(pendulum: str, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A study's run killed with its session: ``--in-flight`` carries its last resume point, ``--restore`` puts
    it into a fresh scratch folder, and the resumed run ends as one that never stopped."""
    import signal
    import subprocess
    import time

    import pandas as pd
    import torch
    from helpers.cli import OFFRL
    from helpers.train import TINY_CQL

    settings = ["--steps", "200", "--batch-size", "16", "--eval-every", "100", "--eval-episodes", "1", "--seed", "3",
                "--no-progress", *[a for s in [*TINY_CQL, "save_trainer_interval=50"] for a in ("--set", s)]]

    def train(out: Path, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([OFFRL, "train", "--dataset", pendulum, "--out", str(out), "--name", "seed3",
                                 *settings, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    whole = tmp_path / "whole"
    assert train(whole).wait(timeout=600) == 0
    runs, report = tmp_path / "runs", tmp_path / "report" / "runs"
    proc = train(runs)
    run = runs / "pendulum-random" / "cql" / "seed3"
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "step_100.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # the session ends
    proc.wait()
    # a peer run in training beside it, at step 40
    peer = run.parents[1] / "d3rlpy-cql" / "seed3"
    (peer / "resume").mkdir(parents=True)
    (peer / "summary.json").write_text('{"status": "running"}')
    (peer / "resume" / "step40.d3").write_bytes(b"weights")
    (peer / "resume" / "state.json").write_text('{"step": 40, "tag": "step40"}')
    (runs / ".peer-configs").mkdir()
    (runs / ".peer-configs" / "pendulum-random.cql.seed3.json").write_text('{"config_hash": "x"}')

    assert _collect().main([str(runs), str(report), "--in-flight"]) == 0
    out = capsys.readouterr().out
    at = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["step"]
    assert f"in flight: pendulum-random/cql/seed3 at step {at}" in out and "d3rlpy-cql/seed3 at step 40" in out
    flight = report.parent / "in-flight" / "pendulum-random"
    assert sorted(p.name for p in (flight / "cql" / "seed3" / "checkpoints").iterdir()) == ["latest.pt"]
    assert (flight / "d3rlpy-cql" / "seed3" / "resume" / "step40.d3").read_bytes() == b"weights"

    fresh = tmp_path / "next-session"
    assert _collect().main(["--restore", str(report), str(fresh)]) == 0
    assert f"restored pendulum-random/cql/seed3 (resumes at step {at})" in capsys.readouterr().out
    assert (fresh / ".peer-configs" / "pendulum-random.cql.seed3.json").is_file()
    resumed = subprocess.run([OFFRL, "train", "--resume", str(fresh / "pendulum-random" / "cql" / "seed3"),
                              "--no-progress"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    ended, reference = (torch.load(r / "pendulum-random" / "cql" / "seed3" / "checkpoints" / "latest.pt",
                                   weights_only=True) for r in (fresh, whole))
    assert ended["step"] == reference["step"] == 200
    for key, value in reference["loss_module"].items():
        assert torch.equal(ended["loss_module"][key], value), key
    timing = ["wall_time", "updates_per_s"]
    frames = [pd.read_csv(r / "pendulum-random" / "cql" / "seed3" / "metrics.csv") for r in (fresh, whole)]
    pd.testing.assert_frame_equal(*(f.drop(columns=[c for c in f.columns if c in timing or c.startswith("time_")])
                                    for f in frames))

    # the next carry finds the offrl run completed (collected) and drops its in-flight copy; a restore
    # leaves a scratch run that is further along alone
    assert _collect().main([str(fresh), str(report), "--in-flight"]) == 0
    out = capsys.readouterr().out
    assert "collected pendulum-random/cql/seed3" in out and "cql/seed3 dropped (completed)" in out
    assert not (flight / "cql").exists() and (flight / "d3rlpy-cql" / "seed3").is_dir()
    (fresh / "pendulum-random" / "d3rlpy-cql" / "seed3" / "resume" / "state.json").write_text('{"step": 60}')
    assert _collect().main(["--restore", str(report), str(fresh)]) == 0
    assert "nothing to restore" in capsys.readouterr().out
