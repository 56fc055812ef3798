"""Reader for offrl's multi-agent HDF5 layout (docs/multiagent.md): per-step arrays with an agent axis.

A file is multi-agent when its root (or its ``metadata`` group) carries the attribute ``n_agents``.
Arrays (``T`` steps, ``n`` agents, ``A`` discrete actions per agent):

``observations`` [T, n, obs] and ``actions`` [T, n] (int indices; ``[T, n, 1]`` too), ``rewards`` [T]
(a team reward) or [T, n] (per agent), ``terminals`` [T] (team) and optional ``timeouts`` [T],
``next_observations`` [T, n, obs], ``state`` [T, S] with ``next_state`` [T, S], ``action_masks``
[T, n, A] (0/1, the legal actions) with ``next_action_masks``. Attributes: ``n_agents`` (required),
``n_actions`` (else the largest action + 1), ``env_id``, ``ref_min_score`` / ``ref_max_score`` (team
returns), ``max_episode_steps``, ``dataset_id``.

Rows follow the D4RL rules (:mod:`offrl.data.d4rl`): a ``terminals`` end is ``terminated``, a
``timeouts`` end ``truncated``; without ``next_observations`` a row's next observation (and next state
and masks) is the next row, and the last row of a cut episode is dropped. A team reward is every agent's
reward; the team reward of per-agent rewards is their mean (torchrl's aggregated reward, what QMIX and
VDN optimise).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np

from offrl.data.d4rl import (
    CUT_LAST_ROW_RULE,
    check_flags,
    episode_rows,
    hdf5_errors,
    hdf5_metadata,
    open_hdf5,
    pick,
    source_metadata,
    storage_dtype_of,
)
from offrl.data.source import Chunk, RawSource, whole_numbers
from offrl.errors import UserError

__all__ = ["MARKER", "is_marl_file", "read_marl_hdf5"]

#: The attribute that marks a multi-agent file (its value: the number of agents).
MARKER = "n_agents"
_PAIRED = (("next_observations", "observations"), ("next_state", "state"), ("next_action_masks", "action_masks"))
_FLAG_CHUNK = 1 << 20


def is_marl_file(f: h5py.File) -> bool:
    """Whether ``f`` declares ``n_agents`` (root or ``metadata`` attributes)."""
    group = f.get("metadata")
    return MARKER in f.attrs or (isinstance(group, h5py.Group) and MARKER in group.attrs)


def _dataset(f: h5py.File, key: str, path: Path) -> h5py.Dataset:
    if not isinstance(f[key], h5py.Dataset):
        raise UserError(f"{path}: '{key}' is a group; expected an array (docs/multiagent.md)")
    return f[key]


def _shape(ds: h5py.Dataset, expected: tuple[int | None, ...], key: str, path: Path, what: str) -> None:
    """``ds.shape`` must match ``expected`` (None: any size)."""
    ok = ds.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, ds.shape, strict=True))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise UserError(f"{path}: '{key}' has shape {ds.shape}; expected {want} ({what}; docs/multiagent.md)")


def read_marl_hdf5(path: Path, name: str | None = None) -> RawSource:
    """Validate a multi-agent HDF5 file and describe it (``name``: its id, default its ``dataset_id``
    attribute, else the file's stem); rows are streamed later, in chunks."""
    path = Path(path)
    with open_hdf5(path) as f, hdf5_errors(path):
        meta = hdf5_metadata(f)
        try:
            n_agents = int(pick(meta, MARKER))
        except (TypeError, ValueError):
            raise UserError(f"{path}: attribute n_agents={pick(meta, MARKER)!r} is not a number of agents") from None
        if n_agents < 1:
            raise UserError(f"{path}: attribute n_agents={n_agents}; a multi-agent file needs at least one agent")
        for key in ("observations", "actions", "rewards", "terminals"):
            if key not in f:
                raise UserError(f"{path}: missing required key '{key}' (a multi-agent file needs observations, "
                                "actions, rewards and terminals: docs/multiagent.md)")
        obs = _dataset(f, "observations", path)
        n = int(obs.shape[0]) if obs.ndim else 0
        _shape(obs, (n, n_agents, None), "observations", path, "steps, agents, features")
        if n == 0:
            raise UserError(f"{path}: zero transitions (the arrays are empty)")
        if obs.dtype.kind not in "fiub":
            raise UserError(f"{path}: 'observations' has dtype {obs.dtype}; expected numbers")
        act = _dataset(f, "actions", path)
        if act.ndim == 3 and act.shape[2] == 1:
            _shape(act, (n, n_agents, 1), "actions", path, "steps, agents: one action index per agent")
        else:
            _shape(act, (n, n_agents), "actions", path, "steps, agents: one action index per agent")
        if act.dtype.kind not in "iub" and act.dtype.kind != "f":
            raise UserError(f"{path}: 'actions' has dtype {act.dtype}; expected integer action indices")
        rew = _dataset(f, "rewards", path)
        per_agent = rew.ndim >= 2 and rew.shape[1] == n_agents and n_agents > 1
        if per_agent:
            _shape(rew, (n, n_agents) + ((1,) if rew.ndim == 3 else ()), "rewards", path, "per-agent rewards")
        else:
            _shape(rew, (n,) + ((1,) if rew.ndim == 2 else ()), "rewards", path,
                   f"a team reward per step, or ({n}, {n_agents}) per-agent rewards")
        flags = [k for k in ("terminals", "timeouts") if k in f]
        for key in flags:
            ds = _dataset(f, key, path)
            if ds.ndim == 2 and ds.shape[1] == n_agents and n_agents > 1:
                raise UserError(f"{path}: '{key}' has shape {ds.shape}: per-agent flags; the layout takes team "
                                f"flags ({n},): an episode ends for every agent at once (docs/multiagent.md)")
            _shape(ds, (n,) + ((1,) if ds.ndim == 2 else ()), key, path, "one team flag per step")
            if ds.dtype.kind not in "biuf":
                raise UserError(f"{path}: '{key}' has dtype {ds.dtype}; expected 0/1 flags")
        state_dim = None
        if "state" in f:
            state = _dataset(f, "state", path)
            _shape(state, (n, None), "state", path, "steps, global state features")
            state_dim = int(state.shape[1])
        has_masks = "action_masks" in f
        for nxt, cur in _PAIRED:
            if nxt in f and cur not in f:
                raise UserError(f"{path}: '{nxt}' without '{cur}'; add '{cur}' or drop '{nxt}'")
            if nxt in f and f[nxt].shape != f[cur].shape:
                raise UserError(f"{path}: '{nxt}' has shape {f[nxt].shape}; expected {f[cur].shape} like '{cur}'")
        has_next = "next_observations" in f
        for nxt, cur in _PAIRED[1:]:
            if has_next and cur in f and nxt not in f:
                raise UserError(f"{path}: 'next_observations' is given but '{nxt}' is not; the next row's "
                                f"'{cur}' belongs to another episode at a time limit: add '{nxt}'")

        # Counting pass: flags, action range, rows kept.
        kept = 0
        hi = -1
        for s in range(0, n, _FLAG_CHUNK):
            e = min(s + _FLAG_CHUNK, n)
            for key in flags:
                check_flags(np.asarray(f[key][s:e]), key, s, path)
            kept += int(episode_rows(f, flags, s, e, n, has_next)["keep"].sum())
            a = np.asarray(act[s:e]).reshape(e - s, n_agents)
            if not whole_numbers(a):
                raise UserError(f"{path}: 'actions' hold non-integer values; the layout takes action indices")
            if a.min() < 0:
                row = int(np.flatnonzero((a < 0).any(axis=1))[0]) + s
                raise UserError(f"{path}: 'actions' hold a negative index at row {row}")
            hi = max(hi, int(a.max()))
        if kept == 0:
            raise UserError(f"{path}: zero transitions after dropping cut episode ends; add 'next_observations'")
        declared = pick(meta, "n_actions", "action_size")
        n_actions = int(declared) if declared is not None else hi + 1
        if has_masks:
            masks = _dataset(f, "action_masks", path)
            _shape(masks, (n, n_agents, n_actions), "action_masks", path,
                   f"steps, agents, {n_actions} actions: 1 where an action is legal")
        if hi >= n_actions:
            raise UserError(f"{path}: action index {hi} is outside n_actions={n_actions}; fix the attribute")
        if n_actions < 2:
            raise UserError(f"{path}: {n_actions} action per agent; Q-learning needs at least 2 (set n_actions)")
        obs_space = gym.spaces.Box(-np.inf, np.inf, shape=tuple(obs.shape[1:]), dtype=storage_dtype_of(obs.dtype, tuple(obs.shape[1:])))

    multiagent = {"n_agents": n_agents, "observation_shape": [n_agents, int(obs_space.shape[-1])],
                  "n_actions": n_actions, "state_dim": state_dim, "action_masks": has_masks,
                  "reward": "per-agent" if per_agent else "team"}
    metadata = source_metadata(meta)
    extra = {k: meta[k] for k in ("offrl_recipe", "offrl_references", "offrl_generator_versions", "description")
             if k in meta}
    metadata.update(extra)
    rules = {"cut-last-row": {"rows": n - kept, "rule": CUT_LAST_ROW_RULE}} if n - kept else {}

    def iter_chunks(chunk_rows: int) -> Iterator[Chunk]:
        with open_hdf5(path) as f, hdf5_errors(path):
            for s in range(0, n, chunk_rows):
                chunk = _chunk(f, flags, s, min(s + chunk_rows, n), n, has_next, n_agents, per_agent, path)
                if len(chunk["reward"]):
                    yield chunk

    return RawSource(format="marl-hdf5", path=path, files=[path], name=name or str(metadata["dataset_id"] or path.stem), transitions=kept,
                     source_rows=n, observation_space=obs_space, action_space=gym.spaces.Discrete(n_actions),
                     had_next_observations=has_next, iter_chunks=iter_chunks, metadata=metadata, rules=rules,
                     multiagent=multiagent)


def _next_rows(f: h5py.File, key: str, s: int, e: int, n: int, own: np.ndarray) -> np.ndarray:
    """Rows ``[s, e)`` of ``next_<key>`` when the file has it, else the next row of ``key`` (a terminated
    row's own value: it is never bootstrapped)."""
    stored = {"observations": "next_observations", "state": "next_state", "action_masks": "next_action_masks"}[key]
    if stored in f:
        return np.asarray(f[stored][s:e])
    stop = min(e + 1, n)
    ext = np.asarray(f[key][s:stop])
    nxt = np.empty_like(ext[: e - s])
    nxt[: stop - s - 1] = ext[1:]
    if stop == e:
        nxt[-1] = ext[-1]
    nxt[own] = ext[: e - s][own]
    return nxt


def _chunk(f: h5py.File, flags: list[str], s: int, e: int, n: int, has_next: bool, n_agents: int,
           per_agent: bool, path: Path) -> Chunk:
    rows = episode_rows(f, flags, s, e, n, has_next)
    keep = rows["keep"]
    own = rows["terminated"]
    index = np.arange(s, e)
    reward = np.asarray(f["rewards"][s:e], dtype=np.float64).reshape(e - s, -1)
    agent_reward = reward if per_agent else np.repeat(reward, n_agents, axis=1)
    chunk: Chunk = {
        "observation": np.asarray(f["observations"][s:e])[keep],
        "next_observation": _next_rows(f, "observations", s, e, n, own)[keep],
        "action": np.asarray(f["actions"][s:e]).reshape(e - s, n_agents).astype(np.int64)[keep],
        "reward": agent_reward.mean(axis=1)[keep],
        "agent_reward": agent_reward[keep],
        "terminated": rows["terminated"][keep],
        "truncated": rows["truncated"][keep],
        "source_row": index[keep],
    }
    if not has_next:
        nxt_row = np.minimum(index + 1, n - 1)
        nxt_row[own] = index[own]
        chunk["next_source_row"] = nxt_row[keep]
    if "state" in f:
        chunk["state"] = np.asarray(f["state"][s:e])[keep]
        chunk["next_state"] = _next_rows(f, "state", s, e, n, own)[keep]
    if "action_masks" in f:
        masks = np.asarray(f["action_masks"][s:e])
        _check_masks(masks, chunk["action"], keep, s, path)
        chunk["action_mask"] = masks[keep] != 0
        chunk["next_action_mask"] = _next_rows(f, "action_masks", s, e, n, own)[keep] != 0
    return chunk


def _check_masks(masks: np.ndarray, actions: np.ndarray, keep: np.ndarray, first_row: int, path: Path) -> None:
    """Masks are 0/1, and every action the data took is legal under its mask."""
    flat = masks.reshape(-1)
    if flat.dtype.kind != "b" and np.any((flat != 0) & (flat != 1)):
        raise UserError(f"{path}: 'action_masks' hold values other than 0 and 1 (near row {first_row})")
    taken = np.take_along_axis(masks[keep] != 0, actions[..., None], axis=-1)[..., 0]
    if not taken.all():
        row, agent = (int(i) for i in np.argwhere(~taken)[0])
        raise UserError(f"{path}: agent {agent} takes action {int(actions[row, agent])} at row "
                        f"{first_row + int(np.flatnonzero(keep)[row])}, which its action_masks mark illegal; "
                        "fix the masks or the actions")
