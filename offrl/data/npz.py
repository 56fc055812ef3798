"""Reader for demonstration archives in ``.npz``, as Stable-Baselines' expert-data recorder writes them.

Layout (``numpy.savez``): ``obs`` ``[N, ...]``, ``actions`` ``[N, A]`` (``[N, 1]`` indices for discrete
actions), ``rewards`` ``[N]``, ``episode_starts`` ``[N]`` (True on the first row of each episode),
optional ``episode_returns`` (one per episode), and optionally ``dones`` ``[N]`` and ``next_obs``
``[N, ...]``. Row ``i`` ends its episode when row ``i + 1`` starts one (or it is the last row).

Episode ends: a row with ``dones`` that ends its episode is ``terminated``; any other end is a cut (the
recorder's ``done`` does not say whether a time limit or a failure ended the episode, so without
``dones`` every end is a cut). The cut-last-row rule: without ``next_obs`` the last row of a cut episode
has no successor, so it is dropped and the row before it ends the episode ``truncated``; with
``next_obs`` every row is kept. The archive's arrays are loaded one key at a time (npz members cannot
be memory-mapped).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from offrl.data.d4rl import CUT_LAST_ROW_RULE, box_action_space, check_flags, nan_range
from offrl.data.source import Chunk, RawSource, check_numeric, storage_dtype
from offrl.errors import UserError

__all__ = ["read_npz", "is_npz_file"]

REQUIRED = ("obs", "actions", "rewards", "episode_starts")


def is_npz_file(path: Path) -> bool:
    """An ``.npz`` archive: a zip file (numpy.savez writes one)."""
    return path.suffix == ".npz" or (path.is_file() and zipfile.is_zipfile(path))


def _load(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise UserError(f"{path}: truncated or corrupt .npz archive ({err}); re-create it") from None


def _array(archive: Any, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise UserError(f"{path}: cannot read '{key}' from the .npz archive ({err}); re-create it") from None


def _flags(values: np.ndarray, n: int, key: str, path: Path) -> np.ndarray:
    if values.ndim == 0 or values.shape[0] != n or values.size != n:
        raise UserError(f"{path}: '{key}' has shape {values.shape}; expected ({n},) like 'obs'")
    check_flags(values, key, 0, path)
    return values.reshape(n) != 0


def read_npz(path: Path) -> RawSource:
    """Validate a Stable-Baselines expert archive and describe it; rows are streamed later, in chunks."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    with _load(path) as archive:
        for key in REQUIRED:
            if key not in archive.files:
                raise UserError(
                    f"{path}: missing required key '{key}' (a demonstration archive needs {', '.join(REQUIRED)})"
                )
        obs = _array(archive, "obs", path)
        if obs.ndim == 0 or obs.shape[0] == 0:
            raise UserError(f"{path}: zero transitions ('obs' is empty)")
        if obs.dtype.kind not in "fiub":
            raise UserError(
                f"{path}: 'obs' has dtype {obs.dtype}; expected numbers (image paths are not read)"
            )
        n = int(obs.shape[0])
        act = _array(archive, "actions", path)
        rew = _array(archive, "rewards", path)
        for key, arr in (("actions", act), ("rewards", rew)):
            if arr.ndim == 0 or arr.shape[0] != n:
                raise UserError(
                    f"{path}: '{key}' has {arr.shape[0] if arr.ndim else 0} rows but 'obs' has {n}"
                )
        if rew.size != n:
            raise UserError(f"{path}: 'rewards' has shape {rew.shape}; expected ({n},)")
        if act.dtype.kind not in "fiub":
            raise UserError(f"{path}: 'actions' has dtype {act.dtype}; expected numbers")
        check_numeric(rew.dtype, "rewards", path)
        starts = _flags(_array(archive, "episode_starts", path), n, "episode_starts", path)
        starts[0] = True
        dones = _flags(_array(archive, "dones", path), n, "dones", path) if "dones" in archive.files else None
        nxt = _array(archive, "next_obs", path) if "next_obs" in archive.files else None
        if nxt is not None and nxt.shape != obs.shape:
            raise UserError(f"{path}: 'next_obs' has shape {nxt.shape}; expected {obs.shape} like 'obs'")
        if nxt is not None:
            check_numeric(nxt.dtype, "next_obs", path)
        returns = _array(archive, "episode_returns", path) if "episode_returns" in archive.files else None
    episodes = int(starts.sum())
    if returns is not None and returns.size != episodes:
        raise UserError(
            f"{path}: 'episode_returns' has {returns.size} values but 'episode_starts' marks {episodes} episodes"
        )
    end = np.r_[starts[1:], True]
    term = end & dones if dones is not None else np.zeros(n, bool)
    keep = np.ones(n, bool) if nxt is not None else term | ~end
    keep_next = np.r_[keep[1:], False]
    truncated = keep & ~term & (end | ~keep_next)
    transitions = int(keep.sum())
    if transitions == 0:
        raise UserError(
            f"{path}: zero transitions after dropping cut episode ends; add 'next_obs' to the archive"
        )

    dtype = storage_dtype(gym.spaces.Box(0, 1, shape=obs.shape[1:], dtype=obs.dtype))
    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=obs.shape[1:], dtype=dtype)
    obs = obs.astype(dtype, copy=False)
    discrete = act.dtype.kind in "iu"
    if discrete:
        if act.size != n or int(act.min()) < 0:
            raise UserError(
                f"{path}: discrete 'actions' must be non-negative indices of shape ({n},) or ({n}, 1)"
            )
        act = act.reshape(n).astype(np.int64)
        act_space: gym.Space = gym.spaces.Discrete(int(act.max()) + 1)
    else:
        act = act.reshape(n, -1).astype(np.float32) if act.ndim == 1 else act.astype(np.float32)
        act_space = box_action_space(*nan_range(act), tuple(act.shape[1:]), path)
    index = np.arange(n)
    if nxt is None:
        nxt_row = np.where(term | (index == n - 1), index, index + 1)
        nxt = obs[nxt_row]
    else:
        nxt_row = None
        nxt = nxt.astype(obs.dtype, copy=False)
    reward = rew.reshape(n).astype(np.float64)

    def iter_chunks(chunk_rows: int) -> Iterator[Chunk]:
        rows = np.flatnonzero(keep)
        for s in range(0, rows.size, chunk_rows):
            r = rows[s : s + chunk_rows]
            chunk = {
                "observation": obs[r],
                "next_observation": nxt[r],
                "action": act[r],
                "reward": reward[r],
                "terminated": term[r],
                "truncated": truncated[r],
                "source_row": r,
            }
            if nxt_row is not None:
                chunk["next_source_row"] = nxt_row[r]
            yield chunk

    dropped = n - transitions
    return RawSource(
        format="npz",
        path=path,
        files=[path],
        name=path.stem,
        transitions=transitions,
        source_rows=n,
        observation_space=obs_space,
        action_space=act_space,
        had_next_observations=nxt_row is None,
        iter_chunks=iter_chunks,
        metadata={"env_id": None, "has_dones": dones is not None},
        rules={"cut-last-row": {"rows": dropped, "rule": CUT_LAST_ROW_RULE}} if dropped else {},
    )
