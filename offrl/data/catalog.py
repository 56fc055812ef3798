"""Names to places: bundled datasets, D4RL reference scores, and the evaluation env of a dataset.

Reference scores (``normalized = 100 * (R - ref_min) / (ref_max - ref_min)``) come from, in order of
precedence: the user (``--ref-min-score`` / ``--ref-max-score``), the dataset's own metadata (Minari's
``ref_min_score`` / ``ref_max_score``), then :data:`D4RL_REF_SCORES`, D4RL's ``REF_MIN_SCORE`` /
``REF_MAX_SCORE`` (``d4rl/infos.py``). The source is always reported.

The evaluation env follows the same spirit: ``--env`` wins, then the dataset's Minari ``env_spec``, then
a map from D4RL-style and Minari dataset names to current Gymnasium ids (with a note on the version
drift that implies: D4RL recorded MuJoCo tasks on gym ``-v2``/``-v3`` with mujoco-py; Gymnasium's are
``-v5`` on the ``mujoco`` bindings).
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

from offrl.errors import UserError

__all__ = [
    "D4RL_REF_SCORES",
    "EnvResolution",
    "bundled_path",
    "bundled_root",
    "d4rl_reference",
    "list_bundled",
    "make_env",
    "reference_scores",
    "resolve_env",
]

# ---------------------------------------------------------------------------------------- reference table


def _d4rl_table() -> dict[str, tuple[float, float]]:
    """D4RL's REF_MIN_SCORE / REF_MAX_SCORE (d4rl/infos.py), keyed by D4RL dataset name."""
    # One (min, max) per task: D4RL gives every dataset of a task the same references.
    per_task: dict[str, tuple[float, float]] = {
        "hopper": (-20.272305, 3234.3),
        "halfcheetah": (-280.178953, 12135.0),
        "walker2d": (1.629008, 4592.3),
        "ant": (-325.6, 3879.7),
        "pen": (96.262799, 3076.8331017826877),
        "hammer": (-274.856578, 12794.134825156867),
        "relocate": (-6.425911, 4233.877797728884),
        "door": (-56.512833, 2880.5693087298737),
        "bullet-halfcheetah": (-1275.766996, 2381.6725),
        "bullet-hopper": (20.058972, 1441.8059623430963),
        "bullet-ant": (373.705955, 2650.495),
        "bullet-walker2d": (16.523877, 1623.6476303317536),
    }
    table: dict[str, tuple[float, float]] = {}
    for task in ("hopper", "halfcheetah", "walker2d", "ant"):
        for dset in ("random", "medium", "expert", "medium-replay", "medium-expert"):
            table[f"{task}-{dset}-v0"] = per_task[task]
        for dset in ("random", "medium", "expert", "medium-replay", "full-replay", "medium-expert"):
            table[f"{task}-{dset}-v1"] = per_task[task]
            table[f"{task}-{dset}-v2"] = per_task[task]
    for task in ("pen", "hammer", "relocate", "door"):
        for dset in ("human", "cloned", "expert"):
            table[f"{task}-{dset}-v0"] = per_task[task]
            table[f"{task}-{dset}-v1"] = per_task[task]
    for task in ("bullet-halfcheetah", "bullet-hopper", "bullet-ant", "bullet-walker2d"):
        for dset in ("random", "medium", "expert", "medium-expert", "medium-replay"):
            table[f"{task}-{dset}-v0"] = per_task[task]
    for maze in ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"):
        table[f"antmaze-{maze}-v0"] = (0.0, 1.0)
        table[f"antmaze-{maze}-v2"] = (0.0, 1.0)
    for kitchen in ("complete", "partial", "mixed"):
        table[f"kitchen-{kitchen}-v0"] = (0.0, 4.0)
    table.update(
        {
            "maze2d-open-v0": (0.01, 20.66),
            "maze2d-umaze-v1": (23.85, 161.86),
            "maze2d-medium-v1": (13.13, 277.39),
            "maze2d-large-v1": (6.7, 273.99),
            "maze2d-open-dense-v0": (11.17817, 27.166538620695782),
            "maze2d-umaze-dense-v1": (68.537689, 193.66285642381482),
            "maze2d-medium-dense-v1": (44.264742, 297.4552547777125),
            "maze2d-large-dense-v1": (30.569041, 303.4857382709002),
            "minigrid-fourrooms-v0": (0.01442, 2.89685),
            "minigrid-fourrooms-random-v0": (0.01442, 2.89685),
            "flow-ring-random-v0": (-165.22, 24.42),
            "flow-ring-controller-v0": (-165.22, 24.42),
            "flow-merge-random-v0": (118.67993, 330.03179),
            "flow-merge-controller-v0": (118.67993, 330.03179),
            "carla-lane-v0": (-0.8503839912088142, 1023.5784385429523),
            "carla-town-v0": (-114.81579500772153, 2440.1772022247314),
            "bullet-maze2d-open-v0": (8.75, 64.15),
            "bullet-maze2d-umaze-v0": (32.46, 153.99),
            "bullet-maze2d-medium-v0": (14.87, 238.05),
            "bullet-maze2d-large-v0": (1.82, 285.92),
        }
    )
    return table


