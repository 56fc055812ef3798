"""Reader for D4RL-style HDF5 files and d3rlpy's HDF5 export. Never downloads anything.

Layout: flat arrays ``observations`` [N, ...], ``actions``, ``rewards``, ``terminals``; optional
``timeouts``, ``next_observations``, ``infos`` (group or dataset, ignored), ``metadata`` (group) and, in
d3rlpy's export, ``episode_terminals``, ``discrete_action`` and ``version``. Rewards and flags may be
``(N,)`` or ``(N, 1)``, float or bool.

**d3rlpy 1.x terminal rows.** d3rlpy 1.x stores the terminal observation of an episode that ends in a
failure as an extra last row, with ``terminals`` set on it and on the row before, and
``episode_terminals`` on it only. That row is the previous row's next observation, not a transition:
the previous row ends the episode ``terminated`` with it as next observation, and it is dropped.

Episode ends are ``terminals | timeouts | episode_terminals``. A ``terminals`` end is ``terminated``; any
other end is ``truncated`` (a time limit: the critic bootstraps through it).

**The cut-last-row rule.** Without ``next_observations`` a row's next observation is the next row of
the same episode. The last row of an episode that was *cut* (a timeout, a d3rlpy episode end without a
terminal, or the end of the file) has no successor in the file, so it is dropped and the row before it
becomes the episode's last transition, marked ``truncated``. The last row of a *terminated* episode is
kept: it is never bootstrapped, so its next observation (a copy of its own observation) is never used.
With ``next_observations`` every row is kept; the file's last row, if it ends no episode, is marked
``truncated``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from offrl.data.source import Chunk, RawSource, check_numeric, storage_dtype, whole_numbers
from offrl.errors import UserError

__all__ = ["read_d4rl", "open_hdf5", "is_minari_file", "hdf5_errors", "hdf5_value", "box_action_space", "check_flags",
           "episode_rows", "float_or_none", "hdf5_metadata", "int_or_none", "nan_range", "pick", "source_metadata"]

REQUIRED = ("observations", "actions", "rewards", "terminals")
FLAG_KEYS = ("terminals", "timeouts", "episode_terminals")
CUT_LAST_ROW_RULE = (
    "the last row of a cut episode has no next observation in the file: dropped, the row before it ends "
    "the episode truncated"
)
D3RLPY1_RULE = (
    "a 'terminals' row followed by its episode's 'episode_terminals' row: the latter holds the terminal "
    "observation (the former's next observation), not a transition of its own"
)
_FLAG_CHUNK = 1 << 20  # rows of flags read at a time in the counting pass (a few MB)


def open_hdf5(path: Path) -> h5py.File:
    """Open an HDF5 file read-only, turning every way it can fail into a one-line UserError."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise UserError(f"{path}: cannot read the file (permission denied); fix its permissions") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the file ({err.strerror or err})") from None
    if not h5py.is_hdf5(path):
        raise UserError(
            f"{path}: not an HDF5 file; expected a D4RL-style .hdf5 file or a Minari dataset folder"
        )
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise UserError(
            f"{path}: truncated or corrupt HDF5 file ({_first_line(err)}); re-create or re-download it"
        ) from None


@contextmanager
def hdf5_errors(path: Path) -> Iterator[None]:
    """Turn h5py's OSError/KeyError on a damaged file into a one-line UserError naming it."""
    try:
        yield
    except UserError:
        raise
    except (OSError, KeyError, RuntimeError) as err:
        raise UserError(
            f"{path}: truncated or corrupt HDF5 file ({_first_line(err)}); re-create or re-download it"
        ) from None


