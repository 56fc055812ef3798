"""Data-layer benchmark: convert, cached load and sampling throughput on a synthetic D4RL-style file.

Prints figures; it asserts nothing about timing. ``offrl bench data`` and ``benchmarks/bench_data.py``
call :func:`run_data_benchmark`.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = ["run_data_benchmark", "write_d4rl_file", "peak_rss_reset", "peak_rss_mb"]


def write_d4rl_file(
    path: str | os.PathLike,
    transitions: int,
    *,
    obs_dim: int = 17,
    act_dim: int = 6,
    episode_length: int = 1000,
    next_observations: bool = True,
    seed: int = 0,
    chunk: int = 100_000,
) -> Path:
    """Write a D4RL-style file (MuJoCo-like shapes, timeouts every ``episode_length`` rows), chunk by chunk."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        obs = f.create_dataset("observations", (transitions, obs_dim), dtype=np.float32)
        nxt = (
            f.create_dataset("next_observations", (transitions, obs_dim), dtype=np.float32)
            if next_observations
            else None
        )
        act = f.create_dataset("actions", (transitions, act_dim), dtype=np.float32)
        rew = f.create_dataset("rewards", (transitions,), dtype=np.float32)
        term = f.create_dataset("terminals", (transitions,), dtype=bool)
        tout = f.create_dataset("timeouts", (transitions,), dtype=bool)
        for s in range(0, transitions, chunk):
            e = min(s + chunk, transitions)
            rows = np.arange(s, e)
            o = rng.standard_normal((e - s + 1, obs_dim), dtype=np.float32)
            obs[s:e] = o[:-1]
            if nxt is not None:
                nxt[s:e] = o[1:]
            act[s:e] = rng.uniform(-1, 1, (e - s, act_dim)).astype(np.float32)
            rew[s:e] = rng.standard_normal(e - s).astype(np.float32)
            tout[s:e] = (rows % episode_length) == episode_length - 1
            term[s:e] = (rows % 3001) == 3000  # a few terminated episodes
    return path


def peak_rss_reset() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory (VmHWM) of this process in MB, NaN where /proc is unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _sample_rate(rb: Any, batches: int) -> float:
    """Steady-state batches/s: after a warm-up and a full GC (the first collections after importing torch
    traverse every imported object and would otherwise be charged to the first batches)."""
    for _ in range(min(500, batches)):
        rb.sample()
    gc.collect()
    t0 = time.perf_counter()
    for _ in range(batches):
        rb.sample()
    return batches / (time.perf_counter() - t0)


def run_data_benchmark(
    transitions: int = 1_000_000,
    *,
    obs_dim: int = 17,
    act_dim: int = 6,
    batch_size: int = 256,
    sample_batches: int = 3000,
    next_observations: bool = True,
    chunk_size: int | None = None,
    workdir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Time convert (cold, incl. hashing), cached load, and 256-batch sampling on a fresh synthetic file.

    Returns a JSON-ready dict: seconds for each phase, batches/s (memmapped and in RAM), the file size
    and the peak RSS growth during conversion (MB).
    """
    import tensordict  # noqa: F401  (import cost is not load time)
    import torch

    from offrl.data.dataset import load_dataset

    with tempfile.TemporaryDirectory(dir=workdir, prefix="offrl-bench-") as tmp:
        tmp_path = Path(tmp)
        src = tmp_path / f"bench-{transitions}.hdf5"
        t0 = time.perf_counter()
        write_d4rl_file(
            src, transitions, obs_dim=obs_dim, act_dim=act_dim, next_observations=next_observations
        )
        write_s = time.perf_counter() - t0
        cache = tmp_path / "cache"

        rss_before = _rss_mb()
        tracked = peak_rss_reset()
        t0 = time.perf_counter()
        ds = load_dataset(src, cache_dir=cache, chunk_size=chunk_size)
        convert_s = time.perf_counter() - t0
        peak = peak_rss_mb() if tracked else float("nan")
        del ds

        t0 = time.perf_counter()
        ds = load_dataset(src, cache_dir=cache)
        ds.data  # noqa: B018  (maps the rows and builds the TED views: part of a load)
        load_s = time.perf_counter() - t0

        threads = torch.get_num_threads()
        rb = ds.replay_buffer(batch_size, seed=0)
        memmap_rate = _sample_rate(rb, sample_batches)
        rb_ram = ds.replay_buffer(batch_size, seed=0, in_memory=True)
        ram_rate = _sample_rate(rb_ram, sample_batches)
        return {
            "benchmark": "data",
            "transitions": transitions,
            "obs_dim": obs_dim,
            "act_dim": act_dim,
            "next_observations": next_observations,
            "file_mb": round(src.stat().st_size / 2**20, 1),
            "write_file_s": round(write_s, 3),
            "convert_s": round(convert_s, 3),
            "cached_load_s": round(load_s, 4),
            "batch_size": batch_size,
            "sample_batches_per_s": round(memmap_rate, 1),
            "sample_batches_per_s_in_memory": round(ram_rate, 1),
            "convert_peak_rss_growth_mb": round(peak - rss_before, 1) if tracked else None,
            "torch_threads": threads,
            "cpu_count": os.cpu_count(),
        }
