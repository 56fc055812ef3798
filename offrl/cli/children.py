"""Child ``offrl train`` processes: started in their own session (the terminal's Ctrl-C reaches only the
parent, which passes exactly one SIGINT on per Ctrl-C), output captured to temporary files, read back when
they end. Used by ``offrl train --seeds`` and by every ``offrl sweep`` engine (local pool and Ray trials)."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["ChildProcess", "sigterm_as_interrupt", "start_child"]


@dataclass
class ChildProcess:
    """One running ``offrl`` child: its process, captured output, and (once finished) its lines."""

    label: Any
    proc: subprocess.Popen
    out: IO[str]
    err: IO[str]
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def finish(self) -> int:
        """Read the captured output back (call once the process has ended); returns its exit code."""
        self.out.seek(0)
        self.err.seek(0)
        self.lines = [line.rstrip("\n") for line in self.out]
        self.errors = [line.rstrip("\n") for line in self.err if line.strip()]
        for f in (self.out, self.err):
            f.close()
        return int(self.proc.returncode)

    def value(self, prefix: str) -> str | None:
        """The rest of the first stdout line starting with ``prefix`` (``run: `` -> the run folder)."""
        return next((line[len(prefix):] for line in self.lines if line.startswith(prefix)), None)

    def error_line(self) -> str:
        """The child's own one-line error (``offrl: error: ...``), else its last stderr line."""
        said = [line for line in self.errors if line.startswith("offrl: error:")]
        return (said or self.errors or ["(no message)"])[-1]


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes Linux send ``sig`` to the child when the thread that started it dies
    (``PR_SET_PDEATHSIG``); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None

    def set_pdeathsig() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG

    return set_pdeathsig


def start_child(label: Any, argv: Sequence[str], env: Mapping[str, str], *, parent_death_signal: int | None = None,
                pass_fds: Sequence[int] = ()) -> ChildProcess:
    """Start ``argv`` in its own session with stdout/stderr captured. ``parent_death_signal``: the signal the
    child gets if its parent dies first (Linux), e.g. SIGINT so that it stops after a checkpoint."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    preexec = _die_with_parent(parent_death_signal) if parent_death_signal is not None else None
    proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=dict(env), text=True, start_new_session=True,
                            preexec_fn=preexec, pass_fds=tuple(pass_fds))
    return ChildProcess(label, proc, out, err)


def sigterm_as_interrupt() -> Callable[[], Any]:
    """Handle SIGTERM like Ctrl-C (the children are stopped cleanly); returns the restoring function."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)
