"""Reader for Minari datasets on disk (HDF5 format, Minari 0.4 and 0.5 metadata). Never downloads.

A dataset folder is ``<root>/<namespace>/<name>-vN`` holding ``data/main_data.hdf5`` with one group
``episode_<i>`` per episode: ``observations`` (T+1 rows, a nested group for Dict spaces), ``actions``,
``rewards``, ``terminations``, ``truncations`` (T rows) and optional ``infos`` (ignored). Minari 0.5 keeps
the metadata (spaces, ``env_spec``, ``ref_min_score``/``ref_max_score``) in ``data/metadata.json``;
Minari 0.4 kept it in the HDF5 root attributes.

Row ``t`` of an episode becomes one transition: ``observation = observations[t]``, ``next_observation =
observations[t + 1]``, ``terminated = terminations[t]``, ``truncated = truncations[t] and not
terminations[t]``. An episode whose last step carries neither flag (recording stopped) ends ``truncated``.
Episodes are read one at a time (in slices for very long ones), never the whole file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from offrl.data.d4rl import check_flags, hdf5_errors, hdf5_value, open_hdf5
from offrl.data.source import (
    Chunk,
    RawSource,
    check_action_shape,
    check_numeric,
    check_space,
    leaf_specs,
    rechunk,
    storage_dtype,
    whole_numbers,
)
from offrl.errors import UserError

__all__ = [
    "read_minari",
    "minari_data_dir",
    "minari_root",
    "list_local_minari",
    "data_format",
    "minari_metadata",
    "minari_spaces",
]

_EPISODE = re.compile(r"^episode_(\d+)$")


def minari_root() -> Path:
    """``MINARI_DATASETS_PATH``, else Minari's default ``~/.minari/datasets``."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env).expanduser() if env else Path("~/.minari/datasets").expanduser()


def data_format(data_dir: Path) -> str | None:
    """``"arrow"`` when ``data/metadata.json`` says so (Minari's Arrow storage), ``"hdf5"`` when
    ``main_data.hdf5`` is there, else None."""
    meta = data_dir / "metadata.json"
    if meta.is_file():
        try:
            fmt = json.loads(meta.read_text()).get("data_format")
        except (OSError, ValueError, AttributeError):
            fmt = None
        if fmt == "arrow":
            return "arrow"
    return "hdf5" if (data_dir / "main_data.hdf5").is_file() else None


def minari_data_dir(path: Path) -> Path | None:
    """The ``data/`` folder of a Minari dataset given as ``.../<name>-vN`` or its ``data/``; else None."""
    for candidate in (path, path / "data"):
        if data_format(candidate) is not None:
            return candidate
    return None


def list_local_minari(root: Path | None = None) -> list[str]:
    """Ids of the Minari datasets under ``root`` (default :func:`minari_root`), e.g. ``D4RL/door/human-v2``."""
    root = root or minari_root()
    if not root.is_dir():
        return []
    found = {main.parent for main in root.glob("**/data/main_data.hdf5")}
    found |= {meta.parent for meta in root.glob("**/data/metadata.json") if data_format(meta.parent) == "arrow"}
    return sorted(data.parent.relative_to(root).as_posix() for data in found)


def _load_metadata(data_dir: Path, f: h5py.File) -> tuple[dict[str, Any], str]:
    meta_file = data_dir / "metadata.json"
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError) as err:
            raise UserError(
                f"{meta_file}: unreadable Minari metadata ({err}); re-create the dataset"
            ) from None
        if not isinstance(meta, dict):
            raise UserError(f"{meta_file}: Minari metadata must be a JSON object, got {type(meta).__name__}; "
                            "re-create the dataset")
        return meta, "0.5"
    return {k: hdf5_value(v) for k, v in f.attrs.items()}, "0.4"


def _space(meta: dict[str, Any], key: str, where: Path) -> gym.Space | None:
    raw = meta.get(key)
    if raw is None:
        return None
    from minari.serialization import deserialize_space

    try:
        return deserialize_space(raw if isinstance(raw, str) else json.dumps(raw))
    except Exception as err:  # minari raises NotImplementedError / KeyError / ValueError
        raise UserError(f"{where}: unsupported or unreadable {key} in the Minari metadata ({err})") from None


def minari_spaces(meta: dict[str, Any], where: Path) -> tuple[gym.Space | None, gym.Space | None]:
    """The observation and action spaces recorded in Minari metadata (None where absent)."""
    return _space(meta, "observation_space", where), _space(meta, "action_space", where)


