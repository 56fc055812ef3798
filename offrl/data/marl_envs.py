"""Cooperative multi-agent envs with discrete actions, through torchrl: ``mpe2``'s ``simple_spread``
(PettingZoo parallel API, :class:`torchrl.envs.PettingZooWrapper`), in torchrl's multi-agent layout.

An env id is ``mpe2/simple_spread`` (3 agents, 3 landmarks) or ``mpe2/simple_spread-n2`` (2 and 2);
episodes last 25 steps (mpe2's ``max_cycles``) and end truncated. The env gives per-agent observations
``("agents", "observation")``, actions ``("agents", "action")`` (5 moves), per-agent rewards
``("agents", "reward")`` and the global ``state`` (the agents' observations, concatenated); a
``RewardSum`` adds ``("agents", "episode_reward")``. The package is the optional extra
``offrl[marl]`` (mpe2, PettingZoo); VMAS would need the ``gym`` package, which breaks torchrl's
gymnasium wrappers, so offrl does not use it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from offrl.errors import UserError

__all__ = ["MARL_ENVS", "MarlEnvSpec", "is_marl_env", "make_marl_env", "make_raw_marl_env", "marl_env_shapes"]

MARL_HINT = "pip install 'offrl[marl]'"


@dataclass(frozen=True)
class MarlEnvSpec:
    """One registered multi-agent env: the mpe2 module and its arguments."""

    module: str
    kwargs: tuple[tuple[str, Any], ...]
    max_steps: int


MARL_ENVS: dict[str, MarlEnvSpec] = {
    "mpe2/simple_spread": MarlEnvSpec("simple_spread_v3", (("N", 3), ("local_ratio", 0.5), ("max_cycles", 25)), 25),
    "mpe2/simple_spread-n2": MarlEnvSpec("simple_spread_v3", (("N", 2), ("local_ratio", 0.5), ("max_cycles", 25)), 25),
}


def is_marl_env(env_id: str | None) -> bool:
    """Whether ``env_id`` names a multi-agent env (``mpe2/...``, ``vmas/...``)."""
    return bool(env_id) and str(env_id).split("/", 1)[0] in ("mpe2", "vmas")


def _spec(env_id: str) -> MarlEnvSpec:
    spec = MARL_ENVS.get(env_id)
    if spec is None:
        if str(env_id).startswith("vmas/"):
            raise UserError(f"--env {env_id}: VMAS needs the 'gym' package, which breaks torchrl's gymnasium "
                            f"wrappers; use one of {', '.join(MARL_ENVS)}")
        raise UserError(f"--env {env_id}: unknown multi-agent env; use one of {', '.join(MARL_ENVS)}")
    return spec


def make_raw_marl_env(env_id: str) -> Any:
    """The PettingZoo parallel env of ``env_id`` itself (no torchrl wrapper: what the dataset generator
    steps, several times faster)."""
    spec = _spec(env_id)
    try:
        import importlib

        module = importlib.import_module(f"mpe2.{spec.module}")
    except ImportError:
        raise UserError(f"--env {env_id}: mpe2 is not installed; {MARL_HINT}") from None
    return module.parallel_env(continuous_actions=False, **dict(spec.kwargs))


def make_marl_env(env_id: str, *, seed: int | None = None, device: str = "cpu") -> Any:
    """The torchrl env of ``env_id`` (see the module docstring), seeded when ``seed`` is given."""
    raw = make_raw_marl_env(env_id)
    from torchrl.envs import PettingZooWrapper, RewardSum, TransformedEnv

    agents = list(raw.possible_agents)
    with warnings.catch_warnings():  # "tested with PettingZoo 1.24.3": offrl's tests run the installed one
        warnings.simplefilter("ignore", UserWarning)
        env = PettingZooWrapper(raw, group_map={"agents": agents}, categorical_actions=True, use_mask=False,
                                return_state=True, device=device)
    env = TransformedEnv(env, RewardSum(in_keys=[("agents", "reward")], out_keys=[("agents", "episode_reward")]))
    if seed is not None:
        env.set_seed(int(seed))
    return env


def marl_env_shapes(env_id: str) -> dict[str, Any]:
    """``n_agents``, ``observation_dim``, ``n_actions`` and ``state_dim`` of a multi-agent env (what
    :func:`offrl.algos.marl.build` takes)."""
    env = make_marl_env(env_id)
    try:
        obs = env.observation_spec["agents", "observation"]
        action = env.full_action_spec["agents", "action"]
        state = env.observation_spec.get("state", None)
        return {"n_agents": int(obs.shape[0]), "observation_dim": int(obs.shape[-1]),
                "n_actions": int(action.space.n), "state_dim": int(state.shape[-1]) if state is not None else None}
    finally:
        env.close()
