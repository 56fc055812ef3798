"""Fault injection on the dataset cache and on conversion inputs (docs/reliability.md): a damaged cache
entry is rebuilt (never trusted), leftovers of a killed conversion are swept, values that cannot be right
are refused at conversion with one line naming the file, and a full cache disk blames the cache, not the
source."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers.datafiles import write_d4rl

from offrl.data import cache_check, load_dataset
from offrl.errors import UserError


def _rows(ds) -> bytes:
    return (ds.cache_path / "rows.memmap").read_bytes()


def _writable(path) -> None:
    os.chmod(path, 0o644)


def test_zero_filled_rows_are_rebuilt_in_a_new_process_not_trusted(tmp_path, offrl_cli):
    """Before: the cache was valid once info.json existed; zero-filled rows trained to 'return 9.4' with
    exit 0 and `datasets info` showed the old statistics."""
    src = tmp_path / "d.hdf5"
    write_d4rl(src)
    ds = load_dataset(src)
    good = _rows(ds)
    rows = ds.cache_path / "rows.memmap"
    _writable(rows)
    rows.write_bytes(bytes(len(good)))  # same size: only the checksum can tell
    result = offrl_cli("datasets", "info", str(src))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "does not match the checksum" in warnings[0] and "rebuilding" in warnings[0]
    assert rows.read_bytes() == good


@pytest.mark.parametrize("damage", ["truncate", "missing", "info"])
def test_truncated_or_missing_rows_are_rebuilt(tmp_path, damage, capsys):
    src = tmp_path / "d.hdf5"
    write_d4rl(src)
    ds = load_dataset(src)
    good = _rows(ds)
    rows = ds.cache_path / "rows.memmap"
    if damage == "truncate":
        _writable(rows)
        os.truncate(rows, len(good) // 2)
    elif damage == "missing":
        rows.unlink()
    else:
        (ds.cache_path / "info.json").write_text('{"transitions": ')
    again = load_dataset(src)  # the same process: the size check runs on every load
    assert _rows(again) == good
    assert torch.equal(again.data["observation"], ds.data["observation"])
    assert "rebuilding it" in capsys.readouterr().err


def test_killed_conversion_leftovers_are_swept(tmp_path):
    src = tmp_path / "d.hdf5"
    write_d4rl(src)
    ds = load_dataset(src)
    datasets = ds.cache_path.parent
    stale = datasets / f".tmp-{ds.cache_path.name}-99999-deadbeef"
    stale.mkdir()
    (stale / "rows.memmap").write_bytes(bytes(1 << 20))
    load_dataset(src)
    assert not stale.exists()


def _bad_file(tmp_path, **kwargs):
    path = tmp_path / "bad.hdf5"
    write_d4rl(path, **kwargs)
    return path


N = 30  # rows of write_d4rl's default episodes (10 + 7 + 13)


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        ({"observations": np.full((N, 3), 1e39)}, ["observations", "too large"]),  # inf after the float32 cast
        ({"rewards": np.full(N, 1e30)}, ["reward", "too large"]),  # a warning, then an inf loss, before
        ({"observations": np.full((N, 3), 2**62, np.int64)}, ["observations", "too large"]),
        ({"terminals": np.r_[np.zeros(N - 1), 2].astype(np.int64)}, ["'terminals'", "0 or 1"]),
        ({"terminals": np.r_[np.zeros(N - 1), -1].astype(np.int64)}, ["'terminals'", "0 or 1"]),
        ({"terminals": np.r_[np.zeros(N - 1), 0.5]}, ["'terminals'", "0 or 1"]),
        ({"terminals": np.array([b"no"] * N)}, ["'terminals'", "0/1 flags"]),
        ({"actions": np.r_[np.zeros(N - 1), 2**58].astype(np.int64)}, ["discrete actions", "damaged"]),
        ({"observations": np.zeros((N, 0), np.float32)}, ["shape", "nothing to learn"]),
    ],
    ids=["obs-1e39", "reward-1e30", "obs-int64-huge", "flag-2", "flag-minus1", "flag-half", "flag-strings",
         "action-2^58", "zero-width-obs"],
)
def test_bad_inputs_are_refused_at_conversion(tmp_path, overrides, needles):
    path = _bad_file(tmp_path, overrides=overrides)
    with pytest.raises(UserError) as err:
        load_dataset(path)
    assert str(path) in str(err.value)
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    datasets = os.path.join(os.environ["OFFRL_CACHE"], "datasets")  # nothing half-written
    assert not os.path.isdir(datasets) or not os.listdir(datasets)


def test_full_cache_disk_blames_the_cache_not_the_source(tmp_path):
    """A cache on a full disk: RLIMIT_FSIZE in a child process makes the kernel refuse the rows file's
    writes (EFBIG, a real failed write like ENOSPC); the source is healthy and must not be blamed."""
    src = tmp_path / "big.hdf5"
    write_d4rl(src, lengths=(4000,) * 5, terminal=(False,) * 5, obs_dim=17)
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
        from offrl.cli import main
        sys.exit(main(["datasets", "info", {str(src)!r}, "--cache-dir", {str(tmp_path / "cache")!r}]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "rows.memmap" in lines[0] and ("no space" in lines[0] or "size limit" in lines[0]), lines[0]
    assert "HDF5" not in lines[0] and str(src) not in lines[0]
    assert not [p for p in (tmp_path / "cache" / "datasets").iterdir()]


def test_checksum_is_stored_at_conversion(tmp_path):
    src = tmp_path / "d.hdf5"
    write_d4rl(src)
    ds = load_dataset(src)
    info = json.loads((ds.cache_path / "info.json").read_text())
    assert info["rows_crc32"] == cache_check.file_crc32(ds.cache_path / "rows.memmap")


def test_symlink_loop_is_named_not_missing(tmp_path):
    loop = tmp_path / "loop.hdf5"
    loop.symlink_to(loop)
    with pytest.raises(UserError, match="symbolic link loop"):
        load_dataset(loop)


def test_minari_metadata_that_is_not_an_object_is_one_line():
    import gymnasium as gym
    from helpers.datafiles import cartpole_episodes, write_minari

    folder = write_minari("faults/cartpole-v0", cartpole_episodes(),
                          observation_space=gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
                          action_space=gym.spaces.Discrete(2))
    (folder / "data" / "metadata.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="must be a JSON object"):
        load_dataset(str(folder))


def _pendulum_like_episodes(width: int) -> list[dict]:
    rng = np.random.default_rng(0)
    episodes = []
    for t in (5, 8):
        term = np.zeros(t, bool)
        term[-1] = True
        episodes.append({"observations": rng.standard_normal((t + 1, 3)).astype(np.float32),
                         "actions": rng.uniform(-1, 1, (t, width)).astype(np.float32), "rewards": np.ones(t),
                         "terminations": term, "truncations": np.zeros(t, bool)})
    return episodes


def test_minari_action_space_contradicting_the_actions_is_one_line(offrl_cli, assert_user_error):
    """Before: a Box (2,) action space over actions of width 1 (minari's own writer accepts it) ended in a
    numpy reshape traceback inside the conversion."""
    import gymnasium as gym
    from helpers.datafiles import write_minari

    folder = write_minari("faults/pendulum-v0", _pendulum_like_episodes(1),
                          observation_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
                          action_space=gym.spaces.Box(-1, 1, (2,), np.float32))
    result = offrl_cli("datasets", "info", str(folder))
    assert_user_error(result, str(folder / "data" / "main_data.hdf5"), "shape (1,) per step", "has shape (2,)",
                      "contradicts the data")
    datasets = os.path.join(os.environ["OFFRL_CACHE"], "datasets")  # nothing half-written
    assert not os.path.isdir(datasets) or not os.listdir(datasets)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="Arrow Minari datasets need pyarrow")
def test_arrow_minari_action_space_contradicting_the_actions_is_one_line():
    """minari's Arrow writer refuses the mismatch itself: the metadata is edited afterwards (its action_space
    says (2,), the file holds width-1 actions). Before: a numpy reshape traceback."""
    import gymnasium as gym
    from helpers.datafiles import write_minari
    from minari.serialization import serialize_space

    folder = write_minari("faults/pendulum-arrow-v0", _pendulum_like_episodes(1), data_format="arrow",
                          observation_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
                          action_space=gym.spaces.Box(-1, 1, (1,), np.float32))
    meta_file = folder / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["action_space"] = serialize_space(gym.spaces.Box(-1, 1, (2,), np.float32))
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(UserError) as err:
        load_dataset(str(folder))
    msg = str(err.value)
    assert ".arrow" in msg and "shape (1,) per step" in msg and "has shape (2,)" in msg, msg