def minari_metadata(meta: dict[str, Any], version: str) -> dict[str, Any]:
    """The offrl metadata (env, time limit, references, ids) of a Minari dataset's metadata."""
    spec = _env_spec(meta)
    return {
        "env_id": (spec or {}).get("id"),
        "env_spec": spec,
        "eval_env_spec": _env_spec({"env_spec": meta.get("eval_env_spec")}),
        "max_episode_steps": (spec or {}).get("max_episode_steps"),
        "ref_min_score": _float(meta.get("ref_min_score")),
        "ref_max_score": _float(meta.get("ref_max_score")),
        "dataset_id": meta.get("dataset_id"),
        "minari_version": meta.get("minari_version") or version,
    }


def _env_spec(meta: dict[str, Any]) -> dict[str, Any] | None:
    raw = meta.get("env_spec")
    if raw in (None, "", "None"):
        return None
    try:
        spec = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError):
        return None
    return spec if isinstance(spec, dict) else None


def _obs_leaves(
    node: h5py.Group | h5py.Dataset, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], h5py.Dataset]]:
    if isinstance(node, h5py.Dataset):
        return [(prefix, node)]
    out = []
    for key in node.keys():
        out.extend(_obs_leaves(node[key], (*prefix, key)))
    return out


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _inferred_space(node: h5py.Group | h5py.Dataset) -> gym.Space:
    if isinstance(node, h5py.Dataset):
        return gym.spaces.Box(-np.inf, np.inf, shape=tuple(node.shape[1:]), dtype=node.dtype)
    return gym.spaces.Dict({k: _inferred_space(node[k]) for k in node.keys()})


def _read_tree(
    node: h5py.Group | h5py.Dataset, paths: list[tuple[str, ...]], a: int, b: int, dtypes: dict
) -> Any:
    """Rows ``[a, b)`` of an observation dataset or nested group, as a nested dict of arrays."""
    if paths == [()]:
        return np.asarray(node[a:b]).astype(dtypes[()], copy=False)
    out: dict[str, Any] = {}
    for path in paths:
        target = out
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = np.asarray(_get(node, path)[a:b]).astype(dtypes[path], copy=False)
    return out


