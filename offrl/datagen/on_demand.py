"""On-demand datasets (recipes' ``on_demand`` section: the MuJoCo datasets): generated into
``$MINARI_DATASETS_PATH`` when asked for and reused while their recipe and behaviour checkpoints are
unchanged; their status for ``offrl datasets list``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from offrl.data.envs import make_env
from offrl.data.minari import minari_root
from offrl.data.minari_writer import write_minari_dataset
from offrl.data.references import d4rl_reference
from offrl.datagen.policies import ACTOR_ARITHMETIC, ActorPolicy, fit_problem
from offrl.datagen.recipes import (
    Recipe,
    file_sha256,
    load_on_demand,
    recipe_actors,
    recipes_path,
    resolve_name,
)
from offrl.datagen.rollout import generator_versions, recipe_episodes, with_mujoco
from offrl.errors import UserError

__all__ = ["make_on_demand", "on_demand_status"]


def make_on_demand(name: str, root: str | Path | None = None, *, transitions: int | None = None) -> Path:
    """Generate on-demand dataset ``name`` under ``root`` (default ``$MINARI_DATASETS_PATH``), where
    ``load_dataset(name)`` finds it; an existing copy made from the same recipe and the same behaviour
    checkpoints (by SHA-256) is kept (the cache).

    ``transitions``: make a smaller (or larger) version: whole episodes until at least that many
    transitions, in place of the recipe's size (a replay recipe keeps its segments' shares). It is written
    under the same id and recorded in its metadata; a later call without it regenerates the full dataset.
    """
    recipes = load_on_demand()
    recipe, task = recipes[resolve_name(name, {k: v[0] for k, v in recipes.items()})]
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
    actors = recipe_actors(recipe)  # a missing or damaged checkpoint fails here, before any writing
    recipe_dict = recipe.to_dict()
    behaviour = {rel: digest for rel, (_, digest) in actors.items()}
    meta_path = target / "data" / "metadata.json"
    if meta_path.is_file():
        try:
            if _made_by(json.loads(meta_path.read_text(encoding="utf-8")), recipe_dict, behaviour):
                return target
        except (OSError, ValueError):
            pass  # unreadable: regenerate
    env = make_env(recipe.env_id)  # a missing mujoco extra is a UserError naming it
    for rel, (actor, _) in actors.items():
        problem = fit_problem(actor, env)
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
        "offrl_generator_versions": with_mujoco(generator_versions()),
        "offrl_references": {"source": "D4RL table", "task": task,
                             "ref_min_score": "D4RL random score", "ref_max_score": "D4RL expert score"},
    }
    if behaviour:
        extra["offrl_behaviour"] = behaviour
        extra["offrl_actor_arithmetic"] = ACTOR_ARITHMETIC
    try:
        return write_minari_dataset(target, recipe_episodes(recipe, env, {k: a for k, (a, _) in actors.items()}),
                                    dataset_id=recipe.name, env_spec=env.spec,
                                    observation_space=env.observation_space, action_space=env.action_space,
                                    extra_metadata=extra)
    except OSError as exc:
        raise UserError(f"{exc.filename or root}: cannot write the dataset ({exc.strerror}); use --root DIR "
                        "(or MINARI_DATASETS_PATH)") from None
    finally:
        env.close()


def _made_by(meta: dict[str, Any], recipe_dict: dict[str, Any], behaviour: dict[str, str]) -> bool:
    """Whether a generated dataset's metadata says it came from this recipe, these behaviour checkpoints
    and today's actor arithmetic (a file made with float32 actors, by offrl up to commit 4789f06, is regenerated)."""
    return (meta.get("offrl_recipe") == recipe_dict and meta.get("offrl_behaviour", {}) == behaviour
            and meta.get("offrl_actor_arithmetic") == (ACTOR_ARITHMETIC if behaviour else None))


def _algorithm_name(recipe: Recipe, actors: dict[str, tuple[ActorPolicy, str]]) -> str:
    if recipe.policy in ("random", "expert"):
        return f"{recipe.policy} policy (offrl.data.policies)"  # the recorded label, as in the bundled datasets
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
                behaviour = {rel: file_sha256(base / rel) for rel in recipe.checkpoints() if (base / rel).is_file()}
                if _made_by(meta, recipe.to_dict(), behaviour):
                    status = "ready"
            except (OSError, ValueError):
                pass
        size = (f"{recipe.min_transitions} transitions" if recipe.min_transitions is not None
                else f"{recipe.episodes} episodes")
        out.append({"name": name, "env_id": recipe.env_id, "policy": recipe.policy, "size": size,
                    "status": status, "path": str(path)})
    return out
