"""Generate offrl's bundled datasets from their recipes (``datasets/recipes.yaml``).

Each recipe names an env, a scripted behaviour policy (:mod:`offrl.data.policies`) with its noise, a
size and a seed. :func:`make_bundled` rolls the policy out and writes a Minari 0.5 dataset whose metadata
carries the recipe and the env's reference scores:

- ``ref_min_score``: mean return of a uniformly random policy, ``ref_max_score``: mean return of the
  noise-free expert, each over ``references.<env>.episodes`` episodes with their own seeds (disjoint from
  the data's), as D4RL defines its references.

Everything random is derived from the recipe's seed: episode ``i`` resets the env with
``seed * 1_000_000 + i`` (recorded in the episode's ``seed`` attribute), and the policy draws from
``numpy.random.default_rng(seed)``. With the same numpy / gymnasium / h5py the output is byte-identical.

Run ``python -m offrl.data.generate [NAME ...]`` (or ``offrl datasets make NAME``) to regenerate.

On-demand recipes (section ``on_demand``: the MuJoCo datasets) are generated into
``$MINARI_DATASETS_PATH`` by :func:`make_on_demand` and reused while their recipe and behaviour
checkpoints are unchanged. Besides ``random``, their behaviour can be a trained actor committed under
``datasets/behaviour/`` (:func:`offrl.data.policies.load_actor`):

- ``policy: checkpoint`` + ``checkpoint: behaviour/<env>/<file>.npz`` (medium / expert flavours), with
  ``sample: true`` for the policy's own stochastic actions, and ``noise_std`` / ``epsilon`` on top;
- ``policy: replay`` + ``segments: [{steps: N, checkpoint: FILE | null}, ...]`` (medium-replay): the
  training run's replay buffer, re-created as rollouts of the run's snapshots in order, each snapshot
  taking the share of the transitions that the run collected with (about) its weights (``null``: the
  uniformly random warm-up). See ``datasets/README.md`` for why.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import yaml

from offrl.data.minari_writer import Episode, write_minari_dataset
from offrl.data.policies import ACTOR_FORMAT, ActorPolicy, BehaviourPolicy, load_actor, make_policy
from offrl.errors import UserError

__all__ = [
    "Recipe",
    "Segment",
    "actor_returns",
    "dataset_from_actor",
    "export_actor",
    "generator_versions",
    "load_recipes",
    "list_on_demand",
    "list_recipes",
    "load_on_demand",
    "make_on_demand",
    "on_demand_status",
    "make_all",
    "make_bundled",
    "recipes_path",
    "reference_returns",
    "rollout",
]

_RESET_SEED_STRIDE = 1_000_000  # episode i of a recipe with seed s resets with s * stride + i


@dataclass(frozen=True)
class Segment:
    """One piece of a ``replay`` recipe: ``steps`` env steps of the training run collected by the actor
    ``checkpoint`` (a path relative to the recipes file; ``None``: uniformly random actions)."""

    steps: int
    checkpoint: str | None = None


# Recipe fields added for the on-demand MuJoCo recipes; left out of a recipe's metadata at their defaults,
# so the bundled datasets' metadata (and bytes) stay as they were.
_OPTIONAL_FIELDS = {"checkpoint": None, "sample": False, "segments": None}
_POLICIES = ("random", "expert", "checkpoint", "replay")


@dataclass(frozen=True)
class Recipe:
    """How one bundled dataset is made (one entry of ``datasets/recipes.yaml``)."""

    name: str  # Minari-style id, e.g. "offrl/pendulum/medium-v0"
    env_id: str
    policy: str  # "random", "expert" (scripted), "checkpoint" (a trained actor) or "replay" (segments)
    seed: int
    episodes: int | None = None  # a fixed number of episodes ...
    min_transitions: int | None = None  # ... or whole episodes until at least this many transitions
    # Noise: a number, or [start, end] for a per-episode linear schedule (the "mixed" flavour).
    epsilon: float | tuple[float, float] = 0.0
    noise_std: float | tuple[float, float] = 0.0
    description: str = ""
    checkpoint: str | None = None  # policy "checkpoint": actor file, relative to the recipes file's folder
    sample: bool = False  # trained actors: sample the policy's own TanhNormal instead of its mean action
    segments: tuple[Segment, ...] | None = None  # policy "replay": the run's snapshots, in order

    def to_dict(self) -> dict[str, Any]:
        """The recipe as stored in a dataset's metadata (``offrl_recipe``); the on-demand fields only when set."""
        out = {k: (list(v) if isinstance(v, tuple) and k != "segments" else v) for k, v in asdict(self).items()}
        if self.segments is not None:
            out["segments"] = [asdict(seg) for seg in self.segments]
        for key, default in _OPTIONAL_FIELDS.items():
            if out[key] == default:
                del out[key]
        return out

    def checkpoints(self) -> list[str]:
        """The behaviour checkpoint files this recipe reads (relative paths), in order, without repeats."""
        files = [self.checkpoint] if self.checkpoint else []
        files += [seg.checkpoint for seg in self.segments or () if seg.checkpoint]
        return list(dict.fromkeys(files))

    def noise_at(self, episode: int, total: int) -> tuple[float, float]:
        """(epsilon, noise_std) of episode ``episode`` out of ``total``."""

        def value(spec: float | tuple[float, float]) -> float:
            if isinstance(spec, tuple):
                frac = episode / max(total - 1, 1)
                return float(spec[0] + (spec[1] - spec[0]) * frac)
            return float(spec)

        return value(self.epsilon), value(self.noise_std)


