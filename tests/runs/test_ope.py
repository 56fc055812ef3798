"""`offrl ope` and `offrl train --select fqe` on a real run with kept checkpoints: the ranking, the selected
checkpoint's score as the run measured it, and bad inputs as one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from offrl.errors import UserError

STEPS = 300


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from offrl import train

    base = tmp_path_factory.mktemp("ope-run")
    done = train("offrl/cartpole/medium-v0", "dqn", out=base / "runs", name="sel", steps=60, eval_every=20,
                 eval_episodes=2, progress=False, cache_dir=base / "cache",
                 dotlist=["dqn.hidden_sizes=[16,16]", "save_trainer_interval=20", "keep_checkpoints=true"])
    return done.dir, base / "cache"


def test_select_fqe_records_the_top_ranked_checkpoint(run, offrl_cli):
    run_dir, cache = run
    from offrl.runs.ope import select_checkpoint
    from offrl.runs.rundir import write_json_atomic

    summary = json.loads((run_dir / "summary.json").read_text())
    # what offrl train --select fqe records (fewer FQE steps and resamples than the defaults, to keep it short)
    summary["selected"] = select_checkpoint(run_dir, bootstrap=5, steps=STEPS)
    write_json_atomic(run_dir / "summary.json", summary)
    summary = json.loads((run_dir / "summary.json").read_text())
    selected = summary["selected"]
    out = offrl_cli("ope", str(run_dir), "--checkpoint", "all", "--bootstrap", "5", "--steps", str(STEPS), "--json",
                    env={"OFFRL_CACHE": str(cache)}, timeout=1800)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [r["step"] for r in report["results"]] == [20, 40, 60]
    assert "held-out split" in report["data"] and report["trained_on_data"] is False
    values = {r["step"]: r["value"] for r in report["results"] if not r["diverged"]}
    assert values and report["ranking"] == sorted(values, key=lambda s: -values[s])  # diverged fits left out
    assert selected["by"] == "fqe" and selected["step"] == report["ranking"][0] and selected["candidates"] == 3
    assert selected["fqe_value"] == pytest.approx(values[selected["step"]])
    first = report["results"][0]
    assert first["ci_low"] <= first["value"] <= first["ci_high"] and first["bootstrap_fits"] == 5
    assert all(r["steps"] == STEPS and r["ci_low"] < r["ci_high"] for r in report["results"])
    # the selected score is the run's own evaluation at that step (metrics.csv), next to final and best
    import pandas as pd

    metrics = pd.read_csv(run_dir / "metrics.csv")
    row = metrics[(metrics["step"] == selected["step"]) & metrics["eval_return_mean"].notna()].iloc[-1]
    assert selected["return_mean"] == pytest.approx(row["eval_return_mean"]) and selected["score_from"] == "metrics.csv"
    assert summary["final"]["step"] == 60 and "best" in summary


def test_ope_bad_inputs_are_one_line(run, offrl_cli, assert_user_error, tmp_path):
    run_dir, cache = run
    env = {"OFFRL_CACHE": str(cache)}
    assert_user_error(offrl_cli("ope", str(run_dir), "--checkpoint", "7", env=env),
                      "--checkpoint 7", "kept steps: 20, 40, 60")
    assert_user_error(offrl_cli("ope", str(run_dir), "--steps", "0", env=env), "--steps", "1 or more")
    assert_user_error(offrl_cli("ope", str(tmp_path / "nope"), env=env), "nope", "not an offrl run directory")
    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", bare / "config.yaml")
    shutil.copy(run_dir / "checkpoints" / "latest.pt", bare / "checkpoints" / "latest.pt")
    assert_user_error(offrl_cli("ope", str(bare), "--checkpoint", "all", env=env), "--checkpoint all",
                      "keep_checkpoints")


def test_select_fqe_needs_kept_checkpoints_before_training(tmp_path):
    from offrl import train

    with pytest.raises(UserError, match="--select fqe: ranks the kept checkpoints"):
        train("offrl/cartpole/medium-v0", "dqn", out=tmp_path / "runs", steps=2, select="fqe",
              cache_dir=tmp_path / "cache", dotlist=["keep_checkpoints=false"])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))
    with pytest.raises(UserError, match="--select best: unknown selection; choose fqe"):
        train("offrl/cartpole/medium-v0", "dqn", out=tmp_path / "runs", steps=2, select="best")