def is_minari_file(f: h5py.File) -> bool:
    """A Minari ``main_data.hdf5`` holds ``episode_<i>`` groups instead of flat arrays."""
    return "observations" not in f and any(k.startswith("episode_") for k in f.keys())


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def hdf5_value(value: Any) -> Any:
    """HDF5 attribute/scalar → plain Python (bytes decoded, numpy scalars unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.shape == ():
            return hdf5_value(value[()])
        if value.size <= 64:
            return [hdf5_value(v) for v in value.tolist()]
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def source_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """The dataset facts a file's metadata (:func:`hdf5_metadata`) may carry, under their usual names: env id,
    reference scores, episode limit and dataset id."""
    return {
        "env_id": pick(meta, "env_id", "env_name", "env"),
        "ref_min_score": float_or_none(pick(meta, "ref_min_score")),
        "ref_max_score": float_or_none(pick(meta, "ref_max_score")),
        "max_episode_steps": int_or_none(pick(meta, "max_episode_steps")),
        "dataset_id": pick(meta, "dataset_id", "dataset_name"),
    }


def hdf5_metadata(f: h5py.File) -> dict[str, Any]:
    """Root attributes plus the ``metadata`` group's attributes and small datasets, flattened by name."""
    meta: dict[str, Any] = {k: hdf5_value(v) for k, v in f.attrs.items()}
    group = f.get("metadata")
    if isinstance(group, h5py.Group):
        meta.update({k: hdf5_value(v) for k, v in group.attrs.items()})

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and obj.size <= 64:
                meta[name] = hdf5_value(obj[()])

        group.visititems(visit)
    for key in ("version", "discrete_action"):
        if key in f and isinstance(f[key], h5py.Dataset) and f[key].shape == ():
            meta[key] = hdf5_value(f[key][()])
    return meta


def pick(meta: dict[str, Any], *names: str) -> Any:
    for name in names:
        for key, value in meta.items():
            if key.split("/")[-1] == name and value is not None:
                return value
    return None


def _row_count(ds: h5py.Dataset, n: int, key: str, path: Path, *, per_row: bool) -> None:
    """Check ``ds`` has ``n`` rows; ``per_row``: exactly one value per row ((N,) or (N, 1))."""
    if ds.ndim == 0 or ds.shape[0] != n:
        got = "a scalar" if ds.ndim == 0 else f"{ds.shape[0]} rows"
        raise UserError(
            f"{path}: '{key}' has {got} but 'observations' has {n}; all arrays need the same length"
        )
    if per_row and int(np.prod(ds.shape[1:], dtype=np.int64)) != 1:
        raise UserError(f"{path}: '{key}' has shape {ds.shape}; expected ({n},) or ({n}, 1)")


def _flat(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0])


