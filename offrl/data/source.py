"""What a reader hands the converter: a described source and an iterator of transition chunks.

Readers (:mod:`offrl.data.d4rl`, :mod:`offrl.data.minari`) open a file or folder, validate it, count the
transitions the conversion will keep, and then stream them in chunks of at most ``chunk_rows`` rows.
A chunk is a plain dict of numpy arrays, already in output order:

``observation`` / ``next_observation`` (an array, or a nested dict of arrays for Dict spaces),
``action``, ``reward`` (float, ``[n]``), ``terminated`` and ``truncated`` (bool, ``[n]``). A row with
``terminated | truncated`` is the last row of its episode in the converted data. Optional
``source_row`` / ``next_source_row`` (int, ``[n]``): the file rows a transition and its next
observation came from, so that errors name the file's row. A multi-agent source
(:mod:`offrl.data.marl_hdf5`, ``RawSource.multiagent`` set) has agent axes: ``observation`` /
``next_observation`` ``[n, agents, obs]``, ``action`` ``[n, agents]``, ``agent_reward`` ``[n, agents]``
(``reward`` is their mean, the team reward), optional ``state`` / ``next_state`` and ``action_mask`` /
``next_action_mask``.

The converter adds ``episode``, ``step``, ``done`` and ``mc_return`` and writes the TED layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from offrl.errors import UserError

__all__ = ["Chunk", "RawSource", "check_action_shape", "check_numeric", "check_space", "leaf_specs", "storage_dtype",
           "tree_map", "whole_numbers"]

Chunk = dict[str, Any]


@dataclass
class RawSource:
    """A validated dataset source, ready to be streamed into the converter."""

    format: str  # the reader: "d4rl", "d3rlpy", "d3rlpy2", "minari", "minari-arrow", "npz" or "marl-hdf5"
    path: Path  # what the user pointed at (file, or the Minari dataset folder)
    files: list[Path]  # files whose bytes make up the content digest
    name: str  # id or file stem
    transitions: int  # rows the conversion keeps (after the cut-last-row rule)
    source_rows: int  # rows in the source
    observation_space: gym.Space
    action_space: gym.Space
    had_next_observations: bool
    iter_chunks: Callable[[int], Iterator[Chunk]]
    metadata: dict[str, Any] = field(default_factory=dict)  # env_id, env_spec, ref_*_score, ...
    # Row rules the reader applied: name -> {"rows": rows touched, "rule": what it does}.
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Multi-agent sources (offrl.data.marl_hdf5): n_agents, observation_shape, n_actions, state_dim,
    # action_masks, reward ("team" | "per-agent"); chunks then carry agent axes (see the reader). None: one agent.
    multiagent: dict[str, Any] | None = None

    @property
    def dropped_rows(self) -> int:
        return self.source_rows - self.transitions


def check_space(space: gym.Space, what: str, where: Path | str) -> None:
    """Raise a UserError for spaces the TED layout cannot hold (Text, Graph, Tuple, Sequence, ...)."""
    if isinstance(space, gym.spaces.Dict):
        for key, sub in space.spaces.items():
            check_space(sub, f"{what}[{key!r}]", where)
        return
    if what.startswith("action") and not isinstance(space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise UserError(
            f"{where}: unsupported {what} space {type(space).__name__}; offrl supports Box (continuous) and "
            "Discrete actions"
        )
    if not isinstance(
        space, (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiBinary, gym.spaces.MultiDiscrete)
    ):
        raise UserError(
            f"{where}: unsupported {what} space {type(space).__name__}; offrl supports Box, Discrete, "
            "MultiBinary, MultiDiscrete and Dict of those"
        )


def check_action_shape(space: gym.Space, shape: tuple[int, ...], where: Path | str, what: str) -> None:
    """Refuse actions whose per-step ``shape`` contradicts the declared action ``space`` (a Box of shape (2,)
    over actions of width 1 would be broadcast or reshaped into wrong values). A width-1 column and a
    scalar are the same thing; a Discrete action is one index per step."""
    shape = tuple(int(d) for d in shape)
    expected = tuple(space.shape) if isinstance(space, gym.spaces.Box) else ()
    if shape == expected or {shape, expected} == {(), (1,)}:
        return
    declared = "one index per step: shape ()" if isinstance(space, gym.spaces.Discrete) else f"shape {expected}"
    raise UserError(f"{where}: {what} have shape {shape} per step but the action_space {space} has {declared}; "
                    "the action_space contradicts the data: fix the metadata or re-create the dataset")


def check_numeric(dtype: Any, key: str, where: Path | str) -> None:
    """Refuse an array that does not hold real numbers (bool, int, uint, float): strings would be parsed or fail
    mid-conversion, complex numbers would lose their imaginary part."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise UserError(f"{where}: '{key}' has dtype {dtype}; expected real numbers (bool, int or float): "
                        "fix or re-create the file")


