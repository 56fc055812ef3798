"""``offrl report``: run directories -> one self-contained HTML report with PNGs (a thin layer over
:func:`offrl.report.build_report`)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from offrl.cli.format import fmt

__all__ = ["register"]

EPILOG = """\
examples:
  offrl report runs/                                   (every run under runs/, any depth)
  offrl report runs/offrl__pendulum__medium-v0 --out reports/pendulum --smooth 3
  offrl report runs/ --group-by cql.min_q_weight        (one curve per value of a config key)
  offrl report runs/ --group-by cql.min_q_weight --baseline "min_q_weight=5.0"
                                                       (every other value minus 5.0, with a 95% CI)
"""


def _smooth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of evaluations, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 (no smoothing) or more, got {value}")
    return value


def register(subparsers: Any) -> None:
    """Add the ``report`` subcommand."""
    p = subparsers.add_parser(
        "report",
        help="aggregate run directories into an HTML report (curves, CIs, summary table)",
        description="Read run directories (config.yaml, metrics.csv, summary.json), aggregate seeds "
        "(mean, IQM, Student-t 95% CI over seeds) and write OUT/index.html plus PNG figures. Runs still going or "
        "crashed are shown with what they logged.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders that contain them")
    p.add_argument("--out", default="report", metavar="DIR", help="output folder (default: ./report)")
    p.add_argument("--group-by", default=None, metavar="KEY",
                   help="aggregate by algo, dataset or a dotted config key (default: same config except seed)")
    p.add_argument("--smooth", type=_smooth, default=1, metavar="N",
                   help="trailing mean over N evaluations per run before aggregating (default 1: none)")
    p.add_argument("--baseline", default=None, metavar="LABEL",
                   help="the experiment (its label, or part of it) every other experiment on its dataset is "
                   "compared with: difference of the seed means with a 95%% CI (see --interval; default: the first "
                   "experiment of each dataset by label)")
    p.add_argument("--interval", choices=("t", "bootstrap"), default="t",
                   help="intervals over seeds: t (default: Student-t, Welch's for differences, which keeps its 95%% "
                   "coverage over a few seeds) or bootstrap (percentile, rliable's: about 84%% coverage with 5 "
                   "seeds; docs/reports.md)")
    p.add_argument("--title", default="offrl report", help="page title")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from offrl.report import build_report
    from offrl.report.compare import SETTLED

    report = build_report(args.runs, args.out, group_by=args.group_by, smooth=args.smooth, title=args.title,
                          baseline=args.baseline, interval=args.interval)
    for warning in report.warnings:
        print(f"offrl: warning: {warning}", file=sys.stderr)
    for _, row in report.differences.iterrows():
        print(f"{row['dataset']}: {row['group']} minus {row['baseline']} ({int(row['n'])} / {int(row['n_baseline'])} "
              f"seeds): last {_diff(row, 'last')}; mean of last 5 evaluations {_diff(row, 'recent')}"
              + ("" if row["curves"] == SETTLED else f"; curves {row['curves']}, so a difference at this budget"))
    n = len(report.runs)
    print(f"report: {report.html} ({n} run(s), {len(report.summary)} experiment(s), {len(report.figures)} figure(s))")
    return 0


def _diff(row: Any, key: str) -> str:
    """``+4.4 [-1.0, +8.5] (no difference shown)``; one seed on either side: no interval."""
    text = fmt(row[f"{key}_diff"], "+.1f")
    if not math.isnan(row[f"{key}_low"]):
        text += f" [{fmt(row[f'{key}_low'], '+.1f')}, {fmt(row[f'{key}_high'], '+.1f')}]"
    return f"{text} ({row[f'{key}_reading']})"
