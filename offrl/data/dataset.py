"""``load_dataset``: any D4RL-style / d3rlpy HDF5 file, Minari folder or id, or bundled dataset → an
:class:`OfflineDataset` over a cached, memmapped TED TensorDict.

Resolution order for ``source``: an existing path (HDF5 file, Minari ``<name>-vN`` folder or its
``data/``); then a bundled id under :func:`offrl.data.catalog.bundled_root` (``offrl/pendulum/medium-v0``);
then a Minari id under ``MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``). Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from offrl.data import catalog, envs, references
from offrl.data.convert import build_cache, cache_root
from offrl.data.d4rl import hdf5_errors, is_minari_file, open_hdf5, read_d4rl
from offrl.data.minari import minari_data_dir, minari_root, read_minari
from offrl.data.source import RawSource
from offrl.errors import UserError

if TYPE_CHECKING:  # torch and torchrl load lazily: validation errors should not wait for them
    import torch
    from tensordict import TensorDict
    from torchrl.data import TensorDictReplayBuffer

    from offrl.data.layout import RowLayout

__all__ = ["DatasetInfo", "OfflineDataset", "load_dataset", "resolve_source", "ResolvedSource"]


@dataclass
class DatasetInfo:
    """What ``offrl datasets info`` shows: shapes, spaces, episode and reward statistics, references."""

    name: str
    format: str
    transitions: int
    episodes: int
    observation_shape: Any
    observation_dtype: Any
    action_space: dict[str, Any]
    terminated: int
    truncated: int
    episode_length: dict[str, float]
    episode_return: dict[str, float]
    reward: dict[str, float]
    env_id: str | None
    max_episode_steps: int | None
    ref_min_score: float | None
    ref_max_score: float | None
    ref_source: str | None
    warnings: list[str]
    cache: str | None
    digest: str
    gamma: float
    source: str
    dropped_rows: int = 0
    env_source: str | None = None
    env_note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def discrete(self) -> bool:
        return self.action_space.get("kind") == "discrete"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready payload of ``offrl datasets info --json``."""
        out = asdict(self)
        out.update(out.pop("extra"))
        return out


@dataclass
class ResolvedSource:
    """Where a dataset lives, which files make its content, and how to open it."""

    path: Path
    files: list[Path]
    name: str
    open: Callable[[], RawSource]


def _minari_name(data_dir: Path) -> str:
    try:
        meta = json.loads((data_dir / "metadata.json").read_text())
        if isinstance(meta.get("dataset_id"), str) and meta["dataset_id"]:
            return meta["dataset_id"]
    except (OSError, ValueError):
        pass
    return data_dir.parent.name


def _minari_source(data_dir: Path, name: str, shown: Path) -> ResolvedSource:
    files = [data_dir / "main_data.hdf5"]
    if (data_dir / "metadata.json").is_file():
        files.append(data_dir / "metadata.json")
    return ResolvedSource(shown, files, name, lambda: read_minari(data_dir, name, shown))


def _latest_version(candidate: Path) -> Path:
    """``.../human`` (no ``-vN``) → the highest ``.../human-vN`` present, as Minari resolves ids."""
    if candidate.exists() or re.search(r"-v\d+$", candidate.name) or not candidate.parent.is_dir():
        return candidate
    versions = [
        (int(m.group(1)), p)
        for p in candidate.parent.glob(f"{candidate.name}-v*")
        if (m := re.fullmatch(re.escape(candidate.name) + r"-v(\d+)", p.name))
    ]
    return max(versions)[1] if versions else candidate


