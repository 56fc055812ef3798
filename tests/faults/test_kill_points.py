"""SIGKILL at exact points inside every write of ``offrl train`` (docs/reliability.md): the cache conversion,
the run folder's creation, ``summary.json``, ``metrics.csv``, checkpoints and the report. After each kill the
user's next step (``--resume`` when the run folder exists, else the same command again) must end in the run
an uninterrupted process writes, bit for bit (checkpoint tensors, metric rows, summary), with nothing
half-written left anywhere.

The processes are real ``offrl`` CLI processes killed by a real SIGKILL; tests/helpers/killer.py patches
the write calls from outside offrl (no hook in offrl) and forks each process from one server that has
offrl's imports loaded, so 23 kills and resumes cost about a minute and a half of CPU, not five minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
from helpers.train import TINY_CQL

from offrl.trainers.checkpoint import CHECKSUM_KEY

KILLER = Path(__file__).resolve().parents[1] / "helpers" / "killer.py"
RUN_ARGS = ["--name", "r", "--steps", "40", "--batch-size", "16", "--eval-every", "20", "--eval-episodes", "1",
            "--no-progress", *[a for s in [*TINY_CQL, "save_trainer_interval=10", "eval.final_episodes=1"]
                               for a in ("--set", s)]]
#: summary.json fields and metrics.csv columns that legitimately differ between a run and its
#: killed-and-resumed twin: seconds, and how often it was resumed.
TIMING = {"wall_time", "updates_per_s", "resumed"}
#: Checkpoint entries that differ with them: the CRC-32 of the metric rows (their wall_time cells included)
#: and of the checkpoint itself.
UNEQUAL = {*TIMING, "crc32", CHECKSUM_KEY}
#: The report's files: the reference and the runs killed before the report skip rendering it (seconds of
#: matplotlib per run); the one kill point inside it checks that the resume renders it.
REPORT = ("report.html", "*.png")


def _kill(call: str, name: str, nth: int = 1, when: str = "before"):
    return pytest.param({"call": call, "name": name, "nth": nth, "when": when}, id=f"{call}-{name}-{nth}-{when}")


def _in_report(kill: dict) -> bool:
    return any(fnmatch(kill["name"].lstrip("."), f"{pattern}*") for pattern in REPORT)


# A run of 40 steps: the dataset converted into the cache, the run folder created, summary.json ("running"),
# the metrics header, rows every 5 steps (the eval columns widen the file at step 20), checkpoints
# step_N.pt + latest.pt every 10 steps (~370 writes each), the final summary.json, then the report.
POINTS = [
    # the cache entry: rows (torn), info.json, the rename that publishes it (before, after), the source index
    _kill("pwrite", "rows.memmap", 1, "torn"),
    _kill("replace", "info.json", 2),
    _kill("replace", "pendulum-random-*"),
    _kill("replace", "pendulum-random-*", 1, "after"),
    _kill("replace", "[0-9a-f]*[0-9a-f].json"),
    # the run folder: config.yaml inside the temporary folder, the rename that publishes it
    _kill("write", "config.yaml", 1, "torn"),
    _kill("rename", "r"),
    # summary.json: "running" (before its rename: a temporary left), the final one (before and after)
    _kill("replace", "summary.json", 1),
    _kill("replace", "summary.json", 2),
    _kill("replace", "summary.json", 2, "after"),
    # metrics.csv: the header, rows torn before any checkpoint, after one and the last, the widening rewrite
    _kill("replace", "metrics.csv", 1),
    _kill("write", "metrics.csv", 1, "torn"),
    _kill("write", "metrics.csv", 3, "torn"),
    _kill("replace", "metrics.csv", 2),
    _kill("write", "metrics.csv", 8, "torn"),
    # checkpoints (step_N.pt, then latest.pt): torn mid-file, the renames, between the two files
    _kill("write", ".latest.pt.tmp-*", 200, "torn"),
    _kill("replace", "latest.pt", 1),
    _kill("replace", "latest.pt", 2, "after"),
    _kill("write", ".step_20.pt.tmp-*", 100, "torn"),
    _kill("replace", "step_30.pt"),
    _kill("replace", "latest.pt", 4),
    _kill("replace", "latest.pt", 4, "after"),
    # the report, after the run completed: its first figure
    _kill("replace", "scores.png"),
]


class Killer:
    """The server of tests/helpers/killer.py: ``run(argv, env=..., log=..., kill=...)`` -> how it ended."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(KILLER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def run(self, argv: list[str], *, env: dict[str, str], log: Path, kill: dict | None = None,
            report: bool = True) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        job = {"argv": argv, "env": env, "log": str(log), "kill": kill, "report": report}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the killer server died"
        return json.loads(reply)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def killer():
    server = Killer()
    yield server
    server.close()


