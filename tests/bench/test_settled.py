"""benchmarks/settled.py on hand-made run folders whose answers are known: which curves settled, and which
library ends higher (or that the seeds cannot tell)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.bench import benchmark_module


def _settled():
    return benchmark_module("settled")


def _run(root: Path, dataset: str, algo: str, seed: int, scores: list[float], status: str = "completed") -> None:
    run = root / dataset.replace("/", "__") / algo / f"seed{seed}"
    run.mkdir(parents=True)
    steps = np.arange(1, len(scores) + 1) * 100
    rows = ["step,phase,eval_normalized_score", *(f"{s},offline,{v}" for s, v in zip(steps, scores, strict=True)),
            f"{steps[-1]},offline,"]  # a training row with no evaluation: not an evaluation
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run / "summary.json").write_text(json.dumps({"status": status, "steps": int(steps[-1])}))


def _table(text: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first_cell}")]


def test_settled_and_versus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flat = [10.0] * 6
    for seed, level in enumerate((50.0, 52.0, 54.0)):  # offrl: flat, well above d3rlpy
        _run(tmp_path, "toy/a-v0", "cql", seed, [level] * 9)
    for seed, level in enumerate((30.0, 31.0, 32.0)):  # d3rlpy: still rising by ~30 points over the last third
        _run(tmp_path, "toy/a-v0", "d3rlpy-cql", seed, list(np.linspace(0.0, level, 9)))
    _run(tmp_path, "toy/a-v0", "cql", 3, [99.0] * 9, status="running")  # unfinished: left out
    for seed, level in enumerate((10.0, 20.0)):  # one dataset where the seeds overlap
        _run(tmp_path, "toy/b-v0", "cql", seed, [level] * 6)
        _run(tmp_path, "toy/b-v0", "d3rlpy-cql", seed, [level + 1.0] * 6)
    _run(tmp_path, "toy/c-v0", "cql", 0, flat)  # a single d3rlpy seed: no CI, no claim
    _run(tmp_path, "toy/c-v0", "d3rlpy-cql", 0, flat)
    _run(tmp_path, "toy/d-v0", "dqn", 0, flat)  # no peer row: not compared
    _run(tmp_path, "toy/e-v0", "cql", 0, [float("nan")] * 3)  # no reference scores: left out, no traceback

    assert _settled().main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "left out 2 run(s)" in captured.err
    rows = {(r[0], r[1]): r for r in _table(captured.out, "toy/") if len(r) == 9}
    assert rows[("toy/a-v0", "cql")][2] == "3" and rows[("toy/a-v0", "cql")][8] == "yes"
    assert rows[("toy/a-v0", "d3rlpy-cql")][8] == "no"  # +~10 over the last third
    assert rows[("toy/a-v0", "d3rlpy-cql")][7].startswith("+11.6 [")  # the line through 4 evaluations
    assert rows[("toy/a-v0", "cql")][5].startswith("52.0 ")
    assert rows[("toy/a-v0", "d3rlpy-cql")][4].startswith("31.0 [")  # the last evaluations: 30, 31, 32

    versus = {r[0]: r for r in _table(captured.out, "toy/") + _table(captured.out, "across") if len(r) == 5}
    assert set(versus) == {"toy/a-v0", "toy/b-v0", "toy/c-v0", "across 3 datasets"}
    assert versus["toy/a-v0"][2] == "3 / 3"
    assert versus["toy/a-v0"][3].startswith("+21.0 [") and versus["toy/a-v0"][3].endswith("(offrl higher)")
    assert versus["toy/b-v0"][3].startswith("-1.0 [") and versus["toy/b-v0"][3].endswith("(no difference shown)")
    assert versus["toy/c-v0"][3] == "+0.0 (no CI: one seed)"  # never [nan, nan]
    assert versus["across 3 datasets"][3].endswith("(no CI: one seed)")
    one = {r[1]: r for r in _table(captured.out, "toy/c-v0") if len(r) == 9}
    assert all(cell.endswith(" (1 seed)") for cell in one["cql"][4:8]) and "nan" not in captured.out


def test_d3rlpy_higher_and_pooled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for ds in ("toy/a-v0", "toy/b-v0"):
        for seed in range(3):
            _run(tmp_path, ds, "cql", seed, [20.0 + seed] * 6)
            _run(tmp_path, ds, "d3rlpy-cql", seed, [40.0 + seed] * 6)
    assert _settled().main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    pooled = _table(out, "across 2 datasets")[0]
    assert pooled[3].startswith("-20.0 [") and pooled[3].endswith("(d3rlpy higher)")


def test_no_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _settled().main([str(tmp_path)]) == 2
    assert "no completed runs" in capsys.readouterr().err


def test_settled_reads_the_trend_not_two_evaluations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A noisy plateau whose last evaluation happens to be high is settled (the line through the last third is
    flat); a steady climb of a few points per evaluation is not, even where two single evaluations would say
    little."""
    for seed in range(4):  # last third: 40, 30, 40, 30, 40, 30, 44 (the last one high by chance)
        _run(tmp_path, "toy/a-v0", "dqn", seed, [10.0] * 12 + [40.0, 30.0] * 3 + [44.0 + seed])
        _run(tmp_path, "toy/b-v0", "dqn", seed, list(np.arange(19) * 1.5 + seed))  # +1.5 per evaluation
    assert _settled().main([str(tmp_path)]) == 0
    rows = {r[0]: r for r in _table(capsys.readouterr().out, "toy/") if len(r) == 9}
    plateau, climb = rows["toy/a-v0"], rows["toy/b-v0"]
    change_high = float(plateau[6].split(", ")[1].rstrip("]"))
    assert plateau[6].startswith("+5.5 [") and change_high > 5  # two evaluations alone would call it unsettled
    assert plateau[8] == "yes", plateau
    assert climb[7].startswith("+9.0 [") and climb[8] == "no", climb


