"""A mistyped dataset id, --algo or --set key answers at once, before torch is imported, and names the
nearest valid choice (issue 18: these took 13-15 s and only said what was wrong)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers.cli import assert_user_error

PENDULUM = ["train", "--dataset", "offrl/pendulum/medium-v0"]
# The CLI's own entry point in a fresh interpreter; it reports whether torch was imported.
PROBE = """import json, sys
from offrl.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def _probe(*argv: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    out = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
    return result, out


@pytest.mark.parametrize("argv, needles", [
    (["train", "--dataset", "offrl/pendulum/medum-v0"],
     ["dataset 'offrl/pendulum/medum-v0' not found", "(did you mean 'offrl/pendulum/medium-v0'"]),
    ([*PENDULUM, "--set", "cql.min_q_weigth=5"],
     ["unknown config key 'cql.min_q_weigth' (did you mean 'cql.min_q_weight'"]),
    ([*PENDULUM, "--set", "evl.interval=5"], ["unknown config key 'evl' (did you mean 'eval'?)"]),
])
def test_user_errors_answer_before_torch_with_a_suggestion(argv, needles):
    result, out = _probe(*argv)
    result.returncode = out.get("code", result.returncode)
    assert_user_error(result, *needles)
    # The deterministic proxy for "fast": torch (seconds to import) is never loaded on this path. The wall
    # time (about 0.5 s idle) is not asserted: a loaded 2-core box makes any bound flaky.
    assert out["torch"] is False, "torch was imported before the input was checked"


def test_a_mistyped_algo_names_the_nearest(offrl_cli):
    result = offrl_cli(*PENDULUM, "--algo", "discrete_cql")
    assert_user_error(result, "invalid choice: 'discrete_cql'", "(did you mean 'discrete-cql'?)")


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("", "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_sleep_unless_the_user_chose(given, expected):
    # docs/threads.md: spinning OpenMP waits collapse throughput on a loaded machine; a user's choice wins
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    probe = ("import os, sys\nfrom offrl.cli import main\nmain(['datasets', 'list', '--json'])\n"
             "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert result.stderr.strip().splitlines()[-1] == f"{expected} False", result.stderr
