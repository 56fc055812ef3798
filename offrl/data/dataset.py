"""``load_dataset``: any D4RL-style / d3rlpy / multi-agent HDF5 file, Minari folder or id, or bundled dataset → an
:class:`OfflineDataset` over a cached, memmapped TED TensorDict.

Resolution order for ``source``: an existing path (HDF5 file, Minari ``<name>-vN`` folder or its
``data/``); then a bundled id under :func:`offrl.data.catalog.bundled_root` (``offrl/pendulum/medium-v0``);
then a Minari id under ``MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``). Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from offrl.data import envs, references
from offrl.data.convert import build_cache, cache_root
from offrl.data.health import from_length_counts, time_limit_warnings
from offrl.data.resolve import ResolvedSource, resolve_source
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
    episode_return_distribution: dict[str, float] = field(default_factory=dict)  # min / quartiles / max
    normalized_score: dict[str, float] | None = None  # the behaviour data's, when references are known
    ref_hint: str | None = None  # references offrl has for the env, offered when the data has none
    row_rules: dict[str, dict[str, Any]] = field(default_factory=dict)  # reader rules and rows touched
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def discrete(self) -> bool:
        return self.action_space.get("kind") == "discrete"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready payload of ``offrl datasets info --json``."""
        out = asdict(self)
        out.update(out.pop("extra"))
        return out


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
        env = envs.make_env(resolution, **kwargs)
        stored = {"observation_shape": self.info.observation_shape, "action_space": self.info.action_space}
        problem = env_fit_problem(stored, resolution.env_id, env.observation_space, env.action_space)
        if problem:
            env.close()
            how = {"name map": "guessed from its name", "dataset env_spec": "named by its env_spec metadata"}.get(
                resolution.source, "given")
            raise UserError(f"{self.source}: {problem} (the env was {how}); pass the env the data were recorded in")
        return env

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
        first = f" (first: {stored['first_nonfinite']})" if stored.get("first_nonfinite") else ""
        raise UserError(
            f"{resolved.path}: {stored['nonfinite']} NaN/inf values in the data{first}; fix the data or pass "
            "--allow-nan (load_dataset(..., allow_nan=True)) to accept them"
        )
    from offrl.data.layout import RowLayout

    layout = RowLayout.from_json(stored["layout"])
    meta = stored.get("metadata") or {}
    multiagent = stored.get("multiagent")
    try:
        resolution = None if multiagent else envs.resolve_env(
            stored["name"], env_spec=meta.get("eval_env_spec") or meta.get("env_spec"), override=env
        )
    except UserError:
        resolution = None
    if multiagent and env:
        check_marl_env_fits(resolved.path, multiagent, env)
    named = envs.resolve_env(stored["name"]) if env else None
    if named is not None and _env_family(named.env_id) != _env_family(env):
        named_refs = None  # the D4RL references its name implies belong to another env than the one given
    else:
        named_refs = stored["name"]
    ref_min, ref_max, ref_source = references.reference_scores(
        named_refs, meta.get("ref_min_score"), meta.get("ref_max_score"), ref_min_score, ref_max_score
    )
    ref_hint = None
    if ref_min is None and ref_max is None and resolution is not None:
        ref_hint = references.suggested_references(resolution.env_id)
    max_steps = meta.get("max_episode_steps")
    if resolution is not None and (env or max_steps is None):
        try:
            max_steps = resolution.max_episode_steps
        except Exception:  # an unregistered user id: no time limit known
            max_steps = None
    warnings = list(stored.get("warnings", []))
    if env:
        check_env_fits(resolved.path, stored, resolution)
        if max_steps != meta.get("max_episode_steps") and "episode_length_counts" in stored:
            # The env's time limit against the file's episode lengths (the stored ones used the file's).
            stale = set(stored.get("time_limit_warnings", []))
            lengths, terminated = from_length_counts(stored["episode_length_counts"])
            warnings = [w for w in warnings if w not in stale]
            warnings += time_limit_warnings(lengths, terminated, max_steps)
    env_note = resolution.note if resolution else NO_ENV_NOTE
    env_id, env_source = (resolution.env_id, resolution.source) if resolution else (meta.get("env_id"), None)
    if multiagent:  # a torchrl multi-agent env (offrl.data.marl_envs), not a gymnasium one
        env_id = env or meta.get("env_id")
        env_source = "user" if env else "dataset metadata" if env_id else None
        env_note = None if env_id else NO_ENV_NOTE
    returns = stored.get("episode_return_distribution") or {}
    normalized = None
    if ref_min is not None and ref_max is not None and ref_max != ref_min and returns:
        scale = lambda r: 100.0 * (r - ref_min) / (ref_max - ref_min)  # noqa: E731
        normalized = {"mean": scale(stored["episode_return"]["mean"])} | {k: scale(v) for k, v in returns.items()}
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
        env_id=env_id,
        max_episode_steps=max_steps,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        ref_source=ref_source,
        warnings=warnings,
        cache=str(entry),
        digest=digest,
        gamma=float(stored["gamma"]),
        source=str(resolved.path),
        dropped_rows=int(stored.get("dropped_rows", 0)),
        env_source=env_source,
        env_note=env_note,
        ref_hint=ref_hint,
        episode_return_distribution=returns,
        normalized_score=normalized,
        row_rules=stored.get("row_rules") or {},
        extra=({"env_override": env} if env else {}) | ({"multiagent": multiagent} if multiagent else {}),
    )
    return OfflineDataset(info, source=resolved.path, cache_path=entry, metadata=stored, layout=layout)


