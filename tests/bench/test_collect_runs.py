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


@pytest.mark.parametrize("case", ["missing", "negative", "no-checkpoints"])
def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    runs, dest = tmp_path / "runs", tmp_path / "dest"
    argv = [str(runs), str(dest)]
    if case == "negative":
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