def test_last_episodes_compares_like_for_like(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--last-episodes 2: each run's last evaluation is rescored on its episodes 0-1, from whichever record has
    them: the peer's per-episode returns, a last evaluation of exactly 2 episodes (read from an older peer's
    config), or the offrl_last_2_episodes.csv beside the runs folder; a run with none is left out."""
    root = tmp_path / "runs"
    ref = {"min": 0.0, "max": 200.0}
    for seed in range(2):  # offrl: last evaluation over 4 episodes reads 90, over episodes 0-1 it reads 40 + seed
        _run(root, "toy/a-v0", "cql", seed, [30.0] * 5 + [90.0])
        s = root / "toy__a-v0" / "cql" / f"seed{seed}"
        (s / "summary.json").write_text(json.dumps({"status": "completed", "steps": 600, "ref": ref,
                                                    "final": {"step": 600, "episodes": 4, "normalized_score": 90.0}}))
    (tmp_path / "offrl_last_2_episodes.csv").write_text(
        "dataset,algo,seed,step,episodes,return_mean,normalized_mean\n"
        "toy/a-v0,cql,0,600,2,80.0,40.0\ntoy/a-v0,cql,1,600,2,82.0,41.0\n")
    # the newer peer keeps each episode's return: episodes 0-1 average 60 -> 30 normalized (not its 4-episode 50)
    _run(root, "toy/a-v0", "d3rlpy-cql", 0, [30.0] * 5 + [50.0])
    (root / "toy__a-v0" / "d3rlpy-cql" / "seed0" / "summary.json").write_text(json.dumps(
        {"status": "completed", "steps": 600, "ref": ref,
         "final": {"step": 600, "episodes": 4, "normalized_score": 50.0, "episode_returns": [50, 70, 130, 150]}}))
    # an older peer: no episode count in its summary, its config's eval ran 2 episodes: its last score stands
    _run(root, "toy/a-v0", "d3rlpy-cql", 1, [30.0] * 5 + [34.0])
    old = root / "toy__a-v0" / "d3rlpy-cql" / "seed1"
    (old / "summary.json").write_text(json.dumps({"status": "completed", "steps": 600, "ref": ref,
                                                  "final": {"step": 600, "normalized_score": 34.0}}))
    (old / "config.yaml").write_text(json.dumps({"eval": {"interval": 100, "episodes": 2, "seed": 0}}))
    # an offrl run the csv does not cover: left out rather than compared on other episodes
    _run(root, "toy/a-v0", "cql", 2, [30.0] * 5 + [90.0])
    (root / "toy__a-v0" / "cql" / "seed2" / "summary.json").write_text(json.dumps(
        {"status": "completed", "steps": 600, "ref": ref, "final": {"step": 600, "episodes": 4}}))

    assert _settled().main([str(root), "--last-episodes", "2"]) == 0
    captured = capsys.readouterr()
    assert "left out 1 run(s)" in captured.err and "episodes 0-1" in captured.err
    rows = {r[1]: r for r in _table(captured.out, "toy/") if len(r) == 9}
    assert rows["cql"][2] == "2" and rows["cql"][5].startswith("32.1 ")  # (30*4 + 40.5) / 5
    # episodes 0-1 of each seed, from the csv: 40 and 41, Student-t over 2 seeds (t = 12.71, standard error 0.5)
    assert rows["cql"][4].startswith("40.5 [34.1, 46.9]")
    assert rows["d3rlpy-cql"][4].startswith("32.0 [6.6, 57.4]")  # 30 (its returns 50, 70) and 34 (2 episodes)
    assert rows["d3rlpy-cql"][5].startswith("30.4 ")  # (30*4 + (30 + 34) / 2) / 5
    versus = {r[0]: r for r in _table(captured.out, "toy/") if len(r) == 5}
    assert versus["toy/a-v0"][3].startswith("+8.5 [")  # 40.5 - 32.0

    assert _settled().main([str(root)]) == 0  # without it: every run's own last evaluation
    rows = {r[0]: r for r in _table(capsys.readouterr().out, "toy/") if len(r) == 5}
    assert rows["toy/a-v0"][3].startswith("+48.0 [")  # 90 - 42
    assert _settled().main([str(root), "--last-episodes", "-1"]) == 2
    assert "--last-episodes -1" in capsys.readouterr().err


def test_student_t_intervals_by_default_bootstrap_on_request() -> None:
    from offrl.evaluation.findings import mean_ci
    from offrl.report.stats import welch_ci

    settled = _settled()
    rng = np.random.default_rng(0)
    a, b = np.array([21.0, 23.5, 19.8, 22.4, 20.9]), np.array([16.0, 22.1, 12.3, 19.9, 14.7])
    assert settled._ci(a, rng) == pytest.approx(mean_ci(a))
    assert settled._difference([(a, b)], rng) == pytest.approx(welch_ci(a, b))
    boot = settled._difference([(a, b)], np.random.default_rng(0), "bootstrap")
    t = settled._difference([(a, b)], rng, "t")
    assert t[2] - t[1] > boot[2] - boot[1]  # the bootstrap over 5 seeds is the narrower one
    # pooled over datasets: the mean of the differences, its variance the mean of theirs over the count squared
    pooled = settled._difference([(a, b), (a + 1, b)], rng, "t")
    assert pooled[0] == pytest.approx(a.mean() - b.mean() + 0.5) and pooled[1] < pooled[0] < pooled[2]
