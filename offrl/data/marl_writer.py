"""Write episodes in offrl's multi-agent HDF5 layout (:mod:`offrl.data.marl_hdf5`), byte-for-byte
reproducibly and atomically.

Per-step arrays are the episodes' concatenation: ``observations`` / ``next_observations`` [T, n, obs],
``state`` / ``next_state`` [T, S], ``actions`` [T, n], ``rewards`` [T, n] (per agent), ``terminals`` and
``timeouts`` [T]; attributes hold ``n_agents``, ``n_actions`` and the metadata (scalars as they are,
anything else as JSON text). Datasets are created with ``track_times=False`` and the file with a fixed
format version, so the same episodes give the same bytes; the file is written to a temporary sibling
and renamed into place.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = ["write_marl_hdf5"]


def _attr(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str, np.generic)):
        return value
    return json.dumps(value, sort_keys=True)


def write_marl_hdf5(path: str | os.PathLike[str], episodes: Iterable[Any], *, n_actions: int,
                    attrs: Mapping[str, Any]) -> Path:
    """Write ``episodes`` (objects with ``observations`` / ``state`` (T + 1 rows), ``actions``, ``rewards``,
    ``terminals``, ``timeouts``: :class:`offrl.datagen.marl_policies.MarlEpisode`) to ``path``."""
    eps = list(episodes)
    if not eps:
        raise ValueError("no episodes to write")
    cat = lambda get: np.concatenate([get(e) for e in eps])  # noqa: E731
    arrays = {
        "observations": cat(lambda e: e.observations[:-1]).astype(np.float32),
        "next_observations": cat(lambda e: e.observations[1:]).astype(np.float32),
        "state": cat(lambda e: e.state[:-1]).astype(np.float32),
        "next_state": cat(lambda e: e.state[1:]).astype(np.float32),
        "actions": cat(lambda e: e.actions).astype(np.int64),
        "rewards": cat(lambda e: e.rewards).astype(np.float32),
        "terminals": cat(lambda e: e.terminals).astype(np.bool_),
        "timeouts": cat(lambda e: e.timeouts).astype(np.bool_),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with h5py.File(tmp, "w", libver=("earliest", "v110"), track_order=False) as f:
            f.attrs["n_agents"] = int(arrays["observations"].shape[1])
            f.attrs["n_actions"] = int(n_actions)
            for key in sorted(attrs):
                if attrs[key] is not None:
                    f.attrs[key] = _attr(attrs[key])
            for key, value in arrays.items():
                f.create_dataset(key, data=value, compression="gzip", compression_opts=4, shuffle=True,
                                 track_times=False, chunks=(min(len(value), 4096), *value.shape[1:]))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
