"""Reader for Minari datasets stored as Apache Arrow (``data_format: "arrow"``, Minari >= 0.5). Never downloads.

Layout: ``data/metadata.json`` (spaces, ``env_spec``, references, as for HDF5) and one folder
``data/<episode id>/`` per episode holding ``*.arrow`` IPC files with the columns ``observations``
(T+1 rows; a struct for Dict spaces; fixed-size lists for Box / MultiBinary / MultiDiscrete; JPEG bytes
for images when ``jpeg_encoding``), ``actions``, ``rewards``, ``terminations``, ``truncations`` (padded
to T+1 rows; the last row is padding) and optional ``infos`` (ignored).

The rows become transitions exactly as in :mod:`offrl.data.minari` (the HDF5 reader): the same data
in either format converts to identical TED rows. Episodes are read one at a time through a memory map,
so memory stays bounded by the largest episode. Needs ``pyarrow`` (``pip install "offrl[arrow]"``).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from offrl.data.d4rl import check_flags
from offrl.data.minari import minari_metadata, minari_spaces
from offrl.data.source import (
    Chunk,
    RawSource,
    check_action_shape,
    check_numeric,
    check_space,
    leaf_specs,
    rechunk,
    whole_numbers,
)
from offrl.errors import UserError

__all__ = ["read_minari_arrow", "arrow_files"]

COLUMNS = ("observations", "actions", "rewards", "terminations", "truncations")


def _episode_dirs(data_dir: Path) -> list[Path]:
    return sorted(
        (p for p in data_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )


def arrow_files(data_dir: Path) -> list[Path]:
    """Every file whose bytes make up the dataset: the metadata and each episode's ``.arrow`` files."""
    files = [data_dir / "metadata.json"]
    for ep in _episode_dirs(data_dir):
        files.extend(sorted(ep.glob("*.arrow")))
    return files


def _pyarrow(where: Path) -> Any:
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401
    except ImportError:
        raise UserError(
            f'{where}: this Minari dataset is stored as Apache Arrow (data_format "arrow"), which needs '
            'pyarrow: pip install "offrl[arrow]"'
        ) from None
    return pa


def _read_episode(pa: Any, ep_dir: Path, where: Path) -> Any:
    """One episode's table (memory-mapped; columns are copied out only when decoded)."""
    files = sorted(ep_dir.glob("*.arrow"))
    if not files:
        raise UserError(f"{where}: episode {ep_dir.name} has no .arrow data; re-create the dataset")
    try:
        tables = [pa.ipc.open_file(pa.memory_map(str(f), "r")).read_all() for f in files]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    except (pa.ArrowException, OSError, ValueError) as err:
        text = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"{where}: truncated or corrupt Arrow data in episode {ep_dir.name} ({text}); re-create the dataset"
        ) from None


def _check_actions(pa: Any, column_type: Any, act_space: gym.Space, ep_dir: Path, where: Path) -> None:
    """The actions column holds as many values per step as the action space has (one for Discrete)."""
    width = column_type.list_size if pa.types.is_fixed_size_list(column_type) else 1
    expected = act_space.shape if isinstance(act_space, gym.spaces.Box) else ()
    if width != int(np.prod(expected, dtype=np.int64)):
        files = sorted(ep_dir.glob("*.arrow"))
        check_action_shape(act_space, (width,) if pa.types.is_fixed_size_list(column_type) else (),
                           files[0] if files else ep_dir, "actions")