@dataclass(frozen=True)
class ReferenceSpec:
    """How an env's reference scores are measured."""

    env_id: str
    episodes: int
    seed: int


def recipes_path() -> Path:
    """``recipes.yaml`` of the bundled datasets (under :func:`offrl.data.catalog.bundled_root`, else the repo's)."""
    from offrl.data.catalog import bundled_root

    candidate = bundled_root() / "recipes.yaml"
    if candidate.is_file():
        return candidate
    return Path(__file__).resolve().parents[2] / "datasets" / "recipes.yaml"


def _noise_spec(value: Any, where: str) -> float | tuple[float, float]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise UserError(f"{where}: a noise schedule is [start, end]; got {value!r}")
        return (float(value[0]), float(value[1]))
    return float(value)


def _parse_recipe(name: str, entry: Any, where: str) -> Recipe:
    """One recipe entry, checked key by key (a mistake names the entry and the fix)."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping of recipe keys")
    known = {f for f in Recipe.__dataclass_fields__ if f != "name"}
    unknown = set(entry) - known
    if unknown:
        raise UserError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    missing = {"env_id", "policy", "seed"} - set(entry)
    if missing:
        raise UserError(f"{where}: missing keys {sorted(missing)}")
    if entry["policy"] not in _POLICIES:
        raise UserError(f"{where}: policy must be one of {', '.join(repr(p) for p in _POLICIES)}, got "
                        f"{entry['policy']!r}")
    if entry["policy"] == "expert" and entry["env_id"] not in ("CartPole-v1", "Pendulum-v1"):
        raise UserError(f"{where}: the scripted expert covers CartPole-v1 and Pendulum-v1 only; for "
                        f"{entry['env_id']} use policy: checkpoint with a trained actor")
    checkpoint, segments = entry.get("checkpoint"), _parse_segments(entry.get("segments"), where)
    if (entry["policy"] == "checkpoint") != (checkpoint is not None):
        raise UserError(f"{where}: 'checkpoint: FILE' goes with (and only with) policy: checkpoint")
    if (entry["policy"] == "replay") != (segments is not None):
        raise UserError(f"{where}: 'segments' goes with (and only with) policy: replay")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise UserError(f"{where}: checkpoint must be a file path relative to the recipes file, got {checkpoint!r}")
    if not isinstance(entry.get("sample", False), bool):
        raise UserError(f"{where}: sample must be true or false, got {entry['sample']!r}")
    if entry.get("sample") and entry["policy"] not in ("checkpoint", "replay"):
        raise UserError(f"{where}: 'sample' applies to trained actors (policy: checkpoint or replay)")
    if segments is not None and entry.get("min_transitions") is None:
        raise UserError(f"{where}: a replay recipe is sized by 'min_transitions', not 'episodes'")
    if (entry.get("episodes") is None) == (entry.get("min_transitions") is None):
        raise UserError(f"{where}: give exactly one of 'episodes' or 'min_transitions'")
    if entry.get("episodes") is None and any(
        isinstance(entry.get(k), (list, tuple)) for k in ("epsilon", "noise_std")
    ):
        raise UserError(f"{where}: a [start, end] noise schedule needs 'episodes', not 'min_transitions'")
    return Recipe(
        name=name,
        env_id=str(entry["env_id"]),
        policy=str(entry["policy"]),
        seed=int(entry["seed"]),
        episodes=entry.get("episodes"),
        min_transitions=entry.get("min_transitions"),
        epsilon=_noise_spec(entry.get("epsilon", 0.0), where),
        noise_std=_noise_spec(entry.get("noise_std", 0.0), where),
        description=str(entry.get("description", "")).strip(),
        checkpoint=checkpoint,
        sample=bool(entry.get("sample", False)),
        segments=segments,
    )


def _parse_segments(value: Any, where: str) -> tuple[Segment, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: segments must be a non-empty list of {{steps: N, checkpoint: FILE or null}}")
    out = []
    for i, seg in enumerate(value):
        if not isinstance(seg, dict) or set(seg) - {"steps", "checkpoint"} or "steps" not in seg:
            raise UserError(f"{where}: segments[{i}] must be {{steps: N, checkpoint: FILE or null}}, got {seg!r}")
        steps, ckpt = seg["steps"], seg.get("checkpoint")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
            raise UserError(f"{where}: segments[{i}].steps must be a positive integer, got {steps!r}")
        if ckpt is not None and not isinstance(ckpt, str):
            raise UserError(f"{where}: segments[{i}].checkpoint must be a file path or null, got {ckpt!r}")
        out.append(Segment(steps=steps, checkpoint=ckpt))
    return tuple(out)


def load_recipes(path: str | Path | None = None) -> tuple[dict[str, Recipe], dict[str, ReferenceSpec]]:
    """Parse the recipes file into ``{name: Recipe}`` and ``{env_id: ReferenceSpec}``."""
    path = Path(path) if path is not None else recipes_path()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(
            f"{path}: cannot read the dataset recipes ({exc.strerror}); restore datasets/recipes.yaml"
        ) from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(exc).split())}); fix the file") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping with 'references' and 'datasets'; fix the file")
    recipes = {name: _parse_recipe(name, entry, f"{path}: datasets.{name}")
               for name, entry in (raw.get("datasets") or {}).items()}
    references = {
        env_id: ReferenceSpec(env_id=env_id, episodes=int(spec["episodes"]), seed=int(spec["seed"]))
        for env_id, spec in (raw.get("references") or {}).items()
    }
    return recipes, references


def list_recipes() -> list[str]:
    """Names of the bundled datasets that have a recipe, e.g. ``offrl/cartpole/medium-v0``."""
    return sorted(load_recipes()[0])


def load_on_demand(path: str | Path | None = None) -> dict[str, tuple[Recipe, str]]:
    """The ``on_demand`` recipes (not bundled; generated into ``$MINARI_DATASETS_PATH`` when asked for):
    ``{name: (Recipe, D4RL task whose reference scores apply)}``."""
    path = Path(path) if path is not None else recipes_path()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        load_recipes(path)  # raises the UserError that names the problem
        raise
    out: dict[str, tuple[Recipe, str]] = {}
    for name, entry in (raw.get("on_demand") or {}).items():
        where = f"{path}: on_demand.{name}"
        entry = dict(entry or {})
        task = entry.pop("d4rl_reference", None)
        if not task:
            raise UserError(f"{where}: missing 'd4rl_reference' (the D4RL task whose reference scores apply)")
        out[name] = (_parse_recipe(name, entry, where), str(task))
    return out


def list_on_demand() -> list[str]:
    """Names of the on-demand recipes, e.g. ``offrl/hopper/random-v0``."""
    return sorted(load_on_demand())


def make_on_demand(name: str, root: str | Path | None = None, *, transitions: int | None = None) -> Path:
    """Generate on-demand dataset ``name`` under ``root`` (default ``$MINARI_DATASETS_PATH``), where
    ``load_dataset(name)`` finds it; an existing copy made from the same recipe and the same behaviour
    checkpoints (by SHA-256) is kept (the cache).

    ``transitions``: make a smaller (or larger) version: whole episodes until at least that many
    transitions, in place of the recipe's size (a replay recipe keeps its segments' shares). It is written
    under the same id and recorded in its metadata; a later call without it regenerates the full dataset.
    """
    import json

    from offrl.data.catalog import d4rl_reference, make_env
    from offrl.data.minari import minari_root

    recipes = load_on_demand()
    recipe, task = recipes[_resolve_name(name, {k: v[0] for k, v in recipes.items()})]
    if transitions is not None:
        if isinstance(transitions, bool) or not isinstance(transitions, int) or transitions <= 0:
            raise UserError(f"--transitions: must be a positive integer, got {transitions!r}")
        if any(isinstance(v, tuple) for v in (recipe.epsilon, recipe.noise_std)):
            raise UserError(f"--transitions: {recipe.name} has a per-episode noise schedule, which fixes its "
                            "episode count; make it at its own size")
        recipe = replace(recipe, episodes=None, min_transitions=int(transitions))
    refs = d4rl_reference(f"{task}-random-v2")
    if refs is None:
        raise UserError(f"{recipes_path()}: on_demand.{recipe.name}: unknown D4RL task {task!r}")
    root = Path(root) if root is not None else minari_root()
    target = root / recipe.name
    actors = _load_recipe_actors(recipe)  # a missing or damaged checkpoint fails here, before any writing
    recipe_dict = recipe.to_dict()
    behaviour = {rel: digest for rel, (_, digest) in actors.items()}
    meta_path = target / "data" / "metadata.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("offrl_recipe") == recipe_dict and meta.get("offrl_behaviour", {}) == behaviour:
                return target
        except (OSError, ValueError):
            pass  # unreadable: regenerate
    env = make_env(recipe.env_id)  # a missing mujoco extra is a UserError naming it
    for rel, (actor, _) in actors.items():
        problem = _fit_problem(actor, env)
        if problem:
            env.close()
            raise UserError(f"{recipes_path().parent / rel}: {problem}; fix on_demand.{recipe.name} in "
                            f"{recipes_path()}")
    extra = {
        "ref_min_score": float(refs[0]),
        "ref_max_score": float(refs[1]),
        "algorithm_name": _algorithm_name(recipe, actors),
        "author": ["offrl"],
        "description": recipe.description,
        "offrl_recipe": recipe_dict,
        "offrl_generator_versions": _with_mujoco(generator_versions()),
        "offrl_references": {"source": "D4RL table", "task": task,
                             "ref_min_score": "D4RL random score", "ref_max_score": "D4RL expert score"},
    }
    if behaviour:
        extra["offrl_behaviour"] = behaviour
    try:
        return write_minari_dataset(target, _episodes(recipe, env, {k: a for k, (a, _) in actors.items()}),
                                    dataset_id=recipe.name, env_spec=env.spec,
                                    observation_space=env.observation_space, action_space=env.action_space,
                                    extra_metadata=extra)
    except OSError as exc:
        raise UserError(f"{exc.filename or root}: cannot write the dataset ({exc.strerror}); use --root DIR "
                        "(or MINARI_DATASETS_PATH)") from None
    finally:
        env.close()


def _with_mujoco(versions: dict[str, str]) -> dict[str, str]:
    """``versions`` plus MuJoCo's, which also fixes the bytes of MuJoCo datasets (when installed)."""
    try:
        import mujoco
    except ImportError:
        return versions
    return {**versions, "mujoco": str(mujoco.__version__)}


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_recipe_actors(recipe: Recipe) -> dict[str, tuple[ActorPolicy, str]]:
    """``{relative path: (actor, sha256)}`` of the recipe's behaviour checkpoints (resolved against the
    recipes file's folder). A sidecar ``<file>.json`` with ``weights_sha256`` must match the file."""
    import json

    base = recipes_path().parent
    out: dict[str, tuple[ActorPolicy, str]] = {}
    for rel in recipe.checkpoints():
        path = base / rel
        where = f"behaviour checkpoint of {recipe.name} ({recipes_path()})"
        actor = load_actor(path, what=where)
        digest = _sha256(path)
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                expected = json.loads(sidecar.read_text(encoding="utf-8")).get("weights_sha256")
            except (OSError, ValueError):
                raise UserError(f"{sidecar}: unreadable metadata of a behaviour checkpoint; restore it (git "
                                "checkout datasets/behaviour)") from None
            if expected and expected != digest:
                raise UserError(f"{path}: content does not match its metadata's weights_sha256 (changed or "
                                "damaged); restore it (git checkout datasets/behaviour) or re-export both")
        out[rel] = (actor, digest)
    return out


