"""benchmarks/ablation_diff.py on two hand-made folders of runs: the seed means, their difference and the
pooled row; running and damaged runs left out; nothing in common is exit 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.bench import benchmark_module


def _module():
    return benchmark_module("ablation_diff")


def _run(root: Path, dataset: str, algo: str, seed: int, scores: list[float], status: str = "completed") -> None:
    run = root / dataset / algo / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": status}))
    rows = ["step,eval_normalized_score,loss"] + [f"{100 * (i + 1)},{s},0.5" for i, s in enumerate(scores)]
    rows.insert(1, "50,,0.7")  # a training row without an evaluation
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_differences_per_dataset_and_pooled(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for seed, shift in ((0, 0.0), (1, 2.0)):
        _run(a, "offrl__x__v0", "cql", seed, [10 + shift] * 5 + [20 + shift] * 5)  # first 5: 10/12, last: 20/22
        _run(b, "offrl__x__v0", "cql", seed, [0 + shift] * 5 + [25 + shift] * 5)
        _run(a, "offrl__y__v0", "cql", seed, [5.0] * 10)
        _run(b, "offrl__y__v0", "cql", seed, [4.0] * 10)
    _run(a, "offrl__x__v0", "cql", 2, [99.0] * 10, status="running")  # not counted
    _run(b, "offrl__z__v0", "cql", 0, [1.0] * 10)  # only on one side: no row
    assert _module().main([str(a), str(b), "--algo-a", "cql"]) == 0  # Welch's interval by default
    out = capsys.readouterr().out.splitlines()
    x = next(line for line in out if line.startswith("| offrl/x/v0 |"))
    # A's first 5 means 10 and 12, B's 0 and 2: difference 10, standard error sqrt(2), 2 df, t = 4.303
    assert x.startswith("| offrl/x/v0 | 2 / 2 | 11.0, 1.0, +10.0 [+3.9, +16.1] |")
    assert _module().main([str(a), str(b), "--algo-a", "cql", "--interval", "bootstrap"]) == 0
    out = capsys.readouterr().out.splitlines()
    x = next(line for line in out if line.startswith("| offrl/x/v0 |"))
    # each side's seeds resampled on their own: A's mean is 10 or 12 or 11, B's 0 or 2 or 1 (each extreme 1/4)
    assert x == "| offrl/x/v0 | 2 / 2 | 11.0, 1.0, +10.0 [+8.0, +12.0] | 21.0, 26.0, -5.0 [-7.0, -3.0] | " \
                "21.0, 26.0, -5.0 [-7.0, -3.0] |"
    assert "| offrl/y/v0 | 2 / 2 | 5.0, 4.0, +1.0 [+1.0, +1.0] |" in "\n".join(out)
    assert not any("offrl/z/v0" in line for line in out)
    pooled = out[-1]
    assert pooled == "| across the datasets | | +5.5 [+4.5, +6.5] | -2.0 [-3.0, -1.0] | -2.0 [-3.0, -1.0] |"


def test_nothing_in_common_is_one_line(tmp_path, capsys):
    _run(tmp_path / "a", "offrl__x__v0", "cql", 0, [1.0] * 5)
    assert _module().main([str(tmp_path / "a"), str(tmp_path / "b"), "--algo-a", "cql", "--algo-b", "d3rlpy-cql"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no dataset has completed runs of cql" in err[0] and "d3rlpy-cql" in err[0]


def test_last_episodes_scores_both_sides_on_the_same_episodes(tmp_path, capsys):
    """--last-episodes K: the last evaluation becomes the mean over episodes 0..K-1 (A: from the summary's
    episode returns, B: a last evaluation of exactly K episodes); a run that cannot give it is left out, said on
    stderr; a negative K is exit 2 with one line."""
    a, b = tmp_path / "a", tmp_path / "b"
    ref = {"min": 0.0, "max": 100.0}
    for seed in (0, 1):
        _run(a, "offrl__x__v0", "cql", seed, [10.0] * 9 + [30.0])
        (a / "offrl__x__v0" / "cql" / f"seed{seed}" / "summary.json").write_text(json.dumps({
            "status": "completed", "ref": ref,
            "final": {"step": 1000, "episodes": 4, "normalized_score": 30.0, "episode_returns": [20, 20, 40, 40]}}))
        _run(b, "offrl__x__v0", "d3rlpy-cql", seed, [10.0] * 9 + [25.0])
        (b / "offrl__x__v0" / "d3rlpy-cql" / f"seed{seed}" / "summary.json").write_text(json.dumps({
            "status": "completed", "ref": ref, "final": {"step": 1000, "episodes": 2, "normalized_score": 25.0}}))
    _run(a, "offrl__x__v0", "cql", 2, [10.0] * 10)  # 10 episodes, no returns kept: no score over 2 episodes
    (a / "offrl__x__v0" / "cql" / "seed2" / "summary.json").write_text(json.dumps({
        "status": "completed", "ref": ref, "final": {"step": 1000, "episodes": 10, "normalized_score": 10.0}}))
    mod = _module()
    assert mod.main([str(a), str(b), "--algo-a", "cql", "--algo-b", "d3rlpy-cql", "--last-episodes", "2"]) == 0
    captured = capsys.readouterr()
    row = next(line for line in captured.out.splitlines() if line.startswith("| offrl/x/v0 |"))
    # A's last over episodes 0-1 is 20 (not its 4-episode 30); last 5 = (4 x 10 + 20) / 5 = 12
    assert row == "| offrl/x/v0 | 2 / 2 | 10.0, 10.0, +0.0 [+0.0, +0.0] | 12.0, 13.0, -1.0 [-1.0, -1.0] | " \
                  "20.0, 25.0, -5.0 [-5.0, -5.0] |"
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "left out 1 completed run" in err[0] and "seed2" in err[0]
    # without the option every run counts, with its own last evaluation
    assert mod.main([str(a), str(b), "--algo-a", "cql", "--algo-b", "d3rlpy-cql"]) == 0
    assert "| offrl/x/v0 | 3 / 2 |" in capsys.readouterr().out
    assert mod.main([str(a), str(b), "--algo-a", "cql", "--last-episodes", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--last-episodes -1" in err[0]
