"""The TED leaves a converted dataset holds: their keys, per-row shapes and dtypes for a source's spaces
(single-agent TED, or torchrl's multi-agent keys), packed into a :class:`~offrl.data.layout.RowLayout`,
and the JSON summary of a space."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from offrl.data.source import leaf_specs

if TYPE_CHECKING:
    from offrl.data.layout import RowLayout

__all__ = ["marl_leaves", "marl_values", "space_summary", "ted_layout"]


def space_summary(space: gym.Space) -> dict[str, Any]:
    """``{"kind": "discrete", "n": ...}`` or ``{"kind": "continuous", "shape", "low", "high"}``."""
    if isinstance(space, gym.spaces.Discrete):
        return {"kind": "discrete", "n": int(space.n)}
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)

    def scalar_or_list(x: np.ndarray) -> Any:
        vals = [
            v if np.isfinite(v) else (float("inf") if v > 0 else float("-inf"))
            for v in x.reshape(-1).tolist()
        ]
        return vals[0] if len(set(vals)) == 1 else vals

    return {
        "kind": "continuous",
        "shape": list(space.shape),
        "low": scalar_or_list(low),
        "high": scalar_or_list(high),
    }


def ted_layout(obs_space: gym.Space, act_space: gym.Space, multiagent: dict[str, Any] | None = None) -> RowLayout:
    """The packed-row layout of every TED leaf for these spaces (see :mod:`offrl.data.layout`); with
    ``multiagent`` (a multi-agent source's description) torchrl's multi-agent keys instead."""
    from offrl.data.layout import RowLayout

    leaves: list[tuple[tuple[str, ...], tuple[int, ...], np.dtype]] = []
    if multiagent:
        leaves += marl_leaves(multiagent)
    else:
        for path, shape, dtype in leaf_specs(obs_space):
            leaves.append((("observation", *path), shape, dtype))
            leaves.append((("next", "observation", *path), shape, dtype))
        if isinstance(act_space, gym.spaces.Discrete):
            leaves.append((("action",), (), np.dtype(np.int64)))
        else:
            leaves.append((("action",), tuple(act_space.shape), np.dtype(np.float32)))
    leaves += [
        (("next", "reward"), (1,), np.dtype(np.float32)),
        (("mc_return",), (1,), np.dtype(np.float32)),
        (("episode",), (), np.dtype(np.int64)),
        (("step",), (), np.dtype(np.int64)),
        (("next", "done"), (1,), np.dtype(np.bool_)),
        (("next", "terminated"), (1,), np.dtype(np.bool_)),
        (("next", "truncated"), (1,), np.dtype(np.bool_)),
    ]
    return RowLayout.build(leaves)


def marl_leaves(ma: dict[str, Any]) -> list[tuple[tuple[str, ...], tuple[int, ...], np.dtype]]:
    """torchrl's multi-agent leaves: ``("agents", "observation")`` [n, obs], ``("agents", "action")`` [n],
    ``("next", "agents", "reward")`` [n, 1], optional ``state`` [S] and ``("agents", "action_mask")``
    [n, A] (each with its ``next`` twin). The team ``("next", "reward")`` and flags are the common leaves."""
    n, obs, n_act = int(ma["n_agents"]), tuple(int(d) for d in ma["observation_shape"][1:]), int(ma["n_actions"])
    f32, b = np.dtype(np.float32), np.dtype(np.bool_)
    leaves = [(("agents", "observation"), (n, *obs), f32), (("next", "agents", "observation"), (n, *obs), f32),
              (("agents", "action"), (n,), np.dtype(np.int64)), (("next", "agents", "reward"), (n, 1), f32)]
    if ma.get("state_dim"):
        leaves += [(("state",), (int(ma["state_dim"]),), f32), (("next", "state"), (int(ma["state_dim"]),), f32)]
    if ma.get("action_masks"):
        leaves += [(("agents", "action_mask"), (n, n_act), b), (("next", "agents", "action_mask"), (n, n_act), b)]
    return leaves


def marl_values(chunk: dict[str, Any]) -> dict[tuple[str, ...], np.ndarray]:
    """A multi-agent chunk's arrays under their TED keys (the leaves of :func:`marl_leaves`)."""
    values = {("agents", "observation"): chunk["observation"],
              ("next", "agents", "observation"): chunk["next_observation"],
              ("agents", "action"): chunk["action"],
              ("next", "agents", "reward"): chunk["agent_reward"][..., None]}
    for key, ted in (("state", ("state",)), ("next_state", ("next", "state")),
                     ("action_mask", ("agents", "action_mask")), ("next_action_mask", ("next", "agents", "action_mask"))):
        if key in chunk:
            values[ted] = chunk[key]
    return values