def _fit_problem(actor: ActorPolicy, env: gym.Env) -> str | None:
    """Why ``actor`` cannot drive ``env`` (observation / action sizes, action bounds), or None."""
    obs_space, act_space = env.observation_space, env.action_space
    env_name = env.spec.id if env.spec is not None else type(env).__name__
    if not isinstance(act_space, gym.spaces.Box) or obs_space.shape != (actor.obs_dim,) or (
            act_space.shape != (actor.act_dim,)):
        return (f"actor for {actor.obs_dim}-dim observations and {actor.act_dim}-dim actions does not fit "
                f"{env_name} (observations {obs_space.shape}, actions {act_space})")
    if not (np.allclose(actor.low, act_space.low) and np.allclose(actor.high, act_space.high)):
        return f"actor's action bounds differ from {env_name}'s"
    return None


def _algorithm_name(recipe: Recipe, actors: dict[str, tuple[ActorPolicy, str]]) -> str:
    if recipe.policy in ("random", "expert"):
        return f"{recipe.policy} policy (offrl.data.policies)"
    algos = sorted({str(a.meta.get("algo", "trained actor")) for a, _ in actors.values()})
    how = "sampled" if recipe.sample else "deterministic"
    if recipe.policy == "replay":
        return f"{', '.join(algos)} training-run snapshots ({how} actions): replay-buffer re-creation"
    return f"{', '.join(algos)} actor ({how} actions)"


