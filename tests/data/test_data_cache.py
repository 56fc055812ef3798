"""The conversion cache: reuse, the size+mtime fast path, content keys, location, atomicity, and two
real processes converting the same dataset at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.datafiles import write_d4rl

import offrl.data.convert as convert
import offrl.data.resolve as resolve_mod
from offrl.data import load_dataset
from offrl.errors import UserError


def _entries(cache):
    root = cache / "datasets"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_second_load_reuses_the_cache_without_reading_the_source(tmp_path, monkeypatch):
    path = tmp_path / "d.hdf5"
    write_d4rl(path)
    first = load_dataset(path)
    info_mtime = (first.cache_path / "info.json").stat().st_mtime_ns

    def no_read(*args, **kwargs):
        raise AssertionError("the source was read again")

    monkeypatch.setattr(resolve_mod, "read_d4rl", no_read)
    monkeypatch.setattr(convert.hashlib, "sha256", no_read)  # fast path: size + mtime, no hashing
    second = load_dataset(path)
    assert second.cache_path == first.cache_path
    assert (second.cache_path / "info.json").stat().st_mtime_ns == info_mtime
    assert torch.equal(second.data["observation"], first.data["observation"])


def test_changed_content_gets_a_new_entry(tmp_path):
    path = tmp_path / "d.hdf5"
    write_d4rl(path, seed=0)
    a = load_dataset(path)
    write_d4rl(path, seed=1)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))  # make sure the fingerprint moves
    b = load_dataset(path)
    assert a.digest != b.digest and a.cache_path != b.cache_path
    assert not torch.equal(a.data["action"], b.data["action"])


def test_touch_without_change_keeps_the_digest(tmp_path):
    path = tmp_path / "d.hdf5"
    write_d4rl(path)
    a = load_dataset(path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    b = load_dataset(path)
    assert a.digest == b.digest and a.cache_path == b.cache_path


def test_gamma_is_part_of_the_key(tmp_path):
    path = tmp_path / "d.hdf5"
    write_d4rl(path)
    a = load_dataset(path, gamma=0.99)
    b = load_dataset(path, gamma=0.5)
    assert a.cache_path != b.cache_path
    assert not torch.equal(a.data["mc_return"], b.data["mc_return"])
    with pytest.raises(UserError, match="gamma"):
        load_dataset(path, gamma=1.5)


def test_cache_location_precedence(tmp_path, monkeypatch):
    path = tmp_path / "d.hdf5"
    write_d4rl(path)
    monkeypatch.setenv("OFFRL_CACHE", str(tmp_path / "env-cache"))
    assert load_dataset(path).cache_path.parent == tmp_path / "env-cache" / "datasets"
    explicit = load_dataset(path, cache_dir=tmp_path / "explicit")
    assert explicit.cache_path.parent == tmp_path / "explicit" / "datasets"
    monkeypatch.delenv("OFFRL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_dataset(path).cache_path.parent == tmp_path / "home" / ".cache" / "offrl" / "datasets"


def test_failed_conversion_leaves_nothing(tmp_path):
    arrays = write_d4rl(tmp_path / "ok.hdf5")
    obs = arrays["observations"].copy()
    obs[7, 1] = np.inf
    write_d4rl(tmp_path / "bad.hdf5", overrides={"observations": obs})
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="NaN/inf values in observation"):
        load_dataset(tmp_path / "bad.hdf5", cache_dir=cache)
    assert _entries(cache) == []  # no entry, no temporary directory
    assert not list((cache / "sources").iterdir())  # no remembered digest either


_CONVERT = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    import offrl.data.dataset as d  # conversion needs no torch: imported before the start signal
    go = Path(sys.argv[2])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    ds = d.load_dataset(sys.argv[1])
    print(json.dumps({"cache": str(ds.cache_path), "n": len(ds), "digest": ds.digest}))
    """
)


def test_two_processes_converting_at_once_make_one_valid_cache(tmp_path):
    path = tmp_path / "big.hdf5"
    write_d4rl(path, lengths=(40_000,) * 5, terminal=(False,) * 5, obs_dim=17, act_dim=6)
    go = tmp_path / "go"
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONVERT, str(path), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    for p in procs:  # both are imported and waiting: release them together
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1]
    assert _entries(Path(os.environ["OFFRL_CACHE"])) == [Path(results[0]["cache"]).name]  # no temporaries
    ds = load_dataset(path)
    assert str(ds.cache_path) == results[0]["cache"]
    assert len(ds) == 200_000 - 5
    assert ds.digest == results[0]["digest"]
    fresh = load_dataset(path, cache_dir=tmp_path / "fresh")  # converted alone: the same bytes
    assert torch.equal(fresh.rows, ds.rows)
    assert ds.data["episode"][-1].item() == 4 and ds.info.episodes == 5
