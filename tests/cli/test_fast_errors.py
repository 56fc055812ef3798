"""A mistyped dataset id, --algo or --set key answers at once, before torch is imported, and names the
nearest valid choice (issue 18: these took 13-15 s and only said what was wrong)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

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


@pytest.mark.parametrize("given", [None, "", "ACTIVE", "PASSIVE"])
def test_openmp_waits_are_chosen_before_torch_unless_the_user_chose(given):
    # docs/threads.md: offrl picks the wait policy from the machine's load; a user's choice wins
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OFFRL_OMP_WAITS", "GOMP_SPINCOUNT")}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    probe = ("import os, sys\nfrom offrl.cli import main\nmain(['datasets', 'list', '--json'])\n"
             "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules, os.environ['OFFRL_OMP_WAITS'], "
             "file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    policy, torch_loaded, waits = result.stderr.strip().splitlines()[-1].split(" ", 2)
    assert torch_loaded == "False", result.stderr
    if given:
        assert policy == given and waits == f"user: OMP_WAIT_POLICY={given}"
    else:
        assert (policy, waits.split(":")[0]) in (("ACTIVE", "spin"), ("PASSIVE", "sleep")), result.stderr


def test_openmp_waits_spin_only_on_an_idle_machine(monkeypatch):
    from offrl import hardware
    from offrl.cli import choose_openmp_waits

    for key in ("OMP_WAIT_POLICY", "OFFRL_OMP_WAITS", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(key, raising=False)
    cores = os.cpu_count()
    assert choose_openmp_waits(busy=0.1) == f"spin: 0.10 of {cores} cores busy at start"
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and os.environ["GOMP_SPINCOUNT"] == "300000"
    # a child process inherits the decision instead of measuring again
    assert choose_openmp_waits(busy=1.9) == f"spin: 0.10 of {cores} cores busy at start"

    for key in ("OMP_WAIT_POLICY", "OFFRL_OMP_WAITS", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(key)
    assert choose_openmp_waits(busy=0.6) == f"sleep: 0.60 of {cores} cores busy at start"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in os.environ

    for key in ("OMP_WAIT_POLICY", "OFFRL_OMP_WAITS"):
        monkeypatch.delenv(key)
    monkeypatch.setattr(hardware, "busy_cores", lambda interval=0.1: None)  # no /proc/stat: sleep, the safe side
    monkeypatch.setenv("GOMP_SPINCOUNT", "5000")
    assert choose_openmp_waits() == "sleep: unknown cores busy at start"
    assert os.environ["GOMP_SPINCOUNT"] == "5000"  # a user's spin count is left alone


def test_busy_cores_sees_another_process_spinning():
    from offrl.hardware import busy_cores

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = busy_cores(0.3)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and 0.6 <= busy <= os.cpu_count() + 1e-9, busy
