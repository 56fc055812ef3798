"""benchmarks/ablation_diff.py on two hand-made folders of runs: the seed means, their difference and the
pooled row; running and damaged runs left out; nothing in common is exit 2 with one line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("ablation_diff", REPO / "benchmarks" / "ablation_diff.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
    assert _module().main([str(a), str(b), "--algo-a", "cql"]) == 0
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
