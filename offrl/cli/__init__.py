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

__all__ = ["main", "build_parser", "choose_openmp_waits"]


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


#: libgomp's own spin count when OMP_WAIT_POLICY is unset (about 3 ms of spinning before a thread sleeps).
GOMP_DEFAULT_SPINCOUNT = "300000"


def choose_openmp_waits(busy: float | None = None) -> str:
    """How OpenMP threads wait between parallel regions, decided before torch is imported (the runtime reads
    it once); returns the decision, also kept in ``OFFRL_OMP_WAITS`` for the run's summary.json.

    A user's ``OMP_WAIT_POLICY`` wins (and a parent offrl process's decision, which its children inherit).
    Otherwise offrl looks at the machine for 0.1 s (``busy``: cores busy with other work, measured when
    None): idle, the threads spin a little before sleeping, libgomp's default (``ACTIVE`` with
    ``GOMP_SPINCOUNT=300000``), which was 1.3x (CQL 2x256) to 2.4x (DQN) faster at 2 threads on an idle Intel Xeon; busy (or
    unknown), they sleep at once (``PASSIVE``), which kept 2 threads from collapsing when other work shares
    the cores (docs/threads.md has both measurements)."""
    chosen = os.environ.get("OMP_WAIT_POLICY")
    if chosen:
        decision = os.environ.get("OFFRL_OMP_WAITS") or f"user: OMP_WAIT_POLICY={chosen}"
    else:
        from offrl.hardware import busy_cores, quiet_for

        if busy is None:
            busy = busy_cores()
        cores = os.cpu_count() or 1
        if busy is not None and quiet_for(cores, busy):  # torch's default: a thread per core
            os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
            os.environ.setdefault("GOMP_SPINCOUNT", GOMP_DEFAULT_SPINCOUNT)
            decision = f"spin: {busy:.2f} of {cores} cores busy at start"
        else:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
            seen = "unknown" if busy is None else f"{busy:.2f} of {cores}"
            decision = f"sleep: {seen} cores busy at start"
    os.environ["OFFRL_OMP_WAITS"] = decision
    return decision


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    choose_openmp_waits()
    try:
        code = args.func(args)
    except UserError as err:
        print(f"offrl: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("offrl: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