def on_demand_status(root: str | Path | None = None) -> list[dict[str, Any]]:
    """One entry per on-demand recipe (``offrl datasets list``): ``name``, ``env_id``, ``policy``, ``size``
    and ``status``: ``"ready"`` (generated from the current recipe and checkpoints, at its full size),
    ``"stale"`` (a copy from another recipe, size or checkpoint: ``offrl datasets make NAME`` regenerates
    it) or ``"not generated"``, with ``path`` (the dataset folder under ``root``)."""
    import json

    from offrl.data.minari import minari_root

    root = Path(root) if root is not None else minari_root()
    base = recipes_path().parent
    out = []
    for name, (recipe, _task) in sorted(load_on_demand().items()):
        path = root / name
        status = "not generated"
        meta_path = path / "data" / "metadata.json"
        if meta_path.is_file():
            status = "stale"
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                behaviour = {rel: _sha256(base / rel) for rel in recipe.checkpoints() if (base / rel).is_file()}
                if meta.get("offrl_recipe") == recipe.to_dict() and meta.get("offrl_behaviour", {}) == behaviour:
                    status = "ready"
            except (OSError, ValueError):
                pass
        size = (f"{recipe.min_transitions} transitions" if recipe.min_transitions is not None
                else f"{recipe.episodes} episodes")
        out.append({"name": name, "env_id": recipe.env_id, "policy": recipe.policy, "size": size,
                    "status": status, "path": str(path)})
    return out


