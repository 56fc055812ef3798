"""The evaluation env of a dataset: which env (:func:`resolve_env`) and building it (:func:`make_env`).

``--env`` wins, then the dataset's Minari ``env_spec``, then a map from D4RL-style and Minari dataset names
to current Gymnasium ids (with a note on the version drift that implies: D4RL recorded MuJoCo tasks on gym
``-v2``/``-v3`` with mujoco-py; Gymnasium's are ``-v5`` on the ``mujoco`` bindings). A missing simulator
package is a one-line :class:`~offrl.errors.UserError` naming the offrl extra to install.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

from offrl.data.references import VERSION_RE, d4rl_candidates
from offrl.errors import UserError

__all__ = ["EnvResolution", "make_env", "resolve_env"]


@dataclass(frozen=True)
class EnvResolution:
    """Which env evaluates a dataset, where that choice came from, and any caveat.

    ``target`` is what :func:`make_env` builds: a Gymnasium id or a full ``EnvSpec`` (Minari's).
    ``source``: ``"user"``, ``"dataset env_spec"`` or ``"name map"``.
    """

    target: str | EnvSpec
    source: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    note: str | None = None

    @property
    def env_id(self) -> str:
        return self.target.id if isinstance(self.target, EnvSpec) else self.target

    @property
    def max_episode_steps(self) -> int | None:
        if isinstance(self.target, EnvSpec):
            return self.target.max_episode_steps
        try:
            return gym.spec(self.target).max_episode_steps
        except gym.error.Error:
            return None


_GYM_MUJOCO_DRIFT = (
    "D4RL recorded {task} on gym {old} (mujoco-py); evaluating on Gymnasium {new} (mujoco bindings): "
    "same task, observations and reward, slightly different simulator, so returns are close to, not "
    "identical with, published D4RL numbers"
)
_ROBOTICS_DRIFT = (
    "D4RL's {task} env is evaluated on its Gymnasium-Robotics port {new} (as Minari's D4RL datasets "
    "are); dynamics and reward follow D4RL but the two are not bit-identical"
)

# D4RL task prefix -> (Gymnasium id, make kwargs, note). Longest prefix wins.
_D4RL_ENVS: dict[str, tuple[str, dict[str, Any], str]] = {
    "hopper": ("Hopper-v5", {}, _GYM_MUJOCO_DRIFT.format(task="hopper", old="Hopper-v3", new="Hopper-v5")),
    "halfcheetah": (
        "HalfCheetah-v5",
        {},
        _GYM_MUJOCO_DRIFT.format(task="halfcheetah", old="HalfCheetah-v3", new="HalfCheetah-v5"),
    ),
    "walker2d": (
        "Walker2d-v5",
        {},
        _GYM_MUJOCO_DRIFT.format(task="walker2d", old="Walker2d-v3", new="Walker2d-v5"),
    ),
    # D4RL's ant observations are 111-dim (27 + 84 contact forces); only Ant-v4 with contact forces keeps
    # that layout (Ant-v5 drops the world body's forces: 105 dims).
    "ant": (
        "Ant-v4",
        {"use_contact_forces": True},
        "D4RL recorded ant on gym Ant-v3 (mujoco-py), whose 84 contact-force entries were zero under "
        "MuJoCo 2; evaluating on Gymnasium Ant-v4 with use_contact_forces=True (same 111-dim layout, real "
        "contact forces), so returns are close to, not identical with, published D4RL numbers",
    ),
    "door": ("AdroitHandDoor-v1", {}, _ROBOTICS_DRIFT.format(task="door", new="AdroitHandDoor-v1")),
    "pen": ("AdroitHandPen-v1", {}, _ROBOTICS_DRIFT.format(task="pen", new="AdroitHandPen-v1")),
    "hammer": ("AdroitHandHammer-v1", {}, _ROBOTICS_DRIFT.format(task="hammer", new="AdroitHandHammer-v1")),
    "relocate": (
        "AdroitHandRelocate-v1",
        {},
        _ROBOTICS_DRIFT.format(task="relocate", new="AdroitHandRelocate-v1"),
    ),
    "kitchen": ("FrankaKitchen-v1", {}, _ROBOTICS_DRIFT.format(task="kitchen", new="FrankaKitchen-v1")),
    "maze2d-umaze-dense": (
        "PointMaze_UMazeDense-v3",
        {},
        _ROBOTICS_DRIFT.format(task="maze2d-umaze-dense", new="PointMaze_UMazeDense-v3"),
    ),
    "maze2d-medium-dense": (
        "PointMaze_MediumDense-v3",
        {},
        _ROBOTICS_DRIFT.format(task="maze2d-medium-dense", new="PointMaze_MediumDense-v3"),
    ),
    "maze2d-large-dense": (
        "PointMaze_LargeDense-v3",
        {},
        _ROBOTICS_DRIFT.format(task="maze2d-large-dense", new="PointMaze_LargeDense-v3"),
    ),
    "maze2d-umaze": (
        "PointMaze_UMaze-v3",
        {},
        _ROBOTICS_DRIFT.format(task="maze2d-umaze", new="PointMaze_UMaze-v3"),
    ),
    "maze2d-medium": (
        "PointMaze_Medium-v3",
        {},
        _ROBOTICS_DRIFT.format(task="maze2d-medium", new="PointMaze_Medium-v3"),
    ),
    "maze2d-large": (
        "PointMaze_Large-v3",
        {},
        _ROBOTICS_DRIFT.format(task="maze2d-large", new="PointMaze_Large-v3"),
    ),
    "antmaze-umaze": (
        "AntMaze_UMaze-v5",
        {},
        _ROBOTICS_DRIFT.format(task="antmaze-umaze", new="AntMaze_UMaze-v5"),
    ),
    "antmaze-medium-diverse": (
        "AntMaze_Medium_Diverse_GR-v5",
        {},
        _ROBOTICS_DRIFT.format(task="antmaze-medium-diverse", new="AntMaze_Medium_Diverse_GR-v5"),
    ),
    "antmaze-medium": (
        "AntMaze_Medium-v5",
        {},
        _ROBOTICS_DRIFT.format(task="antmaze-medium-play", new="AntMaze_Medium-v5"),
    ),
    "antmaze-large-diverse": (
        "AntMaze_Large_Diverse_GR-v5",
        {},
        _ROBOTICS_DRIFT.format(task="antmaze-large-diverse", new="AntMaze_Large_Diverse_GR-v5"),
    ),
    "antmaze-large": (
        "AntMaze_Large-v5",
        {},
        _ROBOTICS_DRIFT.format(task="antmaze-large-play", new="AntMaze_Large-v5"),
    ),
}

# Minari "mujoco/<task>/..." datasets were recorded on Gymnasium's v5 MuJoCo envs (no drift).
_MINARI_MUJOCO = {
    "ant": "Ant-v5",
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
    "humanoid": "Humanoid-v5",
    "humanoidstandup": "HumanoidStandup-v5",
    "invertedpendulum": "InvertedPendulum-v5",
    "inverteddoublependulum": "InvertedDoublePendulum-v5",
    "pusher": "Pusher-v5",
    "reacher": "Reacher-v5",
    "swimmer": "Swimmer-v5",
    "walker2d": "Walker2d-v5",
}
_BUNDLED_ENVS = {"cartpole": "CartPole-v1", "pendulum": "Pendulum-v1"}

_ROBOTICS_PREFIXES = (
    "AdroitHand",
    "FrankaKitchen",
    "PointMaze",
    "AntMaze",
    "Fetch",
    "HandManipulate",
    "HandReach",
)


def _parse_env_spec(env_spec: str | Mapping[str, Any] | EnvSpec) -> EnvSpec:
    if isinstance(env_spec, EnvSpec):
        return env_spec
    text = env_spec if isinstance(env_spec, str) else json.dumps(dict(env_spec))
    # Specs written by gymnasium 0.29 carry keys that gymnasium 1.x no longer accepts (as Minari strips).
    data = json.loads(text)
    for stale in ("order_enforce", "apply_api_compatibility", "autoreset"):
        data.pop(stale, None)
    return EnvSpec.from_json(json.dumps(data))


def _from_name(name: str) -> EnvResolution | None:
    parts = name.strip().strip("/").split("/")
    if len(parts) == 3 and parts[0].lower() in ("offrl", "mujoco", "d4rl"):
        # Minari id namespace/task/dataset-vN
        namespace, task = parts[0].lower(), parts[1].lower()
        if namespace == "offrl" and task in _BUNDLED_ENVS:
            return EnvResolution(_BUNDLED_ENVS[task], "name map")
        if namespace == "mujoco" and task in _MINARI_MUJOCO:
            return EnvResolution(_MINARI_MUJOCO[task], "name map")
        if namespace == "d4rl":
            dataset = VERSION_RE.sub("", parts[2].lower())
            task = {"pointmaze": "maze2d"}.get(task, task)
            return _from_d4rl_name(f"{task}-{dataset}")
        return None
    # A D4RL dataset name or file path: "hopper-medium-v2", ".../hopper_medium_replay-v2.hdf5".
    return _from_d4rl_name(d4rl_candidates(name)[0])


def _from_d4rl_name(key: str) -> EnvResolution | None:
    for prefix in sorted(_D4RL_ENVS, key=len, reverse=True):
        if key == prefix or key.startswith(prefix + "-"):
            env_id, kwargs, note = _D4RL_ENVS[prefix]
            return EnvResolution(env_id, "name map", dict(kwargs), note)
    return None


def resolve_env(
    name: str | None = None,
    *,
    env_spec: str | Mapping[str, Any] | EnvSpec | None = None,
    override: str | None = None,
) -> EnvResolution | None:
    """The evaluation env of dataset ``name``: ``override`` (``--env``), else the dataset's Minari
    ``env_spec`` (JSON string, dict or EnvSpec), else the name map; None when nothing is known."""
    if override:
        return EnvResolution(override, "user")
    if env_spec:
        try:
            return EnvResolution(_parse_env_spec(env_spec), "dataset env_spec")
        except (ValueError, TypeError, KeyError) as exc:
            raise UserError(
                f"{name or 'dataset'}: its env_spec metadata cannot be read ({exc}); pass the env with --env"
            ) from None
    if name:
        return _from_name(name)
    return None


def _extra_for(env_id: str, entry_point: str | None) -> str | None:
    """The offrl extra that provides ``env_id``: ``robotics``, ``mujoco`` or None."""
    entry = entry_point or ""
    if env_id.startswith(_ROBOTICS_PREFIXES) or entry.startswith("gymnasium_robotics"):
        return "robotics"
    if "mujoco" in entry:
        return "mujoco"
    return None


def _missing(env_id: str, extra: str, what: str) -> UserError:
    return UserError(
        f'evaluation env {env_id} needs {what}, which is not installed: pip install "offrl[{extra}]" '
        "(or pass another env with --env)"
    )


def make_env(env: str | EnvSpec | EnvResolution, **kwargs: Any) -> gym.Env:
    """Build an evaluation env from an id, an ``EnvSpec`` or an :class:`EnvResolution`.

    A missing simulator package becomes a one-line :class:`UserError` naming the offrl extra to install.
    """
    if isinstance(env, EnvResolution):
        kwargs = {**env.kwargs, **kwargs}
        env = env.target
    env_id = env.id if isinstance(env, EnvSpec) else str(env)
    entry_point = env.entry_point if isinstance(env, EnvSpec) and isinstance(env.entry_point, str) else None
    if entry_point is None and isinstance(env, str):
        try:
            spec_entry = gym.spec(env).entry_point
            entry_point = spec_entry if isinstance(spec_entry, str) else None
        except gym.error.Error:
            entry_point = None
    extra = _extra_for(env_id, entry_point)
    if extra == "robotics":
        # Importing gymnasium_robotics registers its envs (AdroitHand*, FrankaKitchen*, PointMaze*, ...).
        try:
            robotics = importlib.import_module("gymnasium_robotics")
        except ImportError:
            raise _missing(env_id, "robotics", "gymnasium-robotics") from None
        gym.register_envs(robotics)
    try:
        return gym.make(env, **kwargs)
    except gym.error.DependencyNotInstalled as exc:
        what = "MuJoCo" if "mujoco" in str(exc).lower() else "a package"
        raise _missing(env_id, extra or "mujoco", what) from None
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in ("mujoco", "mujoco_py"):
            raise _missing(env_id, "mujoco", "MuJoCo") from None
        if missing == "gymnasium_robotics":
            raise _missing(env_id, "robotics", "gymnasium-robotics") from None
        raise UserError(
            f"evaluation env {env_id} needs the Python package {missing!r}; install it or pass --env"
        ) from None
    except gym.error.Error as exc:
        if isinstance(exc, (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound)):
            raise UserError(
                f"unknown evaluation env {env_id!r} ({exc}); pass an installed Gymnasium id with --env"
            ) from None
        raise