def _field(column: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        column = column.field(key)
    return column


def _decode(pa: Any, column: Any, shape: tuple[int, ...], dtype: np.dtype, rows: int) -> np.ndarray:
    """An Arrow column (fixed-size lists, scalars or JPEG bytes) → ``[rows, *shape]`` numpy."""
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        from PIL import Image  # minari's arrow storage writes images with Pillow

        frames = [np.asarray(Image.open(io.BytesIO(v.as_py()))) for v in column]
        out = np.stack(frames) if frames else np.zeros((0, *shape), dtype)
    elif pa.types.is_fixed_size_list(column.type):
        out = column.flatten().to_numpy(zero_copy_only=False)
    else:
        out = column.to_numpy(zero_copy_only=False)
    return np.asarray(out).reshape(rows, *shape).astype(dtype, copy=False)


def read_minari_arrow(
    data_dir: Path, name: str, meta: dict[str, Any], shown: Path | None = None
) -> RawSource:
    """Validate an Arrow Minari dataset's ``data/`` folder (metadata already parsed) and describe it."""
    where = shown or data_dir.parent
    pa = _pyarrow(where)
    obs_space, act_space = minari_spaces(meta, where)
    if obs_space is None or act_space is None:
        raise UserError(
            f"{where}: Arrow Minari metadata without observation_space/action_space; re-create it"
        )
    check_space(obs_space, "observation", where)
    check_space(act_space, "action", where)
    specs = leaf_specs(obs_space)
    episodes = _episode_dirs(data_dir)
    if not episodes:
        raise UserError(f"{where}: zero transitions (no episode folders in {data_dir})")
    lengths = []
    for ep in episodes:
        table = _read_episode(pa, ep, where)
        for col in COLUMNS:
            if col not in table.column_names:
                raise UserError(f"{where}: episode {ep.name} has no '{col}'; every Minari episode needs it")
        if table.num_rows < 1:
            raise UserError(f"{where}: episode {ep.name} has no rows")
        obs_col = table.column("observations").combine_chunks()
        for path, shape, _ in specs:
            try:
                leaf = _field(obs_col, path)
            except (KeyError, pa.ArrowException) as err:
                raise UserError(
                    f"{where}: episode {ep.name} observations lack {'/'.join(path)} ({err})"
                ) from None
            width = getattr(leaf.type, "list_size", None)
            if width is not None and width != int(np.prod(shape, dtype=np.int64)):
                raise UserError(
                    f"{where}: episode {ep.name} observations have {width} values per row but the dataset's "
                    f"observation shape is {shape}; every episode must have the same observation shape"
                )
        _check_actions(pa, table.column("actions").type, act_space, ep, where)
        lengths.append(table.num_rows - 1)
    total = sum(lengths)
    if total == 0:
        raise UserError(f"{where}: zero transitions (every episode is empty)")
    discrete = isinstance(act_space, gym.spaces.Discrete)
    start = int(act_space.start) if discrete else 0
    act_shape = () if discrete else tuple(act_space.shape)

    def pieces(chunk_rows: int) -> Iterator[Chunk]:
        for ep, t in zip(episodes, lengths, strict=True):
            if t == 0:
                continue
            table = _read_episode(pa, ep, where)
            obs_col = table.column("observations").combine_chunks()
            obs = {p: _decode(pa, _field(obs_col, p), s, d, t + 1) for p, s, d in specs}
            act = _decode(
                pa, table.column("actions").combine_chunks(), act_shape, np.dtype(np.float64), t + 1
            )[:t]
            if discrete and not whole_numbers(act):
                raise UserError(f"{where}: episode {ep.name} actions hold non-integer values under the Discrete "
                                "action space; the action space contradicts the data")
            act = (act.astype(np.int64) - start) if discrete else act.astype(np.float32)
            cols = {c: table.column(c).to_numpy()[:t] for c in ("rewards", "terminations", "truncations")}
            check_numeric(cols["rewards"].dtype, f"{ep.name}/rewards", where)
            for flag in ("terminations", "truncations"):
                check_flags(cols[flag], f"{ep.name}/{flag}", 0, where)
            term = cols["terminations"] != 0
            trunc = (cols["truncations"] != 0) & ~term
            if not (term[-1] or trunc[-1]):
                trunc[-1] = True  # recording stopped mid-episode: a cut, not a terminal
            for a in range(0, t, chunk_rows):
                b = min(a + chunk_rows, t)
                yield (
                    {
                        "observation": _tree(obs, a, b),
                        "next_observation": _tree(obs, a + 1, b + 1),
                        "action": act[a:b],
                        "reward": np.asarray(cols["rewards"][a:b], np.float64),
                        "terminated": term[a:b],
                        "truncated": trunc[a:b],
                    }
                )

    def iter_chunks(chunk_rows: int) -> Iterator[Chunk]:
        return rechunk(pieces(chunk_rows), chunk_rows)

    return RawSource(
        format="minari-arrow",
        path=data_dir.parent,
        files=arrow_files(data_dir),
        name=name,
        transitions=total,
        source_rows=total,
        observation_space=obs_space,
        action_space=act_space,
        had_next_observations=True,
        iter_chunks=iter_chunks,
        metadata=minari_metadata(meta, "0.5"),
    )


def _tree(leaves: dict[tuple[str, ...], np.ndarray], a: int, b: int) -> Any:
    """Rows ``[a, b)`` of the decoded leaves, as an array (one leaf at path ``()``) or a nested dict."""
    if list(leaves) == [()]:
        return leaves[()][a:b]
    out: dict[str, Any] = {}
    for path, arr in leaves.items():
        target = out
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = arr[a:b]
    return out