def read_d4rl(path: Path) -> RawSource:
    """Validate a D4RL-style / d3rlpy HDF5 file and describe it; data are streamed later, in chunks."""
    path = Path(path)
    with open_hdf5(path) as f, hdf5_errors(path):
        if is_minari_file(f):
            raise UserError(
                f"{path}: this is a Minari main_data.hdf5; pass its dataset folder ({path.parent.parent})"
            )
        for key in REQUIRED:
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise UserError(
                    f"{path}: missing required key '{key}' (a D4RL-style file needs {', '.join(REQUIRED)})"
                )
        obs = f["observations"]
        if obs.ndim == 0:
            raise UserError(f"{path}: 'observations' is a scalar; expected an array of shape (N, ...)")
        n = int(obs.shape[0])
        if n == 0:
            raise UserError(f"{path}: zero transitions (the arrays are empty)")
        if obs.dtype.kind not in "fiub":
            raise UserError(f"{path}: 'observations' has dtype {obs.dtype}; expected numbers")
        act = f["actions"]
        if obs.ndim == 3 and act.ndim == 2 and act.shape[1] == obs.shape[1] > 1 and act.dtype.kind in "iu":
            raise UserError(f"{path}: observations {obs.shape} and integer actions {act.shape} look like "
                            f"{obs.shape[1]} agents; a multi-agent file declares the attribute "
                            f"n_agents={obs.shape[1]} (docs/multiagent.md)")
        _row_count(f["actions"], n, "actions", path, per_row=False)
        _row_count(f["rewards"], n, "rewards", path, per_row=True)
        check_numeric(f["rewards"].dtype, "rewards", path)
        flags = [k for k in FLAG_KEYS if k in f]
        for key in flags:
            if not isinstance(f[key], h5py.Dataset):
                raise UserError(f"{path}: '{key}' is a group; expected a flag array of shape ({n},)")
            _row_count(f[key], n, key, path, per_row=True)
            if f[key].dtype.kind not in "biuf":
                raise UserError(f"{path}: '{key}' has dtype {f[key].dtype}; expected 0/1 flags")
        has_next = "next_observations" in f
        if has_next:
            nxt = f["next_observations"]
            if not isinstance(nxt, h5py.Dataset) or nxt.shape != obs.shape:
                shape = getattr(nxt, "shape", "a group")
                raise UserError(
                    f"{path}: 'next_observations' has shape {shape}; expected {obs.shape} like 'observations'"
                )
            check_numeric(nxt.dtype, "next_observations", path)

        meta = hdf5_metadata(f)
        fmt = (
            "d3rlpy" if ("episode_terminals" in f or "discrete_action" in f or "version" in meta) else "d4rl"
        )
        act = f["actions"]
        discrete = bool(meta.get("discrete_action", False)) or act.dtype.kind in "iu"
        if discrete and int(np.prod(act.shape[1:], dtype=np.int64)) != 1:
            raise UserError(
                f"{path}: discrete 'actions' have shape {act.shape}; expected ({n},) or ({n}, 1) indices"
                + ("; a multi-agent file declares the attribute n_agents (docs/multiagent.md)" if obs.ndim == 3 else "")
            )
        if act.dtype.kind not in "fiub":
            raise UserError(f"{path}: 'actions' has dtype {act.dtype}; expected numbers")

        # Counting pass over the flags only (a few bytes per row), plus the action range.
        kept = terminal_rows = 0
        lo = hi = None
        for s in range(0, n, _FLAG_CHUNK):
            e = min(s + _FLAG_CHUNK, n)
            for key in flags:  # 2, -1 or 0.5 would silently count as an episode end
                check_flags(np.asarray(f[key][s:e]), key, s, path)
            rows = episode_rows(f, flags, s, e, n, has_next)
            kept += int(rows["keep"].sum())
            terminal_rows += int(rows["tail"].sum())
            a = np.asarray(act[s:e])
            if discrete:
                a = _flat(a)
                if not whole_numbers(a):
                    raise UserError(f"{path}: 'actions' are marked discrete but hold non-integer values")
            a_lo, a_hi = nan_range(a)
            lo = a_lo if lo is None else np.minimum(lo, a_lo)
            hi = a_hi if hi is None else np.maximum(hi, a_hi)
        if kept == 0:
            raise UserError(
                f"{path}: zero transitions after dropping cut episode ends (every episode has one row "
                "and no 'next_observations'); add 'next_observations' to the file"
            )

        obs_space = gym.spaces.Box(
            -np.inf, np.inf, shape=tuple(obs.shape[1:]), dtype=storage_dtype_of(obs.dtype, tuple(obs.shape[1:]))
        )
        if discrete:
            if float(lo) < 0:
                raise UserError(f"{path}: discrete 'actions' contain negative indices ({float(lo):g})")
            n_act = _declared_actions(meta, path) or int(hi) + 1
            act_space: gym.Space = gym.spaces.Discrete(n_act)
        else:
            act_space = box_action_space(lo, hi, tuple(act.shape[1:]) or (1,), path)

    metadata = source_metadata(meta)
    if fmt == "d3rlpy":
        metadata["d3rlpy_version"] = meta.get("version")
    rules: dict[str, dict[str, Any]] = {}
    if terminal_rows:
        rules["d3rlpy1-terminal-observation"] = {"rows": terminal_rows, "rule": D3RLPY1_RULE}
    if n - kept - terminal_rows:
        rules["cut-last-row"] = {"rows": n - kept - terminal_rows, "rule": CUT_LAST_ROW_RULE}

    def iter_chunks(chunk_rows: int) -> Iterator[Chunk]:
        with open_hdf5(path) as f, hdf5_errors(path):
            for s in range(0, n, chunk_rows):
                chunk = _chunk(f, flags, s, min(s + chunk_rows, n), n, has_next, discrete)
                if len(chunk["reward"]):
                    yield chunk

    return RawSource(
        format=fmt,
        path=path,
        files=[path],
        name=path.stem,
        transitions=kept,
        source_rows=n,
        observation_space=obs_space,
        action_space=act_space,
        had_next_observations=has_next,
        iter_chunks=iter_chunks,
        metadata=metadata,
        rules=rules,
    )


