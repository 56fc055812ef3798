"""The real ``offrl`` console script of this environment, and the check every bad input must pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: The console script installed next to this Python (``pip install -e .`` puts it there).
OFFRL = str(Path(sys.executable).with_name("offrl"))


def offrl_cli(*args: str, timeout: float = 300, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``offrl ARGS`` as a user would (one torch thread), capturing its output."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([OFFRL, *args], capture_output=True, text=True, timeout=timeout, env=full_env, **kwargs)


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """A user mistake: exit code 2, exactly one line on stderr, an error line naming each of ``needles``, no
    traceback anywhere. Returns the line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert "error" in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def kill_after_and_resume(full_cmd: list[str], killed_cmd: list[str], marker: Path, run_dir: Path,
                          timeout: float = 300) -> None:
    """Run ``full_cmd`` (the uninterrupted run) beside ``killed_cmd``, SIGKILL the latter as soon as ``marker``
    (a checkpoint file) exists, then ``offrl train --resume run_dir``; asserts each step went as meant."""
    import signal
    import time

    full = subprocess.Popen(full_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = subprocess.Popen(killed_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(60) == -signal.SIGKILL  # killed mid-run, not after the end
    assert full.wait(timeout) == 0, full.stderr.read()
    resumed = subprocess.run([OFFRL, "train", "--resume", str(run_dir), "--no-progress"], capture_output=True,
                             text=True, timeout=timeout)
    assert resumed.returncode == 0, resumed.stderr
