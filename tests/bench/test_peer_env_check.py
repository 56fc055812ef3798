"""benchmarks/peer_env_check.py: the same fixed policy and seeds in two Pythons give the same episodes; a
changed episode is found; bad input is one line and exit 2. With OFFRL_D3RLPY_PYTHON, d3rlpy's own
environment against this one on the MuJoCo envs the study compares."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
from helpers.bench import benchmark_module


def _module():
    return benchmark_module("peer_env_check")


def test_same_python_is_same_and_a_changed_episode_is_found(capsys):
    mod = _module()
    assert mod.main(["--peer-python", sys.executable, "--envs", "Pendulum-v1", "--episodes", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "same" and sum(line.startswith("Pendulum-v1 episode") for line in out) == 2
    ours = mod.rollouts(sys.executable, ["Pendulum-v1"], 2)
    assert [e[3] for e in ours["episodes"]] == [200, 200] and ours["episodes"][0][2] != ours["episodes"][1][2]
    peer = copy.deepcopy(ours)
    peer["episodes"][1][2] += 0.01 * abs(peer["episodes"][1][2])
    lines, same = mod.compare(ours, peer)
    assert not same and lines[2].endswith("<-") and not lines[1].endswith("<-")


@pytest.mark.parametrize("args, words", [
    (["--peer-python", "/nonexistent/python"], ["--peer-python", "no such file"]),
    (["--peer-python", sys.executable, "--episodes", "0"], ["--episodes 0"]),
    (["--peer-python", sys.executable, "--envs", "NoSuchEnv-v9"], ["rollout failed"]),
])
def test_bad_input_is_one_line(capsys, args, words):
    assert _module().main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words)


def test_d3rlpy_environment_gives_the_same_mujoco_episodes(capsys):
    python = os.environ.get("OFFRL_D3RLPY_PYTHON")
    if not python or not Path(python).exists():
        pytest.skip("needs the d3rlpy peer's Python: set OFFRL_D3RLPY_PYTHON")
    pytest.importorskip("mujoco")
    assert _module().main(["--peer-python", python, "--envs", "Walker2d-v5,Hopper-v5,HalfCheetah-v5"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "same"
