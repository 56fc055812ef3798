"""Fault injection across processes (docs/reliability.md): two processes in one run folder, the ``--seeds``
parent killed with SIGKILL, a disk that fills while a run writes its checkpoint. Real ``offrl`` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.cli import OFFRL, assert_user_error
from helpers.train import TINY_CQL

LONG = ["--steps", "1000000", "--batch-size", "16", "--eval-every", "0", "--no-progress",
        *[a for s in TINY_CQL for a in ("--set", s)]]


def _wait(predicate, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc is None or proc.poll() is None, proc.communicate() if proc else None
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (reparented, nobody reaped it yet)


def test_second_process_in_a_run_folder_is_refused(pendulum, tmp_path):
    """Before: two --resume of one run both exited 0; metrics rows got more cells than the header and
    summary.json was built from them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([OFFRL, "train", "--dataset", pendulum, "--out", str(tmp_path), "--name", "r", *LONG],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        run = tmp_path / Path(pendulum).stem / "cql" / "r"
        _wait(lambda: (run / "summary.json").exists(), first)  # training: the folder is locked
        before = (run / "config.yaml").read_text()
        second = subprocess.run([OFFRL, "train", "--resume", str(run), "--no-progress"], capture_output=True,
                                text=True, env=env, timeout=120)
        assert_user_error(second, str(run), "in use by another offrl process")
        assert (run / "config.yaml").read_text() == before and first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 130  # stopped cleanly with a checkpoint; the folder is free again


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads children from /proc (Linux)")
def test_seeds_children_die_with_their_parent(pendulum, tmp_path):
    """Before: SIGKILL of the --seeds parent left its children training as orphans."""
    parent = subprocess.Popen([OFFRL, "train", "--dataset", pendulum, "--out", str(tmp_path), "--name", "s",
                               "--seeds", "2", "--jobs", "2", *LONG], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    runs = tmp_path / Path(pendulum).stem / "cql"
    try:
        _wait(lambda: len(list(runs.glob("s-seed*/summary.json"))) == 2, parent)  # both children training
        children = [int(p) for p in Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()]
        assert len(children) == 2
        parent.kill()
        parent.wait()
        _wait(lambda: not any(_alive(pid) for pid in children), timeout=60)
    finally:
        parent.kill()
    for run in runs.glob("s-seed*"):  # each child stopped on its SIGTERM: checkpointed, recorded as stopped
        assert json.loads((run / "summary.json").read_text())["status"] == "stopped"


def _small_disk(path: Path) -> tuple[list[str], object]:
    """A 1 MB tmpfs at ``path`` (a real ENOSPC) when this process may mount one (root), else None; the
    caller then limits the child's file size (RLIMIT_FSIZE: a real EFBIG from the kernel)."""
    path.mkdir()
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                                            capture_output=True).returncode == 0:
        return ["no space left on device"], lambda: subprocess.run(["umount", "-l", str(path)])
    return ["file size limit reached"], None


def test_disk_full_while_checkpointing_is_one_line_naming_the_file(pendulum, tmp_path):
    """Before: torch's 'unexpected pos' and two chained tracebacks."""
    out = tmp_path / "out"
    wording, unmount = _small_disk(out)
    limit = "" if unmount else "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from offrl.data import load_dataset
        load_dataset({pendulum!r})  # the cache is elsewhere and converted before the limit
        {limit}
        from offrl.cli import main
        sys.exit(main(["train", "--dataset", {pendulum!r}, "--out", {str(out)!r}, "--name", "r", "--steps", "20",
                       "--batch-size", "16", "--eval-every", "0", "--no-progress", "--set", "log_interval=5",
                       "--set", "cql.hidden_sizes=[256,256]", "--set", "dataset.env_id=Pendulum-v1"]))
    """)
    try:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        started = "offrl: training in "  # the run had started: its one progress line comes first
        result.stderr = "\n".join(ln for ln in result.stderr.splitlines() if not ln.startswith(started))
        line = assert_user_error(result, "step_20.pt", *wording)  # the first file each checkpoint writes
        assert "unexpected pos" not in line
        ckpt = out / Path(pendulum).stem / "cql" / "r" / "checkpoints"
        assert not [p.name for p in ckpt.iterdir() if p.name.startswith(".")]  # no temporary left behind
    finally:
        if unmount:
            unmount()
