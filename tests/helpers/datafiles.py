"""Writers of small, real dataset files for the data-layer tests (h5py for D4RL/d3rlpy, minari for Minari)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np


def episodes_layout(lengths: list[int], *, terminal: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(terminals, timeouts) flags for consecutive episodes of these lengths."""
    n = sum(lengths)
    terms, touts = np.zeros(n, bool), np.zeros(n, bool)
    end = -1
    for length, term in zip(lengths, terminal, strict=True):
        end += length
        (terms if term else touts)[end] = True
    return terms, touts


def write_d4rl(
    path: Path,
    *,
    lengths: tuple[int, ...] = (10, 7, 13),
    terminal: tuple[bool, ...] = (False, True, False),
    obs_dim: int = 3,
    act_dim: int = 2,
    next_observations: bool = False,
    seed: int = 0,
    flag_shape: str = "(N,)",
    flag_dtype: Any = bool,
    with_timeouts: bool = True,
    overrides: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    attrs: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """A D4RL-style file; returns the arrays written. ``obs[i] = i`` in column 0 makes rows traceable."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    obs = rng.standard_normal((n + 1, obs_dim)).astype(np.float32)
    obs[:, 0] = np.arange(n + 1)
    terms, touts = episodes_layout(list(lengths), terminal=list(terminal))
    arrays: dict[str, Any] = {
        "observations": obs[:n],
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        "rewards": rng.standard_normal(n).astype(np.float32),
        "terminals": terms,
    }
    if with_timeouts:
        arrays["timeouts"] = touts
    if next_observations:
        arrays["next_observations"] = obs[1 : n + 1]
    for key in ("terminals", "timeouts", "rewards"):
        if key in arrays:
            value = arrays[key].astype(flag_dtype if key != "rewards" else np.float32)
            arrays[key] = value.reshape(n, 1) if flag_shape == "(N,1)" else value
    arrays.update(overrides or {})
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            if key not in drop:
                f.create_dataset(key, data=value)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return arrays


def write_minari(
    dataset_id: str,
    episodes: list[dict[str, Any]],
    *,
    observation_space: gym.Space,
    action_space: gym.Space,
    env: str | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    data_format: str = "hdf5",
) -> Path:
    """A Minari 0.5 dataset (``hdf5`` or ``arrow``) under $MINARI_DATASETS_PATH, written by minari itself;
    returns its folder."""
    from minari import create_dataset_from_buffers
    from minari.data_collector.episode_buffer import EpisodeBuffer

    buffers = [
        EpisodeBuffer(
            id=i,
            observations=ep["observations"],
            actions=ep["actions"],
            rewards=ep["rewards"],
            terminations=ep["terminations"],
            truncations=ep["truncations"],
            infos={},
        )
        for i, ep in enumerate(episodes)
    ]
    kwargs: dict[str, Any] = {}
    if ref_max_score is not None:
        kwargs.update(ref_min_score=ref_min_score, ref_max_score=ref_max_score)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env,
            observation_space=observation_space,
            action_space=action_space,
            algorithm_name="test",
            data_format=data_format,
            **kwargs,
        )
    return Path(os.environ["MINARI_DATASETS_PATH"]) / dataset_id


def cartpole_episodes(
    lengths: tuple[int, ...] = (5, 8, 4), *, seed: int = 0, last_truncated: bool = True
) -> list[dict[str, Any]]:
    """Random CartPole-shaped episodes: obs (T+1, 4), discrete actions, the last one truncated."""
    rng = np.random.default_rng(seed)
    eps = []
    for k, t in enumerate(lengths):
        term = np.zeros(t, bool)
        trunc = np.zeros(t, bool)
        if last_truncated and k == len(lengths) - 1:
            trunc[-1] = True
        else:
            term[-1] = True
        obs = rng.standard_normal((t + 1, 4)).astype(np.float32)
        obs[:, 0] = 100 * k + np.arange(t + 1)
        eps.append(
            {
                "observations": obs,
                "actions": rng.integers(0, 2, t),
                "rewards": np.ones(t),
                "terminations": term,
                "truncations": trunc,
            }
        )
    return eps


def to_minari_04(folder: Path) -> None:
    """Rewrite a Minari 0.5 dataset the 0.4 way: metadata in the HDF5 root attributes, no metadata.json."""
    meta_file = folder / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    with h5py.File(folder / "data" / "main_data.hdf5", "a") as f:
        for key, value in meta.items():
            if value is not None:
                f.attrs[key] = value if not isinstance(value, (list, dict)) else json.dumps(value)
    meta_file.unlink()
