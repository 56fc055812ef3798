"""Run directories -> one HTML report with PNGs: ``build_report`` (many runs) and ``write_run_report``
(the report.html a trainer writes into its own run directory when it ends)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from offrl.errors import UserError
from offrl.fsio import write_text_atomic
from offrl.report import html as html_page
from offrl.report.aggregate import aggregate_table, chosen_table, group_runs, run_table, summary_table
from offrl.report.compare import difference_table
from offrl.report.plots import Figure, plot_alpha, plot_diagnostics, plot_losses, plot_scores
from offrl.report.runs import RunRecord, load_run, load_runs
from offrl.report.settings import changed_settings, eval_protocol
from offrl.report.stats import DEFAULT_INTERVAL, INTERVALS

__all__ = ["Report", "build_report", "write_run_report"]


@dataclass
class Report:
    """What was written, and the tables behind it (handy in notebooks and tests)."""

    html: Path
    figures: list[Path]
    summary: pd.DataFrame
    aggregate: pd.DataFrame
    runs: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    chosen: pd.DataFrame = field(default_factory=pd.DataFrame)
    plots: list[Figure] = field(default_factory=list)
    """The figures as drawn: each one's panels (title, lines) and whether its legend clears the panels."""
    differences: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Each experiment minus its dataset's baseline (:func:`offrl.report.compare.difference_table`)."""


def _render(runs: Sequence[RunRecord], out: Path, html_name: str, *, group_by: str | None, smooth: int,
            title: str, choose: bool = False, settings: RunRecord | None = None,
            baseline: str | None = None, interval: str = DEFAULT_INTERVAL) -> Report:
    if smooth < 1:
        raise UserError(f"--smooth {smooth}: must be 1 (no smoothing) or more evaluations")
    if interval not in INTERVALS:
        raise UserError(f"--interval {interval}: choose one of {', '.join(INTERVALS)}")
    warnings = [w for r in runs for w in r.warnings]
    groups = group_runs(runs, group_by, warnings)
    differences = difference_table(groups, baseline, interval)  # a bad --baseline: refused before any write
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create the report folder ({err.strerror}); choose another --out") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"--out {out}: not writable; choose another --out")
    figures: list[Figure] = [plot_scores(groups, out, smooth=smooth, interval=interval)]
    for make in (plot_diagnostics, plot_losses, plot_alpha):
        fig = make(groups, out)
        if fig is not None:
            figures.append(fig)
    summary, aggregate, table = summary_table(groups, interval), aggregate_table(groups), run_table(groups)
    if sum(len(g.runs) for g in groups) == 1:  # one counted run: the across-datasets table would repeat it
        aggregate = aggregate.iloc[0:0]
    chosen = chosen_table(summary) if choose else None
    page = html_page.render(title=title, summary=summary, aggregate=aggregate, runs=table, figures=figures,
                            warnings=warnings, group_by=group_by, smooth=smooth, chosen=chosen,
                            differences=differences, interval=interval,
                            settings=(changed_settings(settings), eval_protocol(settings)) if settings else None)
    path = out / html_name
    write_text_atomic(path, page)
    return Report(path, [f.path for f in figures], summary, aggregate, table, warnings,
                  chosen=chosen if chosen is not None else pd.DataFrame(), plots=list(figures),
                  differences=differences)


def build_report(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] = "report",
    *,
    group_by: str | None = None,
    smooth: int = 1,
    title: str = "offrl report",
    choose: bool = False,
    baseline: str | None = None,
    interval: str = DEFAULT_INTERVAL,
) -> Report:
    """Read every run directory under ``paths``, aggregate seeds and write ``<out>/index.html`` + PNGs.

    ``group_by``: None (seeds of the same dataset and config), ``"algo"``, ``"dataset"`` or a dotted config
    key. ``smooth``: trailing mean over that many evaluations per run before aggregating. ``choose``: add a
    "chosen config" per dataset (best mean last evaluation; ``Report.chosen``) with its test-set-selection
    warning (``offrl sweep``'s report). ``baseline``: the experiment (its label, or part of it) that every
    other experiment on its dataset is compared with (``Report.differences``; default: the first by label).
    ``interval``: the intervals over seeds, ``t`` (the default: Student-t, Welch's for differences) or
    ``bootstrap`` (percentile, rliable's; too narrow over few seeds, docs/reports.md). Across datasets stays a
    stratified bootstrap.
    """
    if not paths:
        raise UserError("offrl report: give at least one run directory or a folder of runs")
    runs = load_runs(paths)
    return _render(runs, Path(out), "index.html", group_by=group_by, smooth=smooth, title=title, choose=choose,
                   baseline=baseline, interval=interval)


def write_run_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``report.html`` (+ PNGs) into a single run directory; returns the HTML path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a run directory")
    run = load_run(run_dir)
    title = f"offrl run · {run.dataset} · {run.algo} · seed {run.seed}"
    return _render([run], run_dir, "report.html", group_by=None, smooth=1, title=title, settings=run).html
