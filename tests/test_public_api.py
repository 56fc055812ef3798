"""The public API is explicit: this list is the contract users' scripts rely on (as httpx pins its own)."""

from __future__ import annotations

import subprocess
import sys

import offrl

EXPECTED = {
    "CQLConfig", "CQLTrainer", "CQLTrainerConfig", "DQNConfig", "DQNTrainer", "DQNTrainerConfig",
    "DatasetInfo", "DiscreteCQLConfig", "EvalResult", "Evaluator", "OfflineDataset", "Run", "UserError",
    "__version__", "build_report", "evaluate", "list_bundled", "load_dataset", "make_bundled",
    "reference_scores", "train", "write_run_report",
}


def test_all_is_pinned() -> None:
    assert set(offrl.__all__) == EXPECTED


def test_every_exported_name_resolves() -> None:
    for name in offrl.__all__:
        assert getattr(offrl, name) is not None, name
    assert offrl.Run.__module__ == "offrl.runs.rundir"
    assert offrl.Evaluator.__module__ == "offrl.evaluation.evaluator"


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        offrl.no_such_thing  # noqa: B018
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("offrl.no_such_thing should not exist")


def test_import_offrl_does_not_import_torch() -> None:
    code = "import sys, offrl; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