def rollout(env: gym.Env, policy: BehaviourPolicy, rng: np.random.Generator, reset_seed: int) -> Episode:
    """Run ``policy`` for one full episode (to termination or the time limit) from ``reset_seed``."""
    obs, _ = env.reset(seed=reset_seed)
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    while True:
        action = policy(obs, rng)
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        terminations.append(terminated)
        truncations.append(truncated)
        if terminated or truncated:
            break
    # Minari stores observations in the space's dtype and actions as the env receives them.
    action_dtype = np.int64 if isinstance(env.action_space, gym.spaces.Discrete) else env.action_space.dtype
    return Episode(
        observations=np.asarray(observations, dtype=env.observation_space.dtype),
        actions=np.asarray(actions, dtype=action_dtype),
        rewards=np.asarray(rewards, dtype=np.float64),
        terminations=np.asarray(terminations, dtype=bool),
        truncations=np.asarray(truncations, dtype=bool),
        seed=reset_seed,
    )


@functools.lru_cache(maxsize=16)
def reference_returns(env_id: str, kind: str, episodes: int, seed: int) -> tuple[float, ...]:
    """Returns of ``episodes`` episodes of the ``kind`` (``random`` / ``expert``) policy: the references."""
    env = gym.make(env_id)
    policy = make_policy(env_id, kind)
    # The two references use different streams so neither depends on the other's episode count.
    rng = np.random.default_rng([seed, 0 if kind == "random" else 1])
    returns = [float(rollout(env, policy, rng, seed + i).rewards.sum()) for i in range(episodes)]
    env.close()
    return tuple(returns)


def _episodes(recipe: Recipe, env: gym.Env, actors: dict[str, ActorPolicy] | None = None) -> Iterator[Episode]:
    """The recipe's episodes: episode ``i`` resets with ``seed * 1_000_000 + i``; every random number comes
    from one ``numpy.random.default_rng(seed)`` stream."""
    rng = np.random.default_rng(recipe.seed)
    if recipe.policy == "replay":
        yield from _replay_episodes(recipe, env, actors or {}, rng)
        return
    total = recipe.episodes if recipe.episodes is not None else 0
    index = steps = 0
    while True:
        if recipe.episodes is not None and index >= recipe.episodes:
            return
        if recipe.min_transitions is not None and steps >= recipe.min_transitions:
            return
        epsilon, noise_std = recipe.noise_at(index, total)
        if recipe.policy == "checkpoint":
            assert actors is not None and recipe.checkpoint is not None
            policy: BehaviourPolicy = actors[recipe.checkpoint].with_noise(
                sample=recipe.sample, noise_std=noise_std, epsilon=epsilon)
        else:
            policy = make_policy(recipe.env_id, recipe.policy, epsilon=epsilon, noise_std=noise_std)
        episode = rollout(env, policy, rng, recipe.seed * _RESET_SEED_STRIDE + index)
        steps += episode.total_steps
        index += 1
        yield episode


