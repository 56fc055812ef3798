"""Child ``offrl train`` processes: started in their own session (the terminal's Ctrl-C reaches only the
parent, which passes exactly one SIGINT on per Ctrl-C), output captured to temporary files, read back when
they end. Used by ``offrl train --seeds`` and by every ``offrl sweep`` engine (local pool and Ray trials)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
    run_dir: Path | None = None
    planned: int | None = None
    shown: int = 0  # progress milestones printed so far
    title: str | None = None  # how progress lines name it (default: seed LABEL)

    def progress(self) -> str | None:
        """``seed 1: step 2500 of 10000 (25%)`` when the child passed its next milestone, else None; read
        from the files the child writes anyway (its first stderr line names the run folder, whose
        metrics.csv gains a row every log_interval steps)."""
        if self.run_dir is None:
            head = os.pread(self.err.fileno(), 4096, 0).decode("utf-8", "replace")  # leaves the child's offset
            found = next((ln.split(" in ", 1)[1] for ln in head.splitlines() if ln.startswith("offrl: training in ")), None)
            if found is None:
                return None
            self.run_dir = Path(found.strip())
            self.planned = _planned_steps(self.run_dir)
        step = _last_step(self.run_dir / "metrics.csv")
        if not self.planned or step is None or self.shown >= len(MILESTONES):
            return None
        passed = sum(step >= m * self.planned for m in MILESTONES)
        if passed <= self.shown:
            return None
        self.shown = passed
        return f"{self.title or f'seed {self.label}'}: step {step} of {self.planned} ({100 * step // self.planned}%)"

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


#: A running child's progress is printed as it passes each of these fractions of its steps.
MILESTONES = (0.25, 0.5, 0.75)


def _planned_steps(run_dir: Path) -> int | None:
    """The offline steps of a run (its config.yaml); None for a run with an online phase (counted in env
    frames, not steps) or an unreadable config."""
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    online = (cfg.get("online") or {}).get("steps") or 0
    steps = cfg.get("offline_steps")
    return int(steps) if isinstance(steps, int) and steps > 0 and not online else None


def _last_step(metrics: Path) -> int | None:
    """The step of the last complete row of a metrics.csv (its first column), read from the file's end."""
    try:
        with metrics.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    rows = [ln for ln in tail.split("\n")[:-1] if ln and not ln.startswith("step")]  # complete lines only
    try:
        return int(float(rows[-1].split(",", 1)[0])) if rows else None
    except ValueError:
        return None


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
