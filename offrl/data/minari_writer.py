"""Write episodes as a Minari 0.5 dataset, byte-for-byte reproducibly.

Minari's own writer (``DataCollector`` / ``create_dataset_from_buffers``) stores uncompressed, resizable
arrays and stamps the running Minari version into the metadata; the bundled datasets must instead be
small (gzip) and regenerate to identical bytes. So this module writes the same layout with h5py:

``<dataset>/data/main_data.hdf5``: one group ``episode_<i>`` per episode with ``observations`` (T+1),
``actions``, ``rewards``, ``terminations``, ``truncations`` (T) and attributes ``id``, ``seed``,
``total_steps``; ``<dataset>/data/metadata.json``: spaces, ``env_spec``, counts, references, recipe.

Reproducibility: HDF5 records object modification times unless told not to, so every dataset is created
with ``track_times=False`` and the file is opened with a fixed format version; the JSON is written with
sorted keys. ``minari.load_dataset`` reads the result (a test checks it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
from minari.serialization import serialize_space

__all__ = ["MINARI_FORMAT_VERSION", "Episode", "write_minari_dataset"]

# The oldest Minari release whose on-disk layout (metadata.json beside main_data.hdf5) these files follow;
# every Minari 0.5.x lists it as supported, so the bundled files load with any of them.
MINARI_FORMAT_VERSION = "0.5.0"


@dataclass
class Episode:
    """One recorded episode in Minari's convention: ``observations`` has one row more than the rest."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    seed: int | None = None

    def __post_init__(self) -> None:
        steps = len(self.actions)
        if len(self.observations) != steps + 1:
            raise ValueError(f"observations must have T+1={steps + 1} rows, got {len(self.observations)}")
        for key in ("rewards", "terminations", "truncations"):
            if len(getattr(self, key)) != steps:
                raise ValueError(f"{key} must have T={steps} rows, got {len(getattr(self, key))}")

    @property
    def total_steps(self) -> int:
        return len(self.actions)


def _write_array(group: h5py.Group, key: str, data: np.ndarray, compression_level: int) -> None:
    # One chunk per array (episodes are short); shuffle + gzip roughly halves float data.
    group.create_dataset(
        key,
        data=data,
        chunks=data.shape if data.size else None,
        compression="gzip" if data.size else None,
        compression_opts=compression_level if data.size else None,
        shuffle=bool(data.size),
        track_times=False,
    )


def write_minari_dataset(
    dataset_dir: str | os.PathLike[str],
    episodes: Iterable[Episode],
    *,
    dataset_id: str,
    env_spec: gym.envs.registration.EnvSpec,
    observation_space: gym.Space,
    action_space: gym.Space,
    extra_metadata: Mapping[str, Any] | None = None,
    compression_level: int = 6,
) -> Path:
    """Write ``episodes`` as the Minari dataset ``dataset_dir`` (``.../<name>-vN``) and return that path.

    The dataset is built in a temporary sibling folder and renamed into place, replacing an existing
    dataset only once the new one is complete.
    """
    dataset_dir = Path(dataset_dir)
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = dataset_dir.with_name(f".{dataset_dir.name}.tmp-{os.getpid()}")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    data_dir = tmp_dir / "data"
    data_dir.mkdir(parents=True)
    try:
        total_steps = 0
        total_episodes = 0
        # libver pins the superblock/object-header format, so bytes do not depend on h5py's defaults.
        with h5py.File(data_dir / "main_data.hdf5", "w", libver=("v110", "v110"), track_order=True) as f:
            for index, episode in enumerate(episodes):
                group = f.create_group(f"episode_{index}", track_order=True)
                group.attrs["id"] = index
                if episode.seed is not None:
                    group.attrs["seed"] = int(episode.seed)
                group.attrs["total_steps"] = episode.total_steps
                _write_array(group, "observations", np.asarray(episode.observations), compression_level)
                _write_array(group, "actions", np.asarray(episode.actions), compression_level)
                _write_array(
                    group, "rewards", np.asarray(episode.rewards, dtype=np.float64), compression_level
                )
                _write_array(
                    group, "terminations", np.asarray(episode.terminations, dtype=bool), compression_level
                )
                _write_array(
                    group, "truncations", np.asarray(episode.truncations, dtype=bool), compression_level
                )
                total_steps += episode.total_steps
                total_episodes += 1
        size_mb = float(np.round((data_dir / "main_data.hdf5").stat().st_size / 1e6, 1))
        metadata: dict[str, Any] = {
            "dataset_id": dataset_id,
            "minari_version": MINARI_FORMAT_VERSION,
            "data_format": "hdf5",
            "total_episodes": total_episodes,
            "total_steps": total_steps,
            "dataset_size": size_mb,
            "observation_space": serialize_space(observation_space),
            "action_space": serialize_space(action_space),
            "env_spec": env_spec.to_json(),
        }
        metadata.update(extra_metadata or {})
        text = json.dumps(metadata, sort_keys=True, indent=1) + "\n"
        (data_dir / "metadata.json").write_text(text, encoding="utf-8")

        # Swap into place: the old dataset (if any) is moved aside first, then removed.
        old_dir = dataset_dir.with_name(f".{dataset_dir.name}.old-{os.getpid()}")
        if dataset_dir.exists():
            dataset_dir.rename(old_dir)
        tmp_dir.rename(dataset_dir)
        if old_dir.exists():
            shutil.rmtree(old_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return dataset_dir
