"""The README's results tables quote the committed reports: every row of the benchmark reports' summary.csv
(last evaluation, mean over seeds [95% CI]) appears in README.md as the report prints it, so a rebuilt report
whose numbers moved fails here until the README says so too."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The report folders whose tables the README's "Results on the bundled datasets" section reproduces.
QUOTED = ("reports", "reports/cartpole", "reports/mujoco")


@pytest.mark.parametrize("folder", QUOTED)
def test_readme_quotes_each_row_of_the_report(folder: str) -> None:
    readme = (ROOT / "README.md").read_text().replace("\u2212", "-")  # the README prints a minus sign
    rows = list(csv.DictReader((ROOT / folder / "summary.csv").open()))
    assert rows, f"{folder}/summary.csv has no rows"
    missing = []
    for row in rows:
        cell = "{:.1f} [{:.1f}, {:.1f}]".format(*(float(row[k]) for k in ("last_mean", "last_low", "last_high")))
        if cell not in readme:
            missing.append(f"{row['dataset']} {row['group']}: {cell}")
    assert not missing, f"README.md does not quote {folder}/summary.csv: {missing}"
