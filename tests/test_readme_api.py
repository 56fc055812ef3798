"""The README's Python API section runs as written (its step budgets shortened), so the API it shows stays true."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The budgets the README's blocks train for, and the few steps this test gives them instead.
SHORTER = {"steps=5000": "steps=40", "offline_steps=2500": "offline_steps=40"}


def _blocks() -> list[str]:
    section = (ROOT / "README.md").read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_shows_two_python_blocks_with_their_budgets() -> None:
    blocks = _blocks()
    assert len(blocks) == 2
    assert "steps=5000" in blocks[0] and "offline_steps=2500" in blocks[1], "update SHORTER with the README"


@pytest.mark.parametrize("index", [0, 1])
def test_readme_python_block_runs(index: int, tmp_path: Path) -> None:
    code = _blocks()[index]
    for long, short in SHORTER.items():
        code = code.replace(long, short)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OFFRL_RUNS": str(tmp_path / "runs")})
    assert result.returncode == 0, result.stderr[-3000:]
    if index == 0:  # offrl.train's run folder under runs/, and the report the block writes
        summaries = list((tmp_path / "runs").rglob("summary.json"))
        assert len(summaries) == 1 and '"status": "completed"' in summaries[0].read_text()
        assert (tmp_path / "report" / "index.html").is_file()
        assert str(summaries[0].parent) in result.stdout  # print(run.dir, ...)
    else:  # the trainer's checkpoint, as save_trainer_file says
        assert (tmp_path / "ckpt.pt").is_file()
