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
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import yaml

from offrl.data.minari_writer import Episode, write_minari_dataset
from offrl.data.policies import BehaviourPolicy, make_policy
from offrl.errors import UserError

__all__ = [
    "Recipe",
    "generator_versions",
    "load_recipes",
    "list_on_demand",
    "list_recipes",
    "load_on_demand",
    "make_on_demand",
    "make_all",
    "make_bundled",
    "recipes_path",
    "reference_returns",
    "rollout",
]

_RESET_SEED_STRIDE = 1_000_000  # episode i of a recipe with seed s resets with s * stride + i


@dataclass(frozen=True)
class Recipe:
    """How one bundled dataset is made (one entry of ``datasets/recipes.yaml``)."""

    name: str  # Minari-style id, e.g. "offrl/pendulum/medium-v0"
    env_id: str
    policy: str  # "random" or "expert"
    seed: int
    episodes: int | None = None  # a fixed number of episodes ...
    min_transitions: int | None = None  # ... or whole episodes until at least this many transitions
    # Noise: a number, or [start, end] for a per-episode linear schedule (the "mixed" flavour).
    epsilon: float | tuple[float, float] = 0.0
    noise_std: float | tuple[float, float] = 0.0
    description: str = ""

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
    if entry["policy"] not in ("random", "expert"):
        raise UserError(f"{where}: policy must be 'random' or 'expert', got {entry['policy']!r}")
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
    )


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


def make_on_demand(name: str, root: str | Path | None = None) -> Path:
    """Generate on-demand dataset ``name`` under ``root`` (default ``$MINARI_DATASETS_PATH``), where
    ``load_dataset(name)`` finds it; an existing copy with the same recipe is kept (the cache)."""
    import json

    from offrl.data.catalog import d4rl_reference, make_env
    from offrl.data.minari import minari_root

    recipes = load_on_demand()
    recipe, task = recipes[_resolve_name(name, {k: v[0] for k, v in recipes.items()})]
    refs = d4rl_reference(f"{task}-random-v2")
    if refs is None:
        raise UserError(f"{recipes_path()}: on_demand.{recipe.name}: unknown D4RL task {task!r}")
    root = Path(root) if root is not None else minari_root()
    target = root / recipe.name
    recipe_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(recipe).items()}
    meta_path = target / "data" / "metadata.json"
    if meta_path.is_file():
        try:
            if json.loads(meta_path.read_text(encoding="utf-8")).get("offrl_recipe") == recipe_dict:
                return target
        except (OSError, ValueError):
            pass  # unreadable: regenerate
    env = make_env(recipe.env_id)  # a missing mujoco extra is a UserError naming it
    extra = {
        "ref_min_score": float(refs[0]),
        "ref_max_score": float(refs[1]),
        "algorithm_name": f"{recipe.policy} policy (offrl.data.policies)",
        "author": ["offrl"],
        "description": recipe.description,
        "offrl_recipe": recipe_dict,
        "offrl_generator_versions": generator_versions(),
        "offrl_references": {"source": "D4RL table", "task": task,
                             "ref_min_score": "D4RL random score", "ref_max_score": "D4RL expert score"},
    }
    try:
        return write_minari_dataset(target, _episodes(recipe, env), dataset_id=recipe.name, env_spec=env.spec,
                                    observation_space=env.observation_space, action_space=env.action_space,
                                    extra_metadata=extra)
    except OSError as exc:
        raise UserError(f"{exc.filename or root}: cannot write the dataset ({exc.strerror}); use --root DIR "
                        "(or MINARI_DATASETS_PATH)") from None
    finally:
        env.close()


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


def _episodes(recipe: Recipe, env: gym.Env) -> Iterator[Episode]:
    rng = np.random.default_rng(recipe.seed)
    total = recipe.episodes if recipe.episodes is not None else 0
    index = steps = 0
    while True:
        if recipe.episodes is not None and index >= recipe.episodes:
            return
        if recipe.min_transitions is not None and steps >= recipe.min_transitions:
            return
        epsilon, noise_std = recipe.noise_at(index, total)
        policy = make_policy(recipe.env_id, recipe.policy, epsilon=epsilon, noise_std=noise_std)
        episode = rollout(env, policy, rng, recipe.seed * _RESET_SEED_STRIDE + index)
        steps += episode.total_steps
        index += 1
        yield episode


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
    recipe_dict = asdict(recipe)
    recipe_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe_dict.items()}
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
    try:
        path = write_minari_dataset(
            root / recipe.name,
            _episodes(recipe, env),
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