def whole_numbers(values: np.ndarray) -> bool:
    """Whether ``values`` can be discrete action indices: integers, or floats that are all finite whole numbers."""
    return values.dtype.kind != "f" or bool(np.all(np.isfinite(values) & (values == np.round(values))))


def storage_dtype(space: gym.Space) -> np.dtype:
    """dtype a leaf of this space is stored with: float32 for floating Box and for integer or bool vectors (the
    networks are float32), int64 for indices, else its own (uint8 images stay as they are)."""
    if isinstance(space, gym.spaces.Discrete):
        return np.dtype(np.int64)
    dtype = np.dtype(space.dtype)
    if dtype.kind == "f" or (isinstance(space, gym.spaces.Box) and len(space.shape) <= 1 and dtype.kind in "biu"):
        return np.dtype(np.float32)
    if dtype.kind == "b":
        return np.dtype(np.bool_)
    return dtype


def leaf_specs(
    space: gym.Space, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], tuple[int, ...], np.dtype]]:
    """Flatten a (possibly nested Dict) space into ``(key path, per-row shape, storage dtype)`` leaves."""
    if isinstance(space, gym.spaces.Dict):
        out = []
        for key, sub in space.spaces.items():
            out.extend(leaf_specs(sub, (*prefix, str(key))))
        return out
    shape = () if isinstance(space, gym.spaces.Discrete) else tuple(int(s) for s in space.shape)
    return [(prefix, shape, storage_dtype(space))]


def tree_map(fn: Callable[[np.ndarray], Any], tree: Any) -> Any:
    """Apply ``fn`` to every array of a nested dict (or to a bare array)."""
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    return fn(tree)


def tree_leaves(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Yield ``(key path, array)`` for every array of a nested dict (a bare array has path ``()``)."""
    if isinstance(tree, dict):
        for key, sub in tree.items():
            yield from tree_leaves(sub, (*prefix, key))
    else:
        yield prefix, tree


def rechunk(pieces: Iterable[Chunk], chunk_rows: int) -> Iterator[Chunk]:
    """Episode pieces (each at most ``chunk_rows`` rows) gathered into chunks of at least ``chunk_rows`` rows
    (the last may be shorter), so a reader yields the converter's unit whatever its episodes' lengths."""
    pending: list[Chunk] = []
    rows = 0
    for piece in pieces:
        pending.append(piece)
        rows += len(piece["reward"])
        if rows >= chunk_rows:
            yield tree_concat(pending) if len(pending) > 1 else pending[0]
            pending, rows = [], 0
    if pending:
        yield tree_concat(pending) if len(pending) > 1 else pending[0]


def tree_concat(trees: list[Any]) -> Any:
    """Concatenate a list of equally structured nested dicts of arrays along the first axis."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: tree_concat([t[k] for t in trees]) for k in first}
    return np.concatenate(trees, axis=0)