def segment_targets(segments: Sequence[Segment], transitions: int) -> list[int]:
    """Cumulative transition counts at which each replay segment ends: segment ``k`` records whole
    episodes until the dataset holds ``ceil(transitions * (steps_0 + ... + steps_k) / sum(steps))``."""
    total = sum(seg.steps for seg in segments)
    cumulative = np.cumsum([seg.steps for seg in segments])
    return [-(-int(transitions) * int(c) // int(total)) for c in cumulative]


def _replay_episodes(recipe: Recipe, env: gym.Env, actors: dict[str, ActorPolicy],
                     rng: np.random.Generator) -> Iterator[Episode]:
    assert recipe.segments is not None and recipe.min_transitions is not None
    index = steps = 0
    for seg, target in zip(recipe.segments, segment_targets(recipe.segments, recipe.min_transitions), strict=True):
        if seg.checkpoint is None:
            policy: BehaviourPolicy = make_policy(recipe.env_id, "random")
        else:
            policy = actors[seg.checkpoint].with_noise(sample=recipe.sample, noise_std=float(recipe.noise_std),
                                                       epsilon=float(recipe.epsilon))
        while steps < target:
            episode = rollout(env, policy, rng, recipe.seed * _RESET_SEED_STRIDE + index)
            steps += episode.total_steps
            index += 1
            yield episode


def dataset_from_actor(checkpoint: str | Path, *, episodes: int, env_id: str | None = None, noise: float = 0.0,
                       seed: int = 0, name: str | None = None, root: str | Path | None = None,
                       ref_min: float | None = None, ref_max: float | None = None) -> Path:
    """``offrl datasets make --policy FILE.npz``: roll out an actor-only checkpoint (``datasets/behaviour/``
    files, or one written by ``offrl datasets export-actor``) for ``episodes`` episodes.

    Same conventions as :func:`offrl.data.from_run.dataset_from_policy`: the deterministic action plus
    Gaussian ``noise`` x half the action range, clipped; episode ``i`` resets with ``seed + i``; the noise
    draws from ``numpy.random.default_rng(seed)``. Env: ``env_id``, else the one the checkpoint names.
    References: ``ref_min``/``ref_max``, else D4RL's for the checkpoint's ``d4rl_reference`` task, if any.
    """
    from offrl.data.catalog import d4rl_reference, make_env
    from offrl.data.from_run import _noisy, _refs_metadata, _write

    if int(episodes) <= 0:
        raise UserError(f"--episodes: must be a positive integer, got {episodes}")
    if not 0.0 <= float(noise):
        raise UserError(f"--noise: must be >= 0, got {noise}")
    path = Path(checkpoint)
    actor = load_actor(path, what="actor checkpoint (--policy)")
    env_id = env_id or actor.meta.get("env_id")
    if not env_id:
        raise UserError(f"--policy {path}: the checkpoint names no env; pass --env ID")
    env = make_env(env_id)
    try:
        problem = _fit_problem(actor, env)
        if problem:
            raise UserError(f"--policy {path}: {problem}; pass the env it was trained in with --env")
        task = actor.meta.get("d4rl_reference")
        table = d4rl_reference(f"{task}-random-v2") if task else None
        refs = (table[0], table[1], "D4RL table") if table else (None, None, None)
        rng = np.random.default_rng(seed)
        space = env.action_space

        def policy(obs: np.ndarray, _rng: np.random.Generator) -> np.ndarray:
            return _noisy(actor.act(obs), space, float(noise), rng)

        def rollouts() -> Iterator[Episode]:
            for i in range(int(episodes)):
                yield rollout(env, policy, rng, int(seed) + i)

        name = name or f"offrl-runs/{path.parent.name}-{path.stem}/policy-v0"
        extra: dict[str, Any] = {
            "algorithm_name": f"{actor.meta.get('algo', 'offrl')} actor rollouts", "author": ["offrl"],
            "description": f"{episodes} episodes of {path} (noise {noise})",
            "offrl_source": {"kind": "actor", "checkpoint": str(path), "sha256": _sha256(path),
                             "step": actor.meta.get("training_steps"), "noise": float(noise), "seed": int(seed),
                             "episodes": int(episodes)}}
        extra.update(_refs_metadata(refs, ref_min, ref_max))
        return _write(name, root, rollouts(), env, extra)
    finally:
        env.close()


def _return_stats(returns: np.ndarray, seed: int, actions: str, refs: tuple[float, float] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"mean": float(returns.mean()), "std": float(returns.std()), "min": float(returns.min()),
                           "max": float(returns.max()), "episodes": len(returns), "reset_seeds": f"{seed} + i",
                           "actions": actions}
    if refs is not None:
        out["d4rl_normalized"] = float(100 * (returns.mean() - refs[0]) / (refs[1] - refs[0]))
    return out


EXPORT_EVAL_SEED = 900_000_000  # measured returns of exported actors: episode i resets with this + i


def actor_returns(actor: ActorPolicy, env_id: str, *, episodes: int = 20, seed: int = EXPORT_EVAL_SEED,
                  sample: bool = False, noise_std: float = 0.0, rng_seed: int = 0) -> np.ndarray:
    """Returns of ``episodes`` rollouts of ``actor`` in ``env_id`` (deterministic actions unless ``sample`` /
    ``noise_std``); episode ``i`` resets with ``seed + i``."""
    from offrl.data.catalog import make_env

    env = make_env(env_id)
    try:
        problem = _fit_problem(actor, env)
        if problem:
            raise UserError(f"--env {env_id}: {problem}")
        policy = actor.with_noise(sample=sample, noise_std=noise_std, epsilon=0.0)
        rng = np.random.default_rng(rng_seed)
        return np.array([rollout(env, policy, rng, seed + i).rewards.sum() for i in range(int(episodes))])
    finally:
        env.close()


def export_actor(checkpoint: str | Path, out: str | Path, *, env_id: str, episodes: int = 20,
                 seed: int = EXPORT_EVAL_SEED, d4rl_reference: str | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the actor of an offrl CQL/SAC trainer checkpoint as an actor-only checkpoint ``out`` (``.npz``)
    plus ``out`` with ``.json`` (its metadata: env, algorithm, training steps, run config and summary, the
    measured return of ``episodes`` episodes with deterministic and with sampled actions, ``weights_sha256``).
    Returns the metadata."""
    import json

    from omegaconf import OmegaConf

    from offrl.data.catalog import d4rl_reference as d4rl_table
    from offrl.data.policies import actor_from_trainer_checkpoint, save_actor
    from offrl.fsio import write_text_atomic
    from offrl.trainers.checkpoint import load_checkpoint

    checkpoint, out = Path(checkpoint), Path(out)
    if checkpoint.is_dir():  # a run folder
        checkpoint = checkpoint / "checkpoints" / "latest.pt"
    if out.suffix != ".npz":
        raise UserError(f"{out}: an actor checkpoint is written as a .npz file; name it <something>.npz")
    if not checkpoint.exists():
        raise UserError(f"{checkpoint}: no such trainer checkpoint; pass a run folder or its checkpoints/*.pt")
    refs = None
    if d4rl_reference is not None:
        refs = d4rl_table(f"{d4rl_reference}-random-v2")
        if refs is None:
            raise UserError(f"--d4rl-reference {d4rl_reference!r}: not a D4RL task (e.g. hopper, halfcheetah)")
    state = load_checkpoint(checkpoint)
    run_dir = checkpoint.parent.parent
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    if (run_dir / "summary.json").is_file():
        try:
            full_summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
            summary = {k: full_summary.get(k) for k in ("status", "steps", "wall_time", "updates_per_s")}
        except (OSError, ValueError):
            pass  # provenance only
    if (run_dir / "config.yaml").is_file():
        full = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
        assert isinstance(full, dict)
        config = {k: full.get(k) for k in ("algo", "seed", "batch_size", "optim_steps_per_batch", "cql", "online",
                                           "command") if k in full}
    activation = str(((config.get("cql") or {}).get("activation")) or "relu")
    scale_lb = float(((config.get("cql") or {}).get("scale_lb")) or 1e-4)
    actor = actor_from_trainer_checkpoint(checkpoint, activation=activation, scale_lb=scale_lb)
    returns = actor_returns(actor, env_id, episodes=episodes, seed=seed)
    sampled = actor_returns(actor, env_id, episodes=episodes, seed=seed, sample=True)
    cql_cfg = config.get("cql") or {}
    sac = float(cql_cfg.get("min_q_weight", 1.0)) == 0.0 and not cql_cfg.get("with_lagrange", False)
    meta: dict[str, Any] = {
        "format": ACTOR_FORMAT, "env_id": env_id,
        "algo": "SAC (offrl cql, min_q_weight=0)" if sac else f"offrl {state.get('algo')}",
        "training_steps": int(state.get("step", 0)), "env_steps": int(state.get("frames", 0)),
        "source_checkpoint": checkpoint.name, "run_config": config, "run_summary": summary,
        "measured_return": _return_stats(returns, seed, "deterministic (tanh of the mean)", refs),
        "measured_return_sampled": _return_stats(sampled, seed, "sampled from the policy (rng seed 0)", refs),
    }
    if refs is not None:
        meta["d4rl_reference"] = d4rl_reference
    meta.update(extra or {})
    actor.meta = meta
    try:
        save_actor(out, actor)
        sidecar = dict(meta, weights_sha256=_sha256(out), weights_file=out.name)
        write_text_atomic(out.with_suffix(".json"), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise UserError(f"{exc.filename or out}: cannot write the actor checkpoint ({exc.strerror}); choose "
                        "another output path") from None
    return sidecar


def _on_demand_name(name: str) -> bool:
    try:
        _resolve_name(name, {k: v[0] for k, v in load_on_demand().items()})
    except UserError:
        return False
    return True


def _resolve_name(name: str, recipes: dict[str, Recipe]) -> str:
    if name in recipes:
        return name
    # Accept the short forms "cartpole/medium" and "cartpole/medium-v0".
    for full in recipes:
        short = full.removeprefix("offrl/")
        if name in (short, short.rsplit("-v", 1)[0]):
            return full
    raise UserError(f"no recipe named {name!r}; choose one of: {', '.join(sorted(recipes))}")


def make_bundled(name: str, root: str | Path | None = None) -> Path:
    """Regenerate bundled dataset ``name`` from its recipe under ``root`` (default: the bundled root).

    Returns the dataset folder (``<root>/<name>``, holding ``data/``). Byte-identical for the same seed
    and the same numpy / gymnasium / h5py versions.
    """
    from offrl.data.catalog import bundled_root

    recipes, references = load_recipes()
    if name not in recipes and _on_demand_name(name):
        return make_on_demand(name, root)
    recipe = recipes[_resolve_name(name, recipes)]
    if recipe.env_id not in references:
        raise UserError(f"{recipes_path()}: no 'references' entry for {recipe.env_id}; add one")
    ref = references[recipe.env_id]
    ref_min = float(np.mean(reference_returns(ref.env_id, "random", ref.episodes, ref.seed)))
    ref_max = float(np.mean(reference_returns(ref.env_id, "expert", ref.episodes, ref.seed)))

    root = Path(root) if root is not None else bundled_root()
    env = gym.make(recipe.env_id)
    recipe_dict = recipe.to_dict()
    extra = {
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "num_episodes_average_score": ref.episodes,
        "algorithm_name": f"scripted {recipe.policy} policy (offrl.data.policies)",
        "author": ["offrl"],
        "description": recipe.description,
        "offrl_recipe": recipe_dict,
        # Bytes are reproducible for equal versions of these; the values are equal across versions
        # as long as numpy's generator streams and gymnasium's dynamics are unchanged.
        "offrl_generator_versions": generator_versions(),
        "offrl_references": {
            "env_id": ref.env_id,
            "episodes": ref.episodes,
            "seed": ref.seed,
            "ref_min_score": "mean return of a uniformly random policy",
            "ref_max_score": "mean return of the noise-free scripted expert",
        },
    }
    actors = {rel: actor for rel, (actor, _) in _load_recipe_actors(recipe).items()}
    try:
        path = write_minari_dataset(
            root / recipe.name,
            _episodes(recipe, env, actors),
            dataset_id=recipe.name,
            env_spec=env.spec,
            observation_space=env.observation_space,
            action_space=env.action_space,
            extra_metadata=extra,
        )
    except OSError as exc:  # not writable, a file in the way, disk full
        raise UserError(
            f"{exc.filename or root}: cannot write the dataset ({exc.strerror}); regenerate elsewhere with "
            "--root DIR (or OFFRL_DATASETS)"
        ) from None
    finally:
        env.close()
    return path


def generator_versions() -> dict[str, str]:
    """Versions of the libraries that determine a bundled dataset's bytes."""
    return {
        "numpy": np.__version__,
        "gymnasium": gym.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
    }


def make_all(root: str | Path | None = None, names: Sequence[str] | None = None) -> list[Path]:
    """Regenerate every bundled dataset (or just ``names``)."""
    return [make_bundled(name, root) for name in (names or list_recipes())]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m offrl.data.generate [NAME ...] [--root DIR]``: regenerate bundled datasets."""
    parser = argparse.ArgumentParser(prog="python -m offrl.data.generate", description=main.__doc__)
    parser.add_argument("names", nargs="*", help="recipe names (default: all)")
    parser.add_argument("--root", default=None, help="output root (default: the bundled datasets folder)")
    args = parser.parse_args(argv)
    try:
        for name in args.names or list_recipes():
            start = time.perf_counter()
            path = make_bundled(name, args.root)
            print(f"{name}: {path} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    except UserError as exc:
        print(f"offrl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