D4RL_REF_SCORES: dict[str, tuple[float, float]] = _d4rl_table()
"""``{d4rl dataset name: (ref_min_score, ref_max_score)}`` from D4RL's ``d4rl/infos.py``."""

_VERSION_RE = re.compile(r"-v(\d+)$")


def _d4rl_candidates(name: str) -> list[str]:
    """Spellings of ``name`` to look up in the D4RL table, most specific first."""
    raw = str(name).strip()
    if raw.lower().startswith("d4rl/"):
        # Minari id "D4RL/door/human-v2" -> "door-human-v2"
        raw = raw[5:].replace("/", "-")
    base = Path(raw).name
    for suffix in (".hdf5", ".h5"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
    # D4RL's download files spell "hopper_medium_replay-v2.hdf5"; its dataset names use hyphens.
    key = base.lower().replace("_", "-")
    return [key] if _VERSION_RE.search(key) else [key + "-v0", key]


def d4rl_reference(name: str | None) -> tuple[float, float] | None:
    """D4RL's (ref_min, ref_max) for a dataset name, file name or ``D4RL/...`` Minari id, or None.

    An exact name wins; otherwise the same task and dataset at any version (D4RL keeps a task's
    references across versions), e.g. Minari's ``D4RL/door/human-v2`` uses ``door-human-v1``.
    """
    if not name:
        return None
    for key in _d4rl_candidates(name):
        if key in D4RL_REF_SCORES:
            return D4RL_REF_SCORES[key]
        stem = _VERSION_RE.sub("", key)
        versions = sorted(
            (int(m.group(1)), k)
            for k in D4RL_REF_SCORES
            if (m := _VERSION_RE.search(k)) and _VERSION_RE.sub("", k) == stem
        )
        if versions:
            return D4RL_REF_SCORES[versions[-1][1]]
    return None


def reference_scores(
    name: str | None,
    meta_min: float | None,
    meta_max: float | None,
    override_min: float | None = None,
    override_max: float | None = None,
) -> tuple[float | None, float | None, str | None]:
    """``(ref_min, ref_max, source)`` for normalizing scores on dataset ``name``.

    Each bound is taken from the first of: the user's override, the dataset metadata, the D4RL table.
    ``source`` is ``"user"``, ``"dataset metadata"``, ``"D4RL table"``, or None when no bound is known;
    when the two bounds come from different places both are named, e.g. ``"user + dataset metadata"``
    (a user who gives only ``--ref-max-score`` keeps the dataset's minimum).
    """
    table = d4rl_reference(name)
    candidates = [
        ("user", override_min, override_max),
        ("dataset metadata", meta_min, meta_max),
        ("D4RL table", *(table if table is not None else (None, None))),
    ]

    def first(index: int) -> tuple[float | None, str | None]:
        for source, *values in candidates:
            if values[index] is not None:
                return float(values[index]), source
        return None, None

    ref_min, min_source = first(0)
    ref_max, max_source = first(1)
    used = {min_source, max_source}
    sources = [source for source, *_ in candidates if source in used]  # in order of precedence
    source = " + ".join(sources) if sources else None
    if ref_min is not None and ref_max is not None and ref_max == ref_min:
        raise UserError(
            f"reference scores for {name or 'the dataset'} are equal ({ref_min}); "
            "pass distinct --ref-min-score and --ref-max-score"
        )
    return ref_min, ref_max, source


# --------------------------------------------------------------------------------------- evaluation envs


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
            dataset = _VERSION_RE.sub("", parts[2].lower())
            task = {"pointmaze": "maze2d"}.get(task, task)
            return _from_d4rl_name(f"{task}-{dataset}")
        return None
    # A D4RL dataset name or file path: "hopper-medium-v2", ".../hopper_medium_replay-v2.hdf5".
    return _from_d4rl_name(_d4rl_candidates(name)[0])


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


# ------------------------------------------------------------------------------------- bundled datasets


def bundled_root() -> Path:
    """The bundled datasets folder: ``$OFFRL_DATASETS``, else the repository's ``datasets/``."""
    env = os.environ.get("OFFRL_DATASETS")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "datasets"


def list_bundled(root: str | Path | None = None) -> list[str]:
    """Ids of the datasets present under the bundled root (``offrl/pendulum/medium-v0``, ...)."""
    root = Path(root) if root is not None else bundled_root()
    if not root.is_dir():
        return []
    ids = []
    for metadata in root.glob("**/data/metadata.json"):
        dataset_dir = metadata.parent.parent
        if dataset_dir.name.startswith("."):  # a half-written temporary sibling
            continue
        ids.append(dataset_dir.relative_to(root).as_posix())
    return sorted(ids)


def bundled_path(name: str, root: str | Path | None = None) -> Path | None:
    """The folder of bundled dataset ``name`` (accepts ``cartpole/medium`` short forms), or None."""
    root = Path(root) if root is not None else bundled_root()
    available = list_bundled(root)
    if name in available:
        return root / name
    for full in available:
        short = full.removeprefix("offrl/")
        if name in (short, _VERSION_RE.sub("", short)):
            return root / full
    return None
