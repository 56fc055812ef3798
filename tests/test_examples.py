"""The scripts in examples/ run as the README says, with the public API only, and print what their runs hold."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_pendulum_cql_example_prints_its_runs(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_pendulum_cql.py"), "--seeds", "0", "1", "--steps", "40",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = re.findall(r"^seed (\d): final return (-?[\d.]+) \(normalized (-?[\d.]+)\); "
                       r"dataset mean return (-?[\d.]+); (.+)$", result.stdout, flags=re.M)
    assert [int(seed) for seed, *_ in lines] == [0, 1], result.stdout
    finals = []
    for seed, ret, norm, behaviour, run_dir in lines:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        assert Path(run_dir).name == f"example-seed{seed}" and Path(run_dir).parent.parent.parent == out
        assert summary["status"] == "completed" and summary["steps"] == 40
        assert float(ret) == round(summary["final"]["return_mean"], 1)
        assert float(norm) == round(summary["final"]["normalized_score"], 1)
        assert float(behaviour) == round(summary["dataset"]["mean_return"], 1)
        finals.append(summary["final"]["return_mean"])
    assert finals[0] != finals[1]  # two seeds, two runs
    # the printed learning curve is the run's evaluation rows (the bundled config evaluates at the end)
    assert re.search(r"^\s*step\s+eval_return_mean$", result.stdout, flags=re.M)
    assert re.search(r"^\s*40\s+-?[\d.]+$", result.stdout, flags=re.M)
