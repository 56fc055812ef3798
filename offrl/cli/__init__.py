"""`offrl` command line: parse, call the Python API, print. No logic of its own.

Each subcommand lives in its own module with a ``register(subparsers)`` function that adds its parser
and sets ``func`` (called with the parsed namespace, returns an exit code or None).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from offrl.errors import UserError, did_you_mean

__all__ = ["main", "build_parser", "passive_openmp_waits"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (not usage + error) and exits with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:  # --algo cq1: name the nearest valid choice
            message += did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from offrl.cli import bench, datasets, evaluate, export, ope, report, sweep, train
    from offrl.version import __version__

    parser = _Parser(prog="offrl", description="Offline RL on datasets: CQL and DQN with trustworthy reports.")
    parser.add_argument("--version", action="version", version=f"offrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in (datasets, train, sweep, evaluate, ope, export, report, bench):
        module.register(sub)
    return parser


def passive_openmp_waits() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy: OpenMP threads that finished their share
    sleep instead of spinning, so a busy core is not taken from the thread still working (docs/threads.md:
    on a loaded 2-core machine spinning made 2 threads 10-30x slower than 1). Must run before torch is
    imported (the OpenMP runtime reads it once); ``--seeds`` children inherit it."""
    if not os.environ.get("OMP_WAIT_POLICY"):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def main(argv: Sequence[str] | None = None) -> int:
    passive_openmp_waits()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except UserError as err:
        print(f"offrl: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("offrl: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
