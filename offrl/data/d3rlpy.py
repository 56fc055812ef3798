"""Reader for d3rlpy 2.x files, written by ``ReplayBuffer.dump()`` / ``MDPDataset.dump()``. Never downloads.

Layout (HDF5): ``columns`` (the per-episode keys: ``observations``, ``actions``, ``rewards``,
``terminated``), ``num_episodes``, ``version`` ("2.1"), and per episode ``i``: ``observations_<i>``
(``[T, ...]``; a tuple observation is ``observations_<i>_<j>``, one dataset per element), ``actions_<i>``
(``[T, A]``, integer indices for discrete actions), ``rewards_<i>`` (``[T, 1]``), ``terminated_<i>``
(a scalar flag). There is no timeout flag: an episode that is not terminated was cut.

Rows follow d3rlpy's own transitions: row ``t``'s next observation is row ``t + 1``. The last row of a
terminated episode is kept (never bootstrapped); the last row of a cut episode has no successor, so it
is dropped and the row before it ends the episode ``truncated`` (the cut-last-row rule, as d3rlpy's
``transition_count``). Tuple observations become a Dict observation with keys ``"0"``, ``"1"``, ...
Episodes are read one at a time (in slices for very long ones).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from offrl.data.d4rl import (
    CUT_LAST_ROW_RULE,
    box_action_space,
    check_flags,
    hdf5_errors,
    hdf5_value,
    nan_range,
    open_hdf5,
)
from offrl.data.source import Chunk, RawSource, check_numeric, rechunk, storage_dtype, whole_numbers
from offrl.errors import UserError

__all__ = ["read_d3rlpy2", "is_d3rlpy2_file"]

REQUIRED = ("observations", "actions", "rewards", "terminated")


def is_d3rlpy2_file(f: h5py.File) -> bool:
    """d3rlpy 2.x dumps carry ``columns`` and ``num_episodes`` instead of flat arrays."""
    return "columns" in f and "num_episodes" in f and "observations" not in f


def _obs_keys(f: h5py.File, i: int) -> list[str] | None:
    """Dataset names of episode ``i``'s observation: one array, or the elements of a tuple."""
    if f"observations_{i}" in f:
        return [f"observations_{i}"]
    keys = []
    while f"observations_{i}_{len(keys)}" in f:
        keys.append(f"observations_{i}_{len(keys)}")
    return keys or None