def read_minari(data_dir: Path, name: str, shown: Path | None = None) -> RawSource:
    """Validate a Minari dataset's ``data/`` folder and describe it; episodes are streamed later."""
    where = shown or data_dir.parent
    main = data_dir / "main_data.hdf5"
    with open_hdf5(main) as f, hdf5_errors(main):
        meta, version = _load_metadata(data_dir, f)
        if meta.get("data_format") not in (None, "hdf5"):
            raise UserError(
                f"{where}: Minari data format {meta.get('data_format')!r} is not supported; offrl reads the "
                "hdf5 and arrow formats"
            )
        episodes = sorted(
            ((int(m.group(1)), k) for k in f.keys() if (m := _EPISODE.match(k))), key=lambda item: item[0]
        )
        if not episodes:
            raise UserError(f"{where}: zero transitions (no episode_<i> groups in {main.name})")
        first = f[episodes[0][1]]
        if "observations" not in first:
            raise UserError(f"{where}: {episodes[0][1]} has no 'observations'; not a Minari dataset file")
        obs_space = _space(meta, "observation_space", where) or _inferred_space(first["observations"])
        act_space = _space(meta, "action_space", where)
        if act_space is None:
            acts = first["actions"]
            act_space = (
                gym.spaces.Discrete(int(np.max(acts[()])) + 1)
                if acts.dtype.kind in "iu"
                else gym.spaces.Box(-np.inf, np.inf, shape=tuple(acts.shape[1:]), dtype=np.float32)
            )
        check_space(obs_space, "observation", where)
        check_space(act_space, "action", where)
        if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) != 1:
            raise UserError(f"{where}: the action space {act_space} is not one flat vector per step; offrl reads "
                            "continuous actions of shape (d,): re-create the dataset with flattened actions")
        specs = leaf_specs(obs_space)
        obs_paths = [p for p, _, _ in specs]
        dtypes = {p: d for p, _, d in specs}
        want = {p: s for p, s, _ in specs}
        declared = _declared_dtypes(obs_space)

        # Validation pass: shapes only (HDF5 metadata), no data read.
        total = 0
        lengths = []
        for _, key in episodes:
            ep = f[key]
            for req in ("observations", "actions", "rewards", "terminations", "truncations"):
                if req not in ep:
                    raise UserError(f"{where}: {key} has no '{req}'; every Minari episode needs it")
            t = int(ep["rewards"].shape[0]) if ep["rewards"].ndim else 0
            leaves = dict(_obs_leaves(ep["observations"]))
            if set(leaves) != set(obs_paths):
                raise UserError(
                    f"{where}: {key} observation keys {sorted('/'.join(p) for p in leaves)} differ from the "
                    f"observation space's {sorted('/'.join(p) for p in obs_paths)}"
                )
            for path, ds in leaves.items():
                label = "/".join(path) or "observations"
                if tuple(ds.shape[1:]) != want[path]:
                    raise UserError(
                        f"{where}: {key} {label} have shape {tuple(ds.shape[1:])} but the dataset's observation "
                        f"shape is {want[path]}; every episode must have the same observation shape"
                    )
                check_numeric(ds.dtype, f"{key}/observations" + (f"/{label}" if path else ""), main)
                if not np.can_cast(ds.dtype, declared[path], "same_kind"):  # float data under uint8: all zeros
                    raise UserError(
                        f"{where}: {key} {label} are stored as {ds.dtype} but the observation space says "
                        f"{declared[path]}; the metadata contradicts the data: fix the metadata or re-create the dataset"
                    )
                if ds.shape[0] != t + 1:
                    raise UserError(
                        f"{where}: {key} has {ds.shape[0]} {label} rows for {t} steps; expected {t + 1}"
                    )
            for req in ("actions", "terminations", "truncations"):
                if ep[req].ndim == 0 or ep[req].shape[0] != t:
                    raise UserError(f"{where}: {key} '{req}' has {ep[req].shape} rows but 'rewards' has {t}")
            check_action_shape(act_space, ep["actions"].shape[1:], main, f"{key} actions")
            for req in ("actions", "rewards"):
                check_numeric(ep[req].dtype, f"{key}/{req}", main)
            total += t
            lengths.append(t)
        if total == 0:
            raise UserError(f"{where}: zero transitions (every episode is empty)")

    metadata = minari_metadata(meta, version)
    discrete = isinstance(act_space, gym.spaces.Discrete)
    act_dtype = storage_dtype(act_space)
    start = int(act_space.start) if discrete else 0

    def pieces(chunk_rows: int) -> Iterator[Chunk]:
        with open_hdf5(main) as f, hdf5_errors(main):
            for _, key in episodes:
                ep = f[key]
                t = int(ep["rewards"].shape[0])
                for a in range(0, t, chunk_rows):
                    b = min(a + chunk_rows, t)
                    obs = _read_tree(ep["observations"], obs_paths, a, b + 1, dtypes)
                    flags = {req: np.asarray(ep[req][a:b]).reshape(b - a) for req in ("terminations", "truncations")}
                    for req, values in flags.items():
                        check_flags(values, f"{key}/{req}", a, main)
                    term = flags["terminations"] != 0
                    trunc = (flags["truncations"] != 0) & ~term
                    if b == t and not (term[-1] or trunc[-1]):
                        trunc[-1] = True  # recording stopped mid-episode: a cut, not a terminal
                    act = np.asarray(ep["actions"][a:b])
                    if discrete and not whole_numbers(act):
                        raise UserError(f"{main}: {key}/actions hold non-integer values under the Discrete action "
                                        "space; the action space contradicts the data")
                    act = (
                        (act.reshape(b - a).astype(np.int64) - start)
                        if discrete
                        else act.astype(act_dtype, copy=False)
                    )
                    piece = {
                        "observation": _slice(obs, 0, b - a),
                        "next_observation": _slice(obs, 1, b - a + 1),
                        "action": act,
                        "reward": np.asarray(ep["rewards"][a:b], dtype=np.float64).reshape(b - a),
                        "terminated": term,
                        "truncated": trunc,
                    }
                    yield piece

    def iter_chunks(chunk_rows: int) -> Iterator[Chunk]:
        return rechunk(pieces(chunk_rows), chunk_rows)

    return RawSource(
        format="minari",
        path=data_dir.parent,
        files=[main] + ([data_dir / "metadata.json"] if (data_dir / "metadata.json").is_file() else []),
        name=name,
        transitions=total,
        source_rows=total,
        observation_space=obs_space,
        action_space=act_space,
        had_next_observations=True,
        iter_chunks=iter_chunks,
        metadata=metadata,
    )


def _declared_dtypes(space: gym.Space, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.dtype]:
    """The dtype each observation leaf's space declares (not the one it is stored with), by key path."""
    if isinstance(space, gym.spaces.Dict):
        out: dict[tuple[str, ...], np.dtype] = {}
        for key, sub in space.spaces.items():
            out.update(_declared_dtypes(sub, (*prefix, str(key))))
        return out
    return {prefix: np.dtype(space.dtype)}


def _slice(tree: Any, a: int, b: int) -> Any:
    if isinstance(tree, dict):
        return {k: _slice(v, a, b) for k, v in tree.items()}
    return tree[a:b]


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
