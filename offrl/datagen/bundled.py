"""The bundled datasets (recipes' ``datasets`` section): :func:`make_bundled` rolls a recipe's policy out
and writes a Minari 0.5 dataset whose metadata carries the recipe and the env's reference scores:

- ``ref_min_score``: mean return of a uniformly random policy, ``ref_max_score``: mean return of the
  noise-free expert, each over ``references.<env>.episodes`` episodes with their own seeds (disjoint from
  the data's), as D4RL defines its references.

Byte-identical for the same seed and the same numpy / gymnasium / h5py. ``offrl datasets make NAME``
regenerates one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np

from offrl.data.catalog import bundled_root
from offrl.data.minari_writer import write_minari_dataset
from offrl.datagen.marl import is_marl_recipe, make_marl_dataset
from offrl.datagen.on_demand import make_on_demand
from offrl.datagen.recipes import (
    is_on_demand,
    list_recipes,
    load_recipes,
    recipe_actors,
    recipes_path,
    resolve_name,
)
from offrl.datagen.rollout import generator_versions, recipe_episodes, reference_returns
from offrl.errors import UserError

__all__ = ["make_all", "make_bundled"]


def make_bundled(name: str, root: str | Path | None = None) -> Path:
    """Regenerate bundled dataset ``name`` from its recipe under ``root`` (default: the bundled root).

    Returns the dataset folder (``<root>/<name>``, holding ``data/``). Byte-identical for the same seed
    and the same numpy / gymnasium / h5py versions.
    """
    recipes, references = load_recipes()
    if name not in recipes and is_on_demand(name):
        return make_on_demand(name, root)
    if name not in recipes and is_marl_recipe(name):
        return make_marl_dataset(name, root)
    recipe = recipes[resolve_name(name, recipes)]
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
        # The label names the policies' module as it was when the bundled datasets were recorded: their
        # metadata (and bytes) stay as they are.
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
    actors = {rel: actor for rel, (actor, _) in recipe_actors(recipe).items()}
    try:
        path = write_minari_dataset(
            root / recipe.name,
            recipe_episodes(recipe, env, actors),
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


def make_all(root: str | Path | None = None, names: Sequence[str] | None = None) -> list[Path]:
    """Regenerate every bundled dataset (or just ``names``)."""
    return [make_bundled(name, root) for name in (names or list_recipes())]
