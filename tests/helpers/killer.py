"""Run ``offrl`` commands that SIGKILL themselves at an exact point inside a write (tests/faults/test_kill_points.py).

A small server, started as ``python tests/helpers/killer.py``: it imports offrl's training stack once, then
reads one JSON job per line on stdin, runs each in a forked child (an ``offrl`` process that skips the seconds
of imports) and answers one JSON line per job: ``{"signal": 9}``, ``{"code": 0}`` or ``{"timeout": true}``.

A job: ``{"argv": [...], "env": {...}, "log": PATH, "kill": null | KILL, "report": bool}`` with ``KILL`` =
``{"call": C, "name": GLOB, "nth": N, "when": W}``. The child patches the call ``C`` from outside offrl
(``replace``/``rename``/``fsync``/``pwrite``: the ``os`` functions; ``write``: the ``write`` of files opened
for writing through ``open``, ``io.open`` and ``pathlib``), counts the calls whose file's name matches
``GLOB`` and at the ``N``-th kills itself with SIGKILL: ``before`` or ``after`` the real call, or, for
``write``/``pwrite``, ``torn``: after half of the bytes. Then it runs ``offrl.cli.main(argv)`` with stdout and
stderr in ``log``. ``"report": false`` skips the run's report (matplotlib: seconds per run) for the kill
points before it. Nothing in offrl knows about any of this.
"""

from __future__ import annotations

import builtins
import fnmatch
import io
import json
import os
import signal
import sys
import time
import traceback
from typing import Any

TIMEOUT_S = 120.0


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _Counter:
    def __init__(self, kill: dict[str, Any]) -> None:
        self.name, self.nth, self.when, self.seen = kill["name"], int(kill["nth"]), kill.get("when", "before"), 0

    def hit(self, path: Any) -> bool:
        """True at the nth call on a file whose name matches."""
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        if not fnmatch.fnmatch(os.path.basename(os.fsdecode(path)), self.name):
            return False
        self.seen += 1
        return self.seen == self.nth


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class _KillingFile:
    """A file object whose ``write`` calls are counted (the counter decides which one kills)."""

    def __init__(self, fh: Any, path: Any, counter: _Counter) -> None:
        self._fh, self._path, self._counter = fh, path, counter

    def write(self, data: Any) -> Any:
        if not self._counter.hit(self._path):
            return self._fh.write(data)
        when = self._counter.when
        if when == "torn":
            self._fh.write(data[: len(data) // 2])
            self._fh.flush()
        elif when == "after":
            self._fh.write(data)
            self._fh.flush()
        _die()
        return None

    def __enter__(self) -> _KillingFile:
        self._fh.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._fh.__exit__(*exc)

    def __iter__(self) -> Any:
        return iter(self._fh)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def install(kill: dict[str, Any]) -> None:
    """Patch the call ``kill["call"]`` so that its matching nth use kills this process."""
    counter = _Counter(kill)
    call = kill["call"]
    if call in ("replace", "rename"):
        real = getattr(os, call)

        def moved(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            if not counter.hit(dst):
                return real(src, dst, *args, **kwargs)
            if counter.when == "after":
                real(src, dst, *args, **kwargs)
            _die()

        setattr(os, call, moved)
    elif call == "fsync":
        real_fsync = os.fsync

        def fsync(fd: Any) -> None:
            number = fd if isinstance(fd, int) else fd.fileno()
            if not counter.hit(_fd_path(number)):
                return real_fsync(fd)
            if counter.when == "after":
                real_fsync(fd)
            _die()

        os.fsync = fsync
    elif call == "pwrite":
        real_pwrite = os.pwrite

        def pwrite(fd: int, data: Any, offset: int) -> int:
            if not counter.hit(_fd_path(fd)):
                return real_pwrite(fd, data, offset)
            if counter.when == "torn":
                real_pwrite(fd, memoryview(data)[: len(memoryview(data)) // 2], offset)
            elif counter.when == "after":
                real_pwrite(fd, data, offset)
            _die()
            return 0

        os.pwrite = pwrite
    elif call == "write":
        real_open = builtins.open

        def opened(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            fh = real_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wax+") and isinstance(file, (str, bytes, os.PathLike)):
                return _KillingFile(fh, file, counter)
            return fh

        builtins.open = opened
        io.open = opened
    else:
        raise ValueError(f"unknown call {call!r}")


def _child(job: dict[str, Any]) -> None:
    code = 1
    try:
        os.environ.update(job.get("env") or {})
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        if job.get("kill"):
            install(job["kill"])
        if not job.get("report", True):
            import offrl.runs.training

            offrl.runs.training.write_report = lambda path: None
        from offrl.cli import main

        code = main(job["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported in the log, exit 1
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _wait(pid: int) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return {"signal": os.WTERMSIG(status)}
            return {"code": os.WEXITSTATUS(status)}
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"timeout": True}
        time.sleep(0.01)


def serve() -> None:
    # what `offrl train` imports, once: each forked child starts with it loaded
    import pandas  # noqa: F401

    import offrl.cli  # noqa: F401
    import offrl.evaluation  # noqa: F401
    import offrl.online  # noqa: F401
    import offrl.runs.assemble  # noqa: F401
    import offrl.runs.compose  # noqa: F401
    import offrl.runs.metrics_log  # noqa: F401
    import offrl.runs.summary  # noqa: F401
    import offrl.runs.training  # noqa: F401
    import offrl.trainers  # noqa: F401

    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(job)
        out.write(json.dumps(_wait(pid)) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()
