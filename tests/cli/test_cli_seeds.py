"""``offrl train --seeds``: several seeds as parallel ``offrl train`` processes, then one report over them.

Real console-script subprocesses on small real datasets (random CartPole rollouts written with h5py)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from helpers.cli import OFFRL, assert_user_error
from helpers.train import TINY_DCQL, offrl_cli

from offrl.evaluation.findings import mean_ci

SETS = [a for s in [*TINY_DCQL, "num_threads=1"] for a in ("--set", s)]
BASE = ["--steps", "30", "--batch-size", "16", "--eval-every", "15", "--eval-episodes", "2"]


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def test_seeds_run_in_parallel_and_aggregate(cartpole, tmp_path):
    result = offrl_cli("train", "--dataset", cartpole, *BASE, "--eval-every", "5", "--seeds", "1,3", "--jobs", "2",
                       "--out", str(tmp_path), "--name", "grp", *SETS)
    assert result.returncode == 0, result.stderr
    algo_dir = tmp_path / "cartpole-random" / "discrete-cql"
    runs = {s: algo_dir / f"grp-seed{s}" for s in (1, 3)}
    for seed, run in runs.items():
        summary = _summary(run)
        assert summary["status"] == "completed" and summary["steps"] == 30
        assert summary["seed"] == seed
        assert f"seed {seed}: {run}" in result.stdout
    report = algo_dir / "grp-report" / "index.html"
    assert f"report: {report}" in result.stdout and report.stat().st_size > 0
    # The aggregate line is the mean of the two runs' last evaluations (raw returns: a test file has no
    # reference scores), with the Student-t 95% interval over the two seeds around it.
    last = [_summary(run)["final"]["return_mean"] for run in runs.values()]
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("2 of 2 seeds"))
    mean, low, high = (float(x) for x in line.split("last return ")[1].split(" (mean")[0]
                       .replace("[", "").replace("]", "").replace(",", "").split())
    assert mean == pytest.approx(np.mean(last), abs=0.051)
    assert (low, high) == pytest.approx(mean_ci(last)[1:], abs=0.051) and low < mean < high
    # and whether the curves settled: the mean over seeds of each run's last-third trend (steps 20, 25, 30)
    trends = [_summary(run)["trend"] for run in runs.values()]
    assert [t["evaluations"] for t in trends] == [3, 3]
    line = result.stdout.splitlines()[result.stdout.splitlines().index(line) + 1]
    assert re.fullmatch(r"  last third [-+][\d.]+ \[[-+][\d.]+, [-+][\d.]+\]: "
                        r"(settled|still rising|still falling|unclear).* \(mean over seeds\)", line), line
    assert float(line.split()[2]) == pytest.approx(np.mean([t["change"] for t in trends]), abs=0.051)
    assert "Traceback" not in result.stderr


def test_seeds_without_evaluation_say_so(cartpole, tmp_path):
    """--eval-every 0: the group line says there is no score, instead of printing n/a intervals."""
    result = offrl_cli("train", "--dataset", cartpole, *BASE, "--eval-every", "0", "--seeds", "2", "--jobs", "2",
                       "--out", str(tmp_path), "--name", "noeval", *SETS)
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("2 of 2 seeds"))
    assert re.fullmatch(r"2 of 2 seeds, \S+ discrete-cql: no evaluation \(eval.interval is 0: --eval-every N "
                        r"evaluates every N steps\); behaviour policy -?[\d.]+", line), line
    assert "n/a" not in result.stdout


def test_a_seed_of_a_group_equals_the_same_seed_alone(cartpole, tmp_path):
    """--seeds changes where runs go and how many run at once, never what a seed learns."""
    group = offrl_cli("train", "--dataset", cartpole, *BASE, "--seeds", "0,2", "--out", str(tmp_path / "g"),
                      "--name", "g", *SETS)
    alone = offrl_cli("train", "--dataset", cartpole, *BASE, "--seed", "2", "--no-progress",
                      "--out", str(tmp_path / "a"), "--name", "a", *SETS)
    assert group.returncode == 0 and alone.returncode == 0, group.stderr + alone.stderr

    def read(root, name):
        return pd.read_csv(root / "cartpole-random" / "discrete-cql" / name / "metrics.csv")

    m_group, m_alone = read(tmp_path / "g", "g-seed2"), read(tmp_path / "a", "a")
    timing = [c for c in m_group.columns if "per_s" in c or "time" in c or c.endswith("seconds")]
    pd.testing.assert_frame_equal(m_group.drop(columns=timing), m_alone.drop(columns=timing))
    other = read(tmp_path / "g", "g-seed0")
    assert not other.drop(columns=timing).equals(m_alone.drop(columns=timing))  # the test can tell seeds apart


BAD = [
    (["--seeds", "0"], "--seeds"),
    (["--seeds", "a,b"], "--seeds"),
    (["--seeds", "1,1"], "twice"),
    (["--seeds", "-1,2"], "--seeds"),
    (["--seeds", "2", "--seed", "1"], "--seed"),
    (["--seeds", "2", "--jobs", "0"], "--jobs"),
    (["--jobs", "2"], "--jobs"),
    (["--seeds", "2", "--set", "discrete_cql.nope=1"], "discrete_cql.nope"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_exit_2_one_line_nothing_written(cartpole, tmp_path, extra, message):
    out = tmp_path / "runs"
    result = offrl_cli("train", "--dataset", cartpole, "--steps", "5", "--out", str(out), *extra)
    assert_user_error(result, message)
    assert not out.exists() or not any(out.rglob("*")), "a bad input must leave no run folder"


def test_missing_dataset_is_one_line(tmp_path):
    result = offrl_cli("train", "--dataset", str(tmp_path / "nope.hdf5"), "--seeds", "3", "--out", str(tmp_path / "r"))
    assert_user_error(result, "nope.hdf5")
    assert not (tmp_path / "r").exists()


def test_a_failing_child_stops_the_group_in_one_line(cartpole, tmp_path):
    """Inputs only a child can check (here: an online env id that does not exist) fail every seed alike:
    the first child's own one-line error is said once, the rest are stopped, exit 2."""
    result = offrl_cli("train", "--dataset", cartpole, "--steps", "5", "--online-steps", "10", "--env", "NoSuchEnv-v9",
                       "--seeds", "3", "--jobs", "1", "--out", str(tmp_path / "r"), *SETS)
    assert assert_user_error(result, "NoSuchEnv").startswith("offrl: error:")
    assert "seed 0:" not in result.stdout and "report:" not in result.stdout


