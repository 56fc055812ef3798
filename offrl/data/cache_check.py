"""What the conversion cache verifies: the rows file against the checksum stored at conversion, the values
of every chunk after their cast to the cache's dtypes, and what a killed conversion left behind.

A cache entry is trusted only when ``rows.memmap`` has the size ``info.json`` implies (checked on every
load) and its CRC-32 matches the one stored at conversion (checked on the first load of the entry in each
process: ~2.5 GB/s, so a few ms for the bundled datasets). A mismatch rebuilds the entry from the source
with one warning line (:func:`offrl.data.convert.build_cache`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zlib
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from offrl.errors import UserError

__all__ = [
    "MAX_ABS_VALUE",
    "MAX_DISCRETE_ACTIONS",
    "check_chunk_values",
    "check_spaces",
    "entry_problem",
    "file_crc32",
    "mark_verified",
    "sweep_stale_builds",
    "warn_rebuild",
]

#: Observations, actions and rewards at or above this magnitude overflow float32 arithmetic in training
#: (a squared TD error of a return near 1e17 is already inf): refused at conversion, not met as a NaN loss.
MAX_ABS_VALUE = 1e15
#: More discrete actions than this is a damaged file (a bit-flipped index), not a Q-network's output layer.
MAX_DISCRETE_ACTIONS = 1 << 16
_BLOCK = 8 << 20

# The multi-agent layout's keys, by the file's names (offrl.data.marl_hdf5).
_MARL_NAMES = {("agents", "observation"): "observations", ("next", "agents", "observation"): "next_observations",
               ("next", "agents", "reward"): "rewards", ("state",): "state", ("next", "state"): "next_state"}

# Entries whose rows were hashed in this process: (path, inode, size, mtime_ns).
_verified: set[tuple[str, int, int, int]] = set()


def file_crc32(path: str | os.PathLike[str]) -> int:
    """CRC-32 of a file's bytes, read in 8 MB blocks."""
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def _identity(rows: Path) -> tuple[str, int, int, int]:
    st = rows.stat()
    return str(rows.resolve()), st.st_ino, st.st_size, st.st_mtime_ns


def mark_verified(rows: Path) -> None:
    """Record that this process hashed (or just wrote) ``rows``: later loads only check its size."""
    _verified.add(_identity(rows))


def entry_problem(entry: Path, rows_file: str) -> str | None:
    """Why the cache entry cannot be trusted (``info.json`` unreadable, rows missing, truncated or not
    matching their checksum), else None."""
    try:
        info = json.loads((entry / "info.json").read_text())
        expected = int(info["transitions"]) * int(info["layout"]["row_bytes"])
        checksum = info.get("rows_crc32")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"info.json is unreadable ({type(err).__name__})"
    rows = entry / rows_file
    try:
        ident = _identity(rows)
    except OSError:
        return f"{rows_file} is missing"
    if ident[2] != expected:
        return f"{rows_file} has {ident[2]} bytes, expected {expected}"
    if ident in _verified:
        return None
    if checksum is None:
        return f"{rows_file} has no checksum"
    if file_crc32(rows) != int(checksum):
        return f"{rows_file} does not match the checksum stored at conversion"
    _verified.add(ident)
    return None


def warn_rebuild(entry: Path, problem: str, source: Any) -> None:
    """The one warning line of a rebuild."""
    print(f"offrl: warning: cache entry {entry} is damaged ({problem}); rebuilding it from {source}",
          file=sys.stderr, flush=True)


def sweep_stale_builds(datasets: Path, key: str) -> None:
    """Remove ``.tmp-<key>-*`` folders that killed conversions left (call it holding the key's lock: no
    live conversion of the key can own one)."""
    for tmp in datasets.glob(f".tmp-{key}-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def check_spaces(path: Any, obs_space: gym.Space, act_space: gym.Space, obs_specs: list[Any]) -> None:
    """Spaces no run can use: zero-width observations, an absurd number of discrete actions."""
    for leaf, shape, _ in obs_specs:
        if int(np.prod(shape, dtype=np.int64)) == 0:
            name = "/".join(leaf) or "observations"
            raise UserError(f"{path}: {name} have shape {tuple(shape)}: zero values per row, nothing to learn from")
    if isinstance(act_space, gym.spaces.Discrete) and int(act_space.n) > MAX_DISCRETE_ACTIONS:
        raise UserError(f"{path}: the action space has {int(act_space.n)} discrete actions (at most "
                        f"{MAX_DISCRETE_ACTIONS} are supported); the action indices look damaged")


def check_chunk_values(path: Any, values: dict[tuple[str, ...], np.ndarray], dtypes: dict[tuple[str, ...], Any],
                       first_row: int, act_space: gym.Space) -> None:
    """Values that are finite in the source but not after the cast to the cache's dtype (float64 1e39 ->
    float32 inf), or large enough to overflow training; discrete actions outside the action space."""
    for key, arr in values.items():
        arr = np.asarray(arr)
        if key in (("action",), ("agents", "action")) and isinstance(act_space, gym.spaces.Discrete):
            flat = arr.reshape(-1)
            bad = np.flatnonzero((flat < 0) | (flat >= int(act_space.n)))
            if bad.size:
                raise UserError(f"{path}: action {flat[bad[0]]} at row {first_row + int(bad[0])} is outside the "
                                f"action space Discrete({int(act_space.n)}); the action space contradicts the data")
            continue
        if arr.dtype.kind not in "fiu" or arr.size == 0:
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            cast = arr.astype(dtypes[key], copy=False)
            big = np.abs(cast.astype(np.float64, copy=False)) >= MAX_ABS_VALUE
            if arr.dtype.kind == "f":
                big &= np.isfinite(arr)  # NaN/inf of the source itself: the NaN check's (and --allow-nan's)
        if big.any():
            row = int(np.flatnonzero(big.reshape(big.shape[0], -1).any(axis=1))[0])
            value = arr.reshape(arr.shape[0], -1)[row][big.reshape(big.shape[0], -1)[row]][0]
            name = _MARL_NAMES.get(key) or {("action",): "actions", ("next", "reward"): "rewards"}.get(key) or (
                ("next_observations" if key[0] == "next" else "observations")
                + "".join(f"/{k}" for k in key[1 + (key[0] == "next"):]))
            raise UserError(f"{path}: {name} value {value:g} at row {first_row + row} is too large (|x| >= "
                            f"{MAX_ABS_VALUE:g} overflows float32 training); rescale the data")
