"""Reports: run directories -> pandas -> statistics (mean, IQM, bootstrap CI) -> PNG -> one HTML page."""

from __future__ import annotations

from offrl.report.build import Report, build_report, write_run_report
from offrl.report.runs import RunRecord, find_run_dirs, load_run, load_runs
from offrl.report.stats import bootstrap_ci, iqm, stratified_bootstrap_ci

__all__ = [
    "Report",
    "RunRecord",
    "bootstrap_ci",
    "build_report",
    "find_run_dirs",
    "iqm",
    "load_run",
    "load_runs",
    "stratified_bootstrap_ci",
    "write_run_report",
]