def test_sigterm_stops_every_seed_after_a_checkpoint(cartpole, tmp_path):
    """SIGTERM (or Ctrl-C) on the parent: each running seed stops cleanly (checkpoint, status stopped, resumable)."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen([OFFRL, "train", "--dataset", cartpole, "--steps", "1000000", "--eval-every", "0",
                             "--seeds", "2", "--out", str(tmp_path), *SETS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    algo_dir = tmp_path / "cartpole-random" / "discrete-cql"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(algo_dir.glob("seed*/metrics.csv"))) < 2:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    runs = sorted(algo_dir.glob("seed*"))
    assert len(runs) == 2
    for run in runs:
        summary = _summary(run)
        assert summary["status"] == "stopped" and 0 < summary["steps"] < 1_000_000, summary
        assert (run / "checkpoints" / "latest.pt").exists()
        assert f"seed {summary['seed']}: {run}" in out
    assert "report:" not in out and "Traceback" not in err


def test_children_get_every_option_but_the_ones_seeds_sets():
    """In-process: the child command line repeats the user's options (flags, repeated --set) and leaves out
    --seeds/--jobs/--seed/--name; a user's num_threads (in --set or a --config file) is kept."""
    from offrl.cli import build_parser
    from offrl.cli.seeds import _forwarded, _threads_set

    parser = build_parser()
    args = parser.parse_args(["train", "--dataset", "d.hdf5", "--steps", "7", "--seeds", "2", "--jobs", "1",
                              "--name", "n", "--calql", "--set", "a=1", "--set", "num_threads=3"])
    argv = _forwarded(args, args.train_parser)
    assert argv[argv.index("--dataset") + 1] == "d.hdf5" and argv[argv.index("--steps") + 1] == "7"
    assert "--calql" in argv and [argv[i + 1] for i, a in enumerate(argv) if a == "--set"] == ["a=1", "num_threads=3"]
    assert not {"--seeds", "--jobs", "--name", "--seed"} & set(argv)
    assert _threads_set(args, None)
    assert not _threads_set(parser.parse_args(["train", "--dataset", "d", "--seeds", "2"]), None)


def test_seeds_show_progress_while_they_run(cartpole, tmp_path):
    # issue 18: 80 s of silence until the first seed finished
    result = offrl_cli("train", "--dataset", cartpole, "--steps", "600", "--batch-size", "16", "--eval-every", "300",
                       "--eval-episodes", "2", "--seeds", "0,1", "--jobs", "2", "--out", str(tmp_path), "--name", "p",
                       *SETS, "--set", "log_interval=20", timeout=900)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    progress = [ln for ln in lines if re.fullmatch(r"seed [01]: step \d+ of 600 \(\d+%\)", ln)]
    assert progress, result.stdout
    for line in progress:  # each progress line comes before that seed's score line
        seed = line.split(":")[0]
        assert lines.index(line) < next(i for i, ln in enumerate(lines) if ln.startswith(f"{seed}: {tmp_path}"))