def resolve_source(source: str | os.PathLike) -> ResolvedSource:
    """Find ``source`` on disk (see the module docstring for the order); a one-line UserError if absent."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            data_dir = minari_data_dir(path)
            if data_dir is None:
                raise UserError(
                    f"{path}: a folder but not a Minari dataset (no data/main_data.hdf5 inside); pass a "
                    "<name>-vN dataset folder or an HDF5 file"
                )
            return _minari_source(data_dir, _minari_name(data_dir), path)
        with open_hdf5(path) as f, hdf5_errors(path):
            minari_file = is_minari_file(f)
        if minari_file:
            return _minari_source(path.parent, _minari_name(path.parent), path.parent.parent)
        return ResolvedSource(path, [path], path.stem, lambda: read_d4rl(path))

    looked: list[str] = []
    bundled = catalog.bundled_path(text)
    if bundled is not None and minari_data_dir(bundled) is not None:
        rel = bundled.relative_to(catalog.bundled_root()).as_posix()
        return _minari_source(minari_data_dir(bundled), rel, bundled)  # type: ignore[arg-type]
    looked.append(f"bundled datasets in {catalog.bundled_root()}")
    if not path.is_absolute() and ".." not in Path(text).parts:
        candidate = _latest_version(minari_root() / text)
        data_dir = minari_data_dir(candidate)
        if data_dir is not None:
            name = candidate.relative_to(minari_root()).as_posix()
            return _minari_source(data_dir, name, candidate)
    looked.append(f"Minari datasets in {minari_root()} (MINARI_DATASETS_PATH)")
    if text.endswith((".hdf5", ".h5")) or os.sep in text and path.is_absolute():
        raise UserError(f"{path}: no such file (see `offrl datasets list` for the datasets offrl can find)")
    raise UserError(
        f"dataset {text!r} not found: no such file or folder, and not among {' or '.join(looked)}; "
        "see `offrl datasets list`"
    )


class OfflineDataset:
    """A converted dataset: a memmapped TED TensorDict (``.data``), its :class:`DatasetInfo` and helpers."""

    def __init__(
        self,
        info: DatasetInfo,
        *,
        source: Path,
        cache_path: Path,
        metadata: dict[str, Any],
        layout: RowLayout,
    ) -> None:
        self.info = info
        self.source = source
        self.cache_path = cache_path
        self.metadata = metadata
        self.layout = layout  # where each TED leaf sits inside a packed row
        self._rows: torch.Tensor | None = None
        self._data: TensorDict | None = None

    @property
    def rows(self) -> torch.Tensor:
        """The packed ``uint8 [N, row_bytes]`` records, memory-mapped from the cache (opened on first use)."""
        if self._rows is None:
            import torch
            from tensordict import MemoryMappedTensor

            from offrl.data.convert import ROWS_FILE

            n, width = self.info.transitions, self.layout.row_bytes
            path = self.cache_path / ROWS_FILE
            # A private (copy-on-write) mapping: pages load lazily from the file, and an accidental
            # in-place write to ``data`` changes this process's copy, never the shared cache.
            flat = torch.from_file(str(path), shared=False, size=n * width, dtype=torch.uint8)
            rows = MemoryMappedTensor(flat.view(n, width))
            # The attributes MemoryMappedTensor.from_filename sets (it maps shared when it may write).
            rows.filename, rows._handler, rows.index, rows.parent_shape = (
                str(path),
                None,
                None,
                torch.Size([n, width]),
            )
            self._rows = rows
        return self._rows

    @property
    def data(self) -> TensorDict:
        """The TED TensorDict (``batch_size=[N]``): strided views into :attr:`rows`, no copy."""
        if self._data is None:
            self._data = self.layout.view(self.rows)
        return self._data

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def digest(self) -> str:
        return self.info.digest

    def __len__(self) -> int:
        return self.info.transitions

    def __repr__(self) -> str:
        return f"OfflineDataset(name={self.name!r}, transitions={len(self)}, episodes={self.info.episodes}, format={self.info.format!r})"

    def replay_buffer(
        self,
        batch_size: int,
        *,
        device: str | torch.device | None = None,
        sampler: Any = None,
        prefetch: int | None = None,
        seed: int | None = None,
        in_memory: bool = False,
        indices: torch.Tensor | None = None,
    ) -> TensorDictReplayBuffer:
        """A torchrl TensorDictReplayBuffer over the memmapped data (see :func:`offrl.data.buffer.make_replay_buffer`);
        ``indices`` restricts sampling to those rows (e.g. the training split)."""
        from offrl.data.buffer import make_replay_buffer

        return make_replay_buffer(
            self.data,
            batch_size,
            rows=self.rows,
            layout=self.layout,
            device=device,
            sampler=sampler,
            prefetch=prefetch,
            seed=seed,
            in_memory=in_memory,
            indices=indices,
        )

    @property
    def observation_space(self) -> gym.Space:
        from minari.serialization import deserialize_space

        return deserialize_space(self.metadata["observation_space_json"])

    @property
    def action_space(self) -> gym.Space:
        from minari.serialization import deserialize_space

        return deserialize_space(self.metadata["action_space_json"])

    def env_resolution(self, env_id: str | None = None) -> envs.EnvResolution | None:
        meta = self.metadata.get("metadata", {})
        return envs.resolve_env(
            self.name,
            env_spec=meta.get("eval_env_spec") or meta.get("env_spec"),
            override=env_id or self.info.extra.get("env_override"),
        )

    def make_env(self, env_id: str | None = None, **kwargs: Any) -> gym.Env:
        """A gymnasium env to evaluate on (``env_id`` > the dataset's env_spec > the name map)."""
        resolution = self.env_resolution(env_id)
        if resolution is None:
            raise UserError(
                f"{self.source}: no evaluation env known for dataset {self.name!r}; pass one with --env"
            )
        return envs.make_env(resolution, **kwargs)

    def normalized_score(self, returns: float | Sequence[float] | np.ndarray) -> Any:
        """``100 * (R - ref_min) / (ref_max - ref_min)``; NaN when the references are unknown."""
        r = np.asarray(returns, dtype=np.float64)
        lo, hi = self.info.ref_min_score, self.info.ref_max_score
        out = np.full_like(r, np.nan) if lo is None or hi is None else 100.0 * (r - lo) / (hi - lo)
        return float(out) if out.ndim == 0 else out


def load_dataset(
    source: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    allow_nan: bool = False,
    chunk_size: int | None = None,
    gamma: float = 0.99,
    env: str | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
) -> OfflineDataset:
    """Resolve, convert (once; cached) and open a dataset. See the module docstring for ``source``.

    ``allow_nan``: accept NaN/inf in the data (an error by default). ``chunk_size``: rows per conversion
    chunk (bounds memory). ``gamma``: discount of ``mc_return``. ``env``, ``ref_*_score``: overrides.
    """
    if not 0.0 <= float(gamma) <= 1.0:
        raise UserError(f"gamma (--gamma) must be in [0, 1], got {gamma}")
    if chunk_size is not None and int(chunk_size) <= 0:
        raise UserError(f"chunk_size (--chunk-size) must be a positive number of rows, got {chunk_size}")
    resolved = resolve_source(source)

    def open_source() -> RawSource:
        raw = resolved.open()
        if raw.metadata.get("max_episode_steps") is None:
            # D4RL files do not record their time limit: take it from the env the name maps to, so the
            # health check can compare timeouts with it.
            try:
                resolution = envs.resolve_env(raw.name, env_spec=raw.metadata.get("env_spec"))
                raw.metadata["max_episode_steps"] = resolution.max_episode_steps if resolution else None
            except UserError:
                pass
        return raw

    entry, digest, _ = build_cache(
        open_source,
        resolved.files,
        resolved.name,
        cache_dir=cache_dir,
        gamma=float(gamma),
        chunk_rows=chunk_size,
        allow_nan=allow_nan,
    )
    try:
        stored = json.loads((entry / "info.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{entry}: damaged cache entry ({err}); delete it and run again") from None
    if stored.get("nonfinite") and not allow_nan:
        raise UserError(
            f"{resolved.path}: {stored['nonfinite']} NaN/inf values in the data; fix the data or pass --allow-nan "
            "(load_dataset(..., allow_nan=True)) to accept them"
        )
    from offrl.data.layout import RowLayout

    layout = RowLayout.from_json(stored["layout"])
    meta = stored.get("metadata") or {}
    ref_min, ref_max, ref_source = references.reference_scores(
        stored["name"], meta.get("ref_min_score"), meta.get("ref_max_score"), ref_min_score, ref_max_score
    )
    try:
        resolution = envs.resolve_env(
            stored["name"], env_spec=meta.get("eval_env_spec") or meta.get("env_spec"), override=env
        )
    except UserError:
        resolution = None
    max_steps = meta.get("max_episode_steps")
    if resolution is not None and (env or max_steps is None):
        try:
            max_steps = resolution.max_episode_steps
        except Exception:  # an unregistered user id: no time limit known
            max_steps = None
    info = DatasetInfo(
        name=stored["name"],
        format=stored["format"],
        transitions=stored["transitions"],
        episodes=stored["episodes"],
        observation_shape=stored["observation_shape"],
        observation_dtype=stored["observation_dtype"],
        action_space=stored["action_space"],
        terminated=stored["terminated"],
        truncated=stored["truncated"],
        episode_length=stored["episode_length"],
        episode_return=stored["episode_return"],
        reward=stored["reward"],
        env_id=resolution.env_id if resolution else meta.get("env_id"),
        max_episode_steps=max_steps,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        ref_source=ref_source,
        warnings=list(stored.get("warnings", [])),
        cache=str(entry),
        digest=digest,
        gamma=float(stored["gamma"]),
        source=str(resolved.path),
        dropped_rows=int(stored.get("dropped_rows", 0)),
        env_source=resolution.source if resolution else None,
        env_note=resolution.note if resolution else None,
        extra={"env_override": env} if env else {},
    )
    return OfflineDataset(info, source=resolved.path, cache_path=entry, metadata=stored, layout=layout)


def cached_entries(cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The converted datasets in the cache: ``name``, ``format``, ``transitions``, ``source``, ``path``."""
    root = cache_root(cache_dir) / "datasets"
    out = []
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(".") or not (entry / "info.json").is_file():
                continue
            try:
                info = json.loads((entry / "info.json").read_text())
            except (OSError, ValueError):
                continue
            out.append(
                {k: info.get(k) for k in ("name", "format", "transitions", "episodes", "source", "gamma")}
                | {"path": str(entry)}
            )
    return out