def _train(killer: Killer, pendulum: str, root: Path, log: str, kill: dict | None = None, report: bool = True) -> dict:
    argv = ["train", "--dataset", pendulum, "--out", str(root / "out"), *RUN_ARGS]
    return killer.run(argv, env={"OFFRL_CACHE": str(root / "cache")}, log=root / log, kill=kill, report=report)


def _run_dir(root: Path, pendulum: str) -> Path:
    return root / "out" / Path(pendulum).stem / "cql" / "r"


@pytest.fixture(scope="module")
def reference(killer, pendulum, tmp_path_factory) -> Path:
    """The run an uninterrupted process writes (without its report)."""
    root = tmp_path_factory.mktemp("reference")
    assert _train(killer, pendulum, root, "train.log", report=False) == {"code": 0}, (root / "train.log").read_text()
    return _run_dir(root, pendulum)


def _equal(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            if key not in UNEQUAL:
                _equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b, where
    else:
        assert a == b, (where, a, b)


def _relative(state, run: Path):
    """``state`` with the run folder's path (the logger's ``log_dir``) spelled ``RUN``."""
    if isinstance(state, str):
        return state.replace(str(run), "RUN")
    if isinstance(state, dict):
        return {k: _relative(v, run) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_relative(v, run) for v in state)
    return state


def _metric_rows(run: Path) -> list[list[str]]:
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name not in TIMING]
    return [[row.split(",")[i] for i in keep] for row in lines]


def _files(run: Path) -> list[str]:
    names = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    return [n for n in names if not any(fnmatch(n, pattern) for pattern in REPORT)]


def _assert_same_run(run: Path, reference: Path, report: bool) -> None:
    assert _files(run) == _files(reference)
    assert (run / "report.html").exists() == report
    assert _metric_rows(run) == _metric_rows(reference)
    for ckpt in sorted((reference / "checkpoints").iterdir()):
        ours = _relative(torch.load(run / "checkpoints" / ckpt.name, weights_only=True), run)
        _equal(ours, _relative(torch.load(ckpt, weights_only=True), reference), ckpt.name)
    ours, theirs = (json.loads((r / "summary.json").read_text()) for r in (run, reference))
    assert ours["status"] == "completed"
    for summary in (ours, theirs):  # OpenMP's wait policy follows the load when each process started (spin
        summary["threads"].pop("omp_waits")  # when idle, sleep when busy; "sleep: 1.90 of 2 cores busy at
        summary["threads"].pop("omp_wait_policy")  # start"): the machine's state, not the run's result
    assert {k: v for k, v in ours.items() if k not in TIMING} == {k: v for k, v in theirs.items() if k not in TIMING}


def _leftovers(root: Path) -> list[str]:
    """Hidden temporaries (``.name.*.tmp``, ``.tmp-*`` cache builds) anywhere under ``root``."""
    return [p.relative_to(root).as_posix() for p in root.rglob(".*")]


@pytest.mark.parametrize("kill", POINTS)
def test_killed_run_resumes_to_the_uninterrupted_result(killer, pendulum, reference, tmp_path, kill):
    report = _in_report(kill)
    ended = _train(killer, pendulum, tmp_path, "killed.log", kill, report=report)
    assert ended == {"signal": 9}, ("the kill point was never reached", ended, (tmp_path / "killed.log").read_text())
    run = _run_dir(tmp_path, pendulum)
    if run.exists():  # what the user does next: resume the run, or run the same command again
        again = killer.run(["train", "--resume", str(run), "--no-progress"],
                           env={"OFFRL_CACHE": str(tmp_path / "cache")}, log=tmp_path / "again.log", report=report)
    else:
        again = _train(killer, pendulum, tmp_path, "again.log", report=report)
    assert again == {"code": 0}, (tmp_path / "again.log").read_text()
    _assert_same_run(run, reference, report)
    assert _leftovers(tmp_path) == []