def box_action_space(lo: Any, hi: Any, shape: tuple[int, ...], where: Path | str, key: str = "actions") -> gym.spaces.Box:
    """A continuous action space for a file that carries none: [-1, 1] when the data lie inside it
    (every MuJoCo task), otherwise the observed range (``lo``/``hi`` from :func:`nan_range`). Refuses actions
    that are not one flat vector per row and columns without a single number."""
    if len(shape) != 1:
        width = int(np.prod(shape, dtype=np.int64))
        raise UserError(f"{where}: continuous '{key}' have shape (N, {', '.join(map(str, shape))}); expected one "
                        f"flat vector per row, (N,) or (N, d): reshape them to (N, {width})")
    missing = np.isnan(np.asarray(lo, np.float64)) | np.isnan(np.asarray(hi, np.float64))
    if missing.any():
        column = int(np.flatnonzero(missing.reshape(-1))[0])
        raise UserError(f"{where}: '{key}' column {column} is NaN in every row, so it has no range (even with "
                        "--allow-nan); fix the data or drop the column")
    lo = np.broadcast_to(np.asarray(lo, np.float32), shape)
    hi = np.broadcast_to(np.asarray(hi, np.float32), shape)
    if np.all(lo >= -1) and np.all(hi <= 1):
        lo, hi = np.full(shape, -1.0, np.float32), np.full(shape, 1.0, np.float32)
    return gym.spaces.Box(lo, hi, shape=shape, dtype=np.float32)