def read_d3rlpy2(path: Path) -> RawSource:
    """Validate a d3rlpy 2.x dump and describe it; episodes are streamed later, in chunks."""
    path = Path(path)
    with open_hdf5(path) as f, hdf5_errors(path):
        columns = [str(hdf5_value(c)) for c in np.asarray(f["columns"][()]).reshape(-1)]
        for key in REQUIRED:
            if key not in columns:
                raise UserError(
                    f"{path}: d3rlpy file without '{key}' in its columns {columns}; expected {', '.join(REQUIRED)}"
                )
        num = _episode_count(f["num_episodes"][()], path)
        version = hdf5_value(f["version"][()]) if "version" in f else None
        if num <= 0:
            raise UserError(f"{path}: zero transitions (num_episodes is {num})")
        tuple_obs = False
        obs_shapes: list[tuple[int, ...]] | None = None
        obs_dtypes: list[np.dtype] = []
        discrete = None
        lengths, terminated = [], []
        lo = hi = None
        act_shape: tuple[int, ...] = ()
        for i in range(num):
            keys = _obs_keys(f, i)
            for key in ("actions", "rewards", "terminated"):
                if f"{key}_{i}" not in f:
                    raise UserError(f"{path}: episode {i} has no '{key}_{i}' (num_episodes says {num})")
            if keys is None:
                raise UserError(f"{path}: episode {i} has no 'observations_{i}' (num_episodes says {num})")
            act, rew = f[f"actions_{i}"], f[f"rewards_{i}"]
            t = int(act.shape[0]) if act.ndim else 0
            shapes = [tuple(f[k].shape[1:]) for k in keys]
            if obs_shapes is None:
                obs_shapes, obs_dtypes = shapes, [f[k].dtype for k in keys]
                tuple_obs = keys != [f"observations_{i}"]
                discrete, act_shape = act.dtype.kind in "iu", tuple(act.shape[1:])
            elif shapes != obs_shapes:
                raise UserError(
                    f"{path}: episode {i} observations have shape {shapes} but episode 0's have {obs_shapes}"
                )
            for key in keys:
                if f[key].shape[0] != t:
                    raise UserError(f"{path}: episode {i} has {f[key].shape[0]} observations for {t} actions")
            if rew.ndim == 0 or rew.shape[0] != t or int(np.prod(rew.shape[1:], dtype=np.int64)) != 1:
                raise UserError(f"{path}: episode {i} 'rewards' has shape {rew.shape}; expected ({t}, 1)")
            if tuple(act.shape[1:]) != act_shape:
                raise UserError(
                    f"{path}: episode {i} actions have shape {act.shape[1:]}, episode 0's {act_shape}"
                )
            if any(f[k].dtype.kind not in "fiub" for k in keys) or act.dtype.kind not in "fiub":
                raise UserError(f"{path}: episode {i} holds non-numeric observations or actions")
            check_numeric(rew.dtype, f"rewards_{i}", path)
            a = np.asarray(act[()]).reshape(t, -1)
            if discrete and not whole_numbers(a):
                raise UserError(f"{path}: 'actions_{i}' hold non-integer values but episode 0's actions are "
                                "discrete indices; re-create the file with one kind of action")
            if t:
                a_lo, a_hi = nan_range(a)
                lo = a_lo if lo is None else np.fmin(lo, a_lo)
                hi = a_hi if hi is None else np.fmax(hi, a_hi)
            lengths.append(t)
            flag = np.asarray(f[f"terminated_{i}"][()]).reshape(-1)
            if flag.size != 1:
                raise UserError(f"{path}: 'terminated_{i}' holds {flag.size} values; expected one 0/1 flag per episode")
            check_flags(flag, f"terminated_{i}", 0, path)
            terminated.append(bool(flag[0]))
    kept = [t if term else max(t - 1, 0) for t, term in zip(lengths, terminated, strict=True)]
    transitions = sum(kept)
    if transitions == 0:
        raise UserError(f"{path}: zero transitions (every episode is a single cut row)")
    assert obs_shapes is not None and lo is not None and hi is not None
    leaves = [
        gym.spaces.Box(-np.inf, np.inf, shape=s, dtype=storage_dtype(gym.spaces.Box(0, 1, s, d)))
        for s, d in zip(obs_shapes, obs_dtypes, strict=True)
    ]
    obs_space: gym.Space = (
        gym.spaces.Dict({str(j): b for j, b in enumerate(leaves)}) if tuple_obs else leaves[0]
    )
    if discrete:
        if int(np.min(lo)) < 0 or int(np.prod(act_shape, dtype=np.int64)) != 1:
            raise UserError(f"{path}: discrete actions must be non-negative indices of shape (T, 1)")
        act_space: gym.Space = gym.spaces.Discrete(int(np.max(hi)) + 1)
    else:
        act_space = box_action_space(lo, hi, act_shape or (1,), path)
    obs_dtypes_out = [storage_dtype(b) for b in leaves]

    def read_obs(f: h5py.File, i: int, a: int, b: int) -> Any:
        keys = _obs_keys(f, i) or []
        parts = [
            np.asarray(f[k][a:b]).astype(d, copy=False) for k, d in zip(keys, obs_dtypes_out, strict=True)
        ]
        return {str(j): p for j, p in enumerate(parts)} if tuple_obs else parts[0]

    def pieces(chunk_rows: int) -> Iterator[Chunk]:
        start = 0  # source row of the episode's first row (rows numbered across episodes)
        with open_hdf5(path) as f, hdf5_errors(path):
            for i, (t, term, k) in enumerate(zip(lengths, terminated, kept, strict=True)):
                for a in range(0, k, chunk_rows):
                    b = min(a + chunk_rows, k)
                    obs = read_obs(f, i, a, min(b + 1, t))
                    m = b - a
                    last = b == k
                    nxt = _shift(obs, m, own_last=last and term)
                    act = np.asarray(f[f"actions_{i}"][a:b])
                    act = (
                        act.reshape(m).astype(np.int64) if discrete else act.reshape(m, -1).astype(np.float32)
                    )
                    flags_t = np.zeros(m, bool)
                    flags_c = np.zeros(m, bool)
                    if last:
                        (flags_t if term else flags_c)[-1] = True
                    index = np.arange(start + a, start + b)
                    yield (
                        {
                            "observation": _head(obs, m),
                            "next_observation": nxt,
                            "action": act,
                            "reward": np.asarray(f[f"rewards_{i}"][a:b], np.float64).reshape(m),
                            "terminated": flags_t,
                            "truncated": flags_c,
                            "source_row": index,
                            "next_source_row": np.where(
                                np.arange(m) == m - 1, index + (0 if last and term else 1), index + 1
                            ),
                        }
                    )
                start += t

    def iter_chunks(chunk_rows: int) -> Iterator[Chunk]:
        return rechunk(pieces(chunk_rows), chunk_rows)

    dropped = sum(lengths) - transitions
    return RawSource(
        format="d3rlpy2",
        path=path,
        files=[path],
        name=path.stem,
        transitions=transitions,
        source_rows=sum(lengths),
        observation_space=obs_space,
        action_space=act_space,
        had_next_observations=False,
        iter_chunks=iter_chunks,
        metadata={"env_id": None, "d3rlpy_version": version},
        rules={"cut-last-row": {"rows": dropped, "rule": CUT_LAST_ROW_RULE}} if dropped else {},
    )


def _episode_count(value: Any, path: Path) -> int:
    """``num_episodes`` as an int, or a UserError naming it."""
    try:
        num = np.asarray(value)
        count = int(num)
        ok = num.dtype.kind in "iu" or (num.dtype.kind == "f" and count == float(num))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise UserError(f"{path}: 'num_episodes' is {hdf5_value(value)!r}; expected the number of episodes (an "
                        "integer): fix it or re-create the file")
    return count


def _head(tree: Any, m: int) -> Any:
    return {k: v[:m] for k, v in tree.items()} if isinstance(tree, dict) else tree[:m]


def _shift(tree: Any, m: int, *, own_last: bool) -> Any:
    """Next observations of the first ``m`` rows: the following row; a terminated last row keeps its own."""
    if isinstance(tree, dict):
        return {k: _shift(v, m, own_last=own_last) for k, v in tree.items()}
    out = np.empty((m, *tree.shape[1:]), tree.dtype)
    avail = min(m, tree.shape[0] - 1)
    out[:avail] = tree[1 : avail + 1]
    if own_last or avail < m:
        out[m - 1] = tree[m - 1]
    return out
