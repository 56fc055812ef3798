"""`offrl train --help` shows every default and how to give the evaluation env and references; a run's
score line carries its episodes and a 95% interval, and a run without references in an env offrl knows
is offered offrl's (issue 18)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from helpers.datafiles import write_d4rl

from offrl.cli.format import longer_run_hint, trend_text
from offrl.evaluation.findings import SETTLED_WITHIN, curve_trend, trend_reading


def test_help_shows_defaults_env_and_references(offrl_cli):
    text = " ".join(offrl_cli("train", "--help").stdout.split())  # argparse wraps lines
    for needle in ("offline_steps; default 100000", "(default 256)", "eval.interval, default 5000",
                   "eval.episodes, default 10", "eval.final_episodes, default 20", "(default 0)",
                   "--env ENV_ID", "--set dataset.ref_min_score=R_MIN --set dataset.ref_max_score=R_MAX",
                   "Pendulum-v1 (-1254.24, -147.69)", "CartPole-v1 (19.22, 500)", "Hopper",
                   "cql: d3rlpy 2.8 CQLConfig's values (2x256 nets", "config_origins"):
        assert needle in text, needle


def test_score_line_interval_critic_and_known_references(offrl_cli, tmp_path: Path):
    data = tmp_path / "pendulum-file.hdf5"  # a user's file: no references, no env named
    write_d4rl(data, lengths=(30, 30, 30), terminal=(False, False, False), obs_dim=3, act_dim=1)
    result = offrl_cli("train", "--dataset", str(data), "--env", "Pendulum-v1", "--steps", "12", "--batch-size", "8",
                       "--eval-every", "2", "--eval-episodes", "2", "--set", "cql.hidden_sizes=[8,8]",
                       "--set", "log_interval=2", "--out", str(tmp_path / "runs"), "--no-progress",
                       env={"OMP_WAIT_POLICY": ""}, timeout=900)  # unset: offrl's rule applies (docs/threads.md)
    assert result.returncode == 0, result.stderr[-2000:]
    score = result.stdout.strip().splitlines()[-1]
    # the last evaluation ran eval.final_episodes (20), not --eval-episodes (2), and says so with its interval
    assert re.search(r"final return -?[\d.]+ \[-?[\d.]+, -?[\d.]+\] over 20 episodes \(normalized n/a", score), score
    assert "mean of last 5 evaluations" in score
    assert re.search(r"^critic: (over|under)-estimates by [\d.]+ \(V\(s0\) ", result.stdout, re.M), result.stdout
    assert "offrl: note: no reference scores, so no normalized score; offrl's references for Pendulum-v1" in result.stderr
    run = Path(result.stdout.splitlines()[0].removeprefix("run: "))
    summary = json.loads((run / "summary.json").read_text())
    final = summary["final"]
    assert final["episodes"] == 20 and final["return_ci95"][0] < final["return_mean"] < final["return_ci95"][1]
    assert summary["best"]["episodes"] == 2 and summary["last_evals"]["evaluations"] == 5
    # has the score settled: the last third's trend (steps 8, 10, 12) in returns (no references), as printed
    evals = pd.read_csv(run / "metrics.csv").dropna(subset=["eval_return_mean"])
    change, low, high, n = curve_trend(evals["step"], evals["eval_return_mean"])
    tolerance = SETTLED_WITHIN * (evals["eval_return_mean"].max() - evals["eval_return_mean"].min())
    trend = summary["trend"]
    assert (trend["unit"], trend["evaluations"], trend["from_step"], trend["to_step"]) == ("return_mean", 3, 8, 12)
    assert trend["change"] == pytest.approx(change) and trend["ci95"] == pytest.approx([low, high])
    assert trend["tolerance"] == pytest.approx(tolerance) and low < change < high
    assert trend["reading"] == trend_reading(change, low, high, tolerance)
    assert trend_text(trend) in score and f"last third {change:+.1f} [{low:+.1f}, {high:+.1f}]: " in score
    rising = f"continue it to 24 steps with: offrl train --resume {run} --steps 24 --force"
    assert (rising in result.stderr) == (trend["reading"] == "still rising"), result.stderr
    assert summary["critic"]["verdict"] in ("over", "under", "consistent")
    waits = summary["threads"]["omp_waits"]  # offrl's rule: spin on an idle machine, sleep on a busy one
    assert (waits.startswith("spin: ") and summary["threads"]["omp_wait_policy"] == "ACTIVE") or (
        waits.startswith("sleep: ") and summary["threads"]["omp_wait_policy"] == "PASSIVE"), summary["threads"]


def _parsers(parser):
    """The parser and every sub-parser below it (offrl datasets info, ...)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_help_page_renders():
    """argparse %-formats help strings only when --help prints them: a bare '95% CI' crashed `offrl --help`."""
    from offrl.cli import build_parser

    pages = [p.format_help() for p in _parsers(build_parser())]
    assert len(pages) > 10 and all("usage:" in page for page in pages)


def test_top_level_help(offrl_cli):
    result = offrl_cli("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bootstrap 95% CI" in " ".join(result.stdout.split()) and "Traceback" not in result.stderr


def test_a_run_whose_score_still_rises_is_told_how_to_continue_it() -> None:
    rising = {"status": "completed", "steps": 5000, "online": None, "trend": {"reading": "still rising"}}
    assert longer_run_hint(rising, "runs/x/cql/a") == (
        "offrl: note: the score still rises over the last third of the run; continue it to 10000 steps with: "
        "offrl train --resume runs/x/cql/a --steps 10000 --force")
    for other in ({"trend": {"reading": "settled"}}, {"trend": {"reading": "unclear"}}, {"trend": None},
                  {"status": "stopped"}, {"online": {"frames": 100}}):
        assert longer_run_hint({**rising, **other}, "runs/x/cql/a") is None, other