def nan_range(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ``(min, max)`` over rows, ignoring NaN (NaN where a column has nothing else; no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": box_action_space names the column
        return np.nanmin(values, axis=0), np.nanmax(values, axis=0)


def _declared_actions(meta: dict[str, Any], path: Path) -> int | None:
    """The number of discrete actions a file's attributes declare (``action_size`` / ``n_actions``), else None."""
    for name in ("action_size", "n_actions"):
        value = pick(meta, name)
        if value is None:
            continue
        try:
            count = int(value)
            ok = count == float(value) and count >= 0
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise UserError(f"{path}: attribute '{name}' is {value!r}; expected the number of discrete actions "
                            "(an integer): fix or remove the attribute")
        return count or None
    return None


def storage_dtype_of(dtype: np.dtype, shape: tuple[int, ...]) -> Any:
    """The dtype observations of this source dtype and per-row shape are stored with (:func:`storage_dtype`)."""
    return storage_dtype(gym.spaces.Box(0, 1, shape=shape, dtype=dtype))


def float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def check_flags(values: np.ndarray, key: str, first_row: int, path: Path | str) -> None:
    """Refuse flags (episode ends, starts) that are not 0/1: 2, -1, 0.5 or b'False' would silently count as set."""
    flat = np.asarray(values).reshape(-1)
    if flat.dtype.kind not in "biuf":
        raise UserError(f"{path}: '{key}' has dtype {flat.dtype}; expected 0/1 flags")
    if flat.dtype.kind == "b":
        return
    bad = np.flatnonzero((flat != 0) & (flat != 1))
    if bad.size:
        raise UserError(f"{path}: '{key}' holds {flat[bad[0]].item()!r} at row {first_row + int(bad[0])}; "
                        "flags must be 0 or 1")


def episode_rows(f: h5py.File, flags: list[str], s: int, e: int, n: int, has_next: bool) -> dict[str, np.ndarray]:
    """Per-row bookkeeping for rows ``[s, e)``: which rows are kept and how each kept row ends.

    Reads one row before ``s`` and one past ``e`` (when there are): whether row ``i`` is the last kept
    row of its episode depends on whether row ``i + 1`` is kept, and whether it is a d3rlpy 1.x
    terminal-observation row depends on row ``i - 1``.
    """
    lo, stop = max(s - 1, 0), min(e + 1, n)
    term = _flat(np.asarray(f["terminals"][lo:stop])) != 0
    end = term.copy()
    for key in flags[1:]:
        end |= _flat(np.asarray(f[key][lo:stop])) != 0
    head = np.zeros(stop - lo, bool)  # d3rlpy 1.x: the terminated row whose next observation is row i + 1
    if "episode_terminals" in flags and not has_next:
        ept = _flat(np.asarray(f["episode_terminals"][lo:stop])) != 0
        head[:-1] = term[:-1] & ~ept[:-1] & term[1:] & ept[1:]
    tail = np.r_[False, head[:-1]]  # the terminal-observation row itself: not a transition
    index = np.arange(lo, stop)
    keep_all = (term | (~end & (index < n - 1))) & ~tail if not has_next else np.ones(stop - lo, bool)
    a, b = s - lo, e - lo
    keep = keep_all[a:b]
    keep_next = np.zeros(e - s, bool)
    keep_next[: stop - s - 1] = keep_all[a + 1 :]
    term, end, head = term[a:b], end[a:b], head[a:b]
    # Without next_observations a kept non-terminal row never has `end`, so this reduces to "its
    # successor was dropped"; with them, timeouts and the file's last row are the truncations.
    truncated = keep & ~term & (end | ~keep_next)
    return {
        "keep": keep,
        "terminated": term & keep,
        "truncated": truncated,
        "head": head & keep,
        "tail": tail[a:b],
    }


def _chunk(f: h5py.File, flags: list[str], s: int, e: int, n: int, has_next: bool, discrete: bool) -> Chunk:
    rows = episode_rows(f, flags, s, e, n, has_next)
    keep = rows["keep"]
    stop = min(e + 1, n)
    obs_ext = np.asarray(f["observations"][s:stop])
    obs = obs_ext[: e - s]
    index = np.arange(s, e)
    if has_next:
        nxt = np.asarray(f["next_observations"][s:e])
        nxt_row = None
    else:
        nxt = np.empty_like(obs)
        nxt[: stop - s - 1] = obs_ext[1:]
        nxt_row = index + 1
        if stop == e:  # the file's last row: no successor (it is dropped unless terminated)
            nxt[-1] = obs[-1]
            nxt_row[-1] = index[-1]
        # A terminated row's next observation is never bootstrapped (a copy of its own), except a
        # d3rlpy 1.x terminal row, whose next row holds the terminal observation.
        own = rows["terminated"] & ~rows["head"]
        nxt[own] = obs[own]
        nxt_row[own] = index[own]
    act = np.asarray(f["actions"][s:e])
    act = _flat(act).astype(np.int64) if discrete else act.reshape(e - s, -1) if act.ndim == 1 else act
    reward = _flat(np.asarray(f["rewards"][s:e]))
    chunk = {
        "observation": obs[keep],
        "next_observation": nxt[keep],
        "action": act[keep],
        "reward": reward[keep],
        "terminated": rows["terminated"][keep],
        "truncated": rows["truncated"][keep],
        "source_row": index[keep],
    }
    if nxt_row is not None:
        chunk["next_source_row"] = nxt_row[keep]
    return chunk
