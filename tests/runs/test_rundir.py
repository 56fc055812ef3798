"""Run directories: atomic creation, layout, writability checks."""

from __future__ import annotations

import os

import pytest

from offrl.errors import UserError
from offrl.runs.rundir import (
    check_writable,
    create_run_dir,
    dataset_slug,
    is_run_dir,
    package_versions,
    run_dir_path,
    runs_root,
    write_json_atomic,
)


def test_layout_and_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFRL_RUNS", str(tmp_path / "env-runs"))
    assert runs_root(None) == tmp_path / "env-runs"
    assert runs_root(tmp_path / "x") == tmp_path / "x"
    assert dataset_slug("offrl/pendulum/medium-v0") == "offrl__pendulum__medium-v0"
    path = run_dir_path(None, "offrl/pendulum/medium-v0", "cql", "seed0-x")
    assert path == tmp_path / "env-runs" / "offrl__pendulum__medium-v0" / "cql" / "seed0-x"
    with pytest.raises(UserError, match="--name"):
        run_dir_path(None, "d", "cql", "a/b")
    versions = package_versions()
    assert {"torch", "torchrl", "tensordict", "python"} <= set(versions)


def test_create_is_atomic_and_refuses_existing(tmp_path):
    path = tmp_path / "runs" / "ds" / "cql" / "r1"
    create_run_dir(path, {"config.yaml": "seed: 0\n"})
    assert is_run_dir(path) and (path / "config.yaml").read_text() == "seed: 0\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["r1"], "no temporary sibling may remain"
    with pytest.raises(UserError, match="already exists"):
        create_run_dir(path, {"config.yaml": "x"})
    write_json_atomic(path / "summary.json", {"best": float("nan")})
    assert (path / "summary.json").read_text().count("null") == 1  # NaN is not JSON


def test_output_under_a_file_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="not a folder"):
        check_writable(blocker / "runs")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder_is_a_user_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UserError, match="not writable"):
            check_writable(locked / "runs")
        with pytest.raises(UserError, match="--out"):
            create_run_dir(locked / "runs" / "r", {"config.yaml": ""})
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)