NO_ENV_NOTE = (
    "this dataset names no env; give one with --env ID (offrl datasets info) or --set dataset.env_id=ID "
    "(offrl train, the Python API: load_dataset(..., env=ID))"
)


def check_marl_env_fits(source: Path, multiagent: dict[str, Any], env_id: str) -> None:
    """A one-line UserError when a multi-agent dataset's agents, observations or actions do not fit the
    multi-agent env ``env_id`` (:mod:`offrl.data.marl_envs`)."""
    from offrl.data.marl_envs import marl_env_shapes

    shapes = marl_env_shapes(env_id)
    data = {"n_agents": int(multiagent["n_agents"]), "observation_dim": int(multiagent["observation_shape"][-1]),
            "n_actions": int(multiagent["n_actions"])}
    for key, value in data.items():
        if value != shapes[key] and not (key == "n_actions" and value < shapes[key]):
            raise UserError(f"{source}: the data have {key}={value} but env {env_id} has {shapes[key]}; pass the "
                            "env the data were recorded in")


def _env_family(env_id: str) -> str:
    """``Hopper-v5`` -> ``hopper`` (an env id without its version)."""
    return references.VERSION_RE.sub("", env_id.rsplit("/", 1)[-1]).lower()


def check_env_fits(source: Path, stored: dict[str, Any], resolution: envs.EnvResolution | None) -> None:
    """A one-line UserError when the data's observation/action spaces do not fit the env given by the user."""
    if resolution is None:
        return
    env = envs.make_env(resolution)
    try:
        problem = env_fit_problem(stored, resolution.env_id, env.observation_space, env.action_space)
    finally:
        env.close()
    if problem:
        raise UserError(f"{source}: {problem}; pass the env the data were recorded in")


def env_fit_problem(stored: dict[str, Any], env_id: str, obs_space: gym.Space, act_space: gym.Space) -> str | None:
    """How the data's observations / actions (``stored``: ``observation_shape``, ``action_space``) do not fit
    env ``env_id``'s spaces, or None."""
    shape = stored.get("observation_shape")
    if isinstance(obs_space, gym.spaces.Box) and isinstance(shape, (list, tuple)) and tuple(shape) != obs_space.shape:
        return (f"observations have shape {tuple(shape)} but env {env_id}'s observation space has shape "
                f"{obs_space.shape}")
    act = stored.get("action_space") or {}
    if isinstance(act_space, gym.spaces.Discrete):
        if act.get("kind") != "discrete":
            return (f"the data have continuous actions but env {env_id} has discrete ones (discrete actions are "
                    "read from integer arrays, or float ones under a true 'discrete_action' attribute)")
        if int(act["n"]) > int(act_space.n):
            return f"the data use {act['n']} discrete actions but env {env_id} has {int(act_space.n)}"
    elif isinstance(act_space, gym.spaces.Box):
        if act.get("kind") != "continuous":
            return f"the data have discrete actions but env {env_id} has continuous ones"
        if tuple(act.get("shape", ())) != act_space.shape:
            return f"actions have shape {tuple(act['shape'])} but env {env_id}'s action space has shape {act_space.shape}"
    return None


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
