"""The multi-agent dataset recipes (``datasets/recipes.yaml``, section ``multiagent``): cooperative
datasets on ``mpe2``'s ``simple_spread``, recorded with the scripted policies of
:mod:`offrl.datagen.marl_policies` and generated on demand, like the MuJoCo datasets, as
``$MINARI_DATASETS_PATH/<id>.hdf5`` in the multi-agent layout (:mod:`offrl.data.marl_hdf5`), where
``load_dataset(<id>)`` finds them.

References (in the file's metadata): ``ref_min_score`` is the mean team return of uniformly random moves,
``ref_max_score`` the mean team return of the noise-free ``assign`` expert, each over
``references.<env>.episodes`` episodes reset with their own seeds (disjoint from the data's). The team
return of an episode is the sum over its steps of the agents' mean reward, as the evaluation scores it.

A file made from the same recipe is kept (the cache); the bytes are the same for the same numpy, mpe2 and
h5py versions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from offrl.data.catalog import match_name
from offrl.data.marl_envs import MARL_ENVS, make_raw_marl_env, marl_env_shapes
from offrl.data.marl_writer import write_marl_hdf5
from offrl.data.minari import minari_root
from offrl.datagen.marl_policies import MARL_POLICIES, N_MOVES, MarlEpisode, marl_episodes
from offrl.datagen.recipes import load_recipes, recipes_path
from offrl.errors import UserError

__all__ = ["MarlRecipe", "dataset_from_marl_policy", "dataset_from_marl_run", "marl_replay_episodes", "is_marl_recipe", "load_marl_recipes", "make_marl_dataset",
           "marl_status", "team_returns"]


@dataclass(frozen=True)
class MarlRecipe:
    """How one multi-agent dataset is made (an entry of ``multiagent`` in ``datasets/recipes.yaml``)."""

    name: str
    env_id: str
    policy: str  # "random", "fixed" or "assign" (offrl.datagen.marl_policies)
    seed: int
    episodes: int
    epsilon: float | tuple[float, float] = 0.0  # a number, or [start, end] per episode
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if isinstance(self.epsilon, tuple):
            out["epsilon"] = list(self.epsilon)
        return out


def _parse(name: str, entry: Any, where: str) -> MarlRecipe:
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping of recipe keys")
    known = {f for f in MarlRecipe.__dataclass_fields__ if f != "name"}
    if set(entry) - known:
        raise UserError(f"{where}: unknown keys {sorted(set(entry) - known)}; allowed: {sorted(known)}")
    missing = {"env_id", "policy", "seed", "episodes"} - set(entry)
    if missing:
        raise UserError(f"{where}: missing keys {sorted(missing)}")
    if entry["env_id"] not in MARL_ENVS:
        raise UserError(f"{where}: env_id {entry['env_id']!r}: use one of {', '.join(MARL_ENVS)}")
    if entry["policy"] not in MARL_POLICIES:
        raise UserError(f"{where}: policy must be one of {', '.join(MARL_POLICIES)}, got {entry['policy']!r}")
    eps = entry.get("epsilon", 0.0)
    if isinstance(eps, (list, tuple)):
        if len(eps) != 2:
            raise UserError(f"{where}: an epsilon schedule is [start, end]; got {eps!r}")
        eps = (float(eps[0]), float(eps[1]))
    if not isinstance(entry["episodes"], int) or entry["episodes"] <= 0:
        raise UserError(f"{where}: episodes must be a positive integer, got {entry['episodes']!r}")
    return MarlRecipe(name=name, env_id=str(entry["env_id"]), policy=str(entry["policy"]), seed=int(entry["seed"]),
                      episodes=int(entry["episodes"]),
                      epsilon=eps if isinstance(eps, tuple) else float(eps),
                      description=" ".join(str(entry.get("description", "")).split()))


def load_marl_recipes(path: str | Path | None = None) -> dict[str, MarlRecipe]:
    """The ``multiagent`` recipes: ``{name: MarlRecipe}``."""
    path = Path(path) if path is not None else recipes_path()
    load_recipes(path)  # a missing or broken file: the UserError that names it
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {name: _parse(name, entry, f"{path}: multiagent.{name}")
            for name, entry in (raw.get("multiagent") or {}).items()}


def is_marl_recipe(name: str) -> bool:
    """Whether ``name`` (or its short form, ``simple_spread-n2/medium``) is a multi-agent recipe."""
    return match_name(name, load_marl_recipes()) is not None


def team_returns(env_id: str, policy: str, episodes: int, seed: int, epsilon: float = 0.0) -> np.ndarray:
    """Team returns (sum over steps of the agents' mean reward) of ``episodes`` rollouts of ``policy``."""
    env = make_raw_marl_env(env_id)
    try:
        return np.asarray([float(ep.rewards.mean(axis=1).sum(dtype=np.float64))
                           for ep in marl_episodes(env, policy, episodes, seed, epsilon=epsilon, reset_seed=seed)])
    finally:
        env.close()


def _target(recipe: MarlRecipe, root: str | Path | None) -> Path:
    return (Path(root) if root is not None else minari_root()) / f"{recipe.name}.hdf5"


def _recorded_recipe(path: Path) -> dict[str, Any] | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["offrl_recipe"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def make_marl_dataset(name: str, root: str | Path | None = None) -> Path:
    """Generate multi-agent dataset ``name`` as ``<root>/<name>.hdf5`` (default root
    ``$MINARI_DATASETS_PATH``); a file made from the same recipe is kept."""
    recipes = load_marl_recipes()
    full = match_name(name, recipes)
    if full is None:
        raise UserError(f"no multi-agent recipe named {name!r}; choose one of: {', '.join(sorted(recipes))}")
    recipe = recipes[full]
    target = _target(recipe, root)
    if target.is_file() and _recorded_recipe(target) == json.loads(json.dumps(recipe.to_dict())):
        return target
    _, references = load_recipes()
    ref = references.get(recipe.env_id)
    if ref is None:
        raise UserError(f"{recipes_path()}: no 'references' entry for {recipe.env_id}; add one")
    ref_min = float(np.mean(team_returns(recipe.env_id, "random", ref.episodes, ref.seed)))
    ref_max = float(np.mean(team_returns(recipe.env_id, "assign", ref.episodes, ref.seed)))
    import h5py
    import mpe2

    attrs = {
        "dataset_id": recipe.name,
        "env_id": recipe.env_id,
        "max_episode_steps": MARL_ENVS[recipe.env_id].max_steps,
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "description": recipe.description,
        "offrl_recipe": recipe.to_dict(),
        "offrl_references": {"env_id": recipe.env_id, "episodes": ref.episodes, "seed": ref.seed,
                             "ref_min_score": "mean team return of uniformly random moves",
                             "ref_max_score": "mean team return of the noise-free assign expert"},
        "offrl_generator_versions": {"numpy": np.__version__, "mpe2": getattr(mpe2, "__version__", "?"),
                                     "h5py": h5py.__version__},
    }
    env = make_raw_marl_env(recipe.env_id)
    try:
        return write_marl_hdf5(target, marl_episodes(env, recipe.policy, recipe.episodes, recipe.seed,
                                                     epsilon=recipe.epsilon), n_actions=N_MOVES, attrs=attrs)
    except OSError as exc:
        raise UserError(f"{exc.filename or target}: cannot write the dataset ({exc.strerror}); use --root DIR "
                        "(or MINARI_DATASETS_PATH)") from None
    finally:
        env.close()


def marl_status(root: str | Path | None = None) -> list[dict[str, Any]]:
    """One entry per multi-agent recipe (``offrl datasets list``), as :func:`offrl.datagen.on_demand.on_demand_status`."""
    out = []
    for name, recipe in sorted(load_marl_recipes().items()):
        path = _target(recipe, root)
        status = "not generated"
        if path.is_file():
            same = _recorded_recipe(path) == json.loads(json.dumps(recipe.to_dict()))
            status = "ready" if same else "stale"
        out.append({"name": name, "env_id": recipe.env_id, "policy": recipe.policy,
                    "size": f"{recipe.episodes} episodes", "status": status, "path": str(path)})
    return out


def dataset_from_marl_policy(loaded: Any, *, episodes: int, env_id: str | None = None, epsilon: float = 0.0,
                             seed: int = 0, name: str | None = None, root: str | Path | None = None,
                             ref_min: float | None = None, ref_max: float | None = None) -> Path:
    """Roll out a multi-agent run's greedy joint policy (``offrl.runs.load_policy``) with ``epsilon``
    random moves per agent and step, and write it as ``<root>/<name>.hdf5`` in the multi-agent layout
    (``offrl datasets make --policy RUN_DIR``). Episode ``i`` resets with ``seed + i``."""
    import torch
    from tensordict import TensorDict
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from offrl.datagen.write import check_name, refs_metadata

    if not 0.0 <= epsilon <= 1.0:
        raise UserError(f"--noise: the random-move probability of a multi-agent policy is in [0, 1], got {epsilon}")
    dataset = loaded.dataset
    env_id = env_id or (dataset.info.env_id if dataset is not None else loaded.env_id)
    if env_id not in MARL_ENVS:
        raise UserError(f"--env {env_id}: the policy acts in a multi-agent env; use one of {', '.join(MARL_ENVS)}")
    name = name or f"offrl-runs/{Path(loaded.run_dir).name}/policy-v0"
    check_name(name)
    refs = (dataset.info.ref_min_score, dataset.info.ref_max_score, dataset.info.ref_source) if dataset else (
        None, None, None)
    policy = loaded.policy.eval()

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
            td = TensorDict({"agents": TensorDict({"observation": torch.as_tensor(obs)}, [obs.shape[0]])}, [])
            return policy(td).get(("agents", "action")).cpu().numpy()

    n_actions = int(marl_env_shapes(env_id)["n_actions"])
    attrs = {"dataset_id": name, "env_id": env_id, "max_episode_steps": MARL_ENVS[env_id].max_steps,
             "offrl_source": {"kind": "policy", "checkpoint": str(loaded.checkpoint), "step": loaded.step,
                              "epsilon": epsilon, "seed": seed, "episodes": int(episodes)}}
    attrs.update(refs_metadata(refs, ref_min, ref_max))
    env = make_raw_marl_env(env_id)
    try:
        return _write_named(name, root, marl_episodes(env, act, int(episodes), seed, epsilon=epsilon,
                                                      reset_seed=seed), n_actions, attrs)
    finally:
        env.close()


def marl_replay_episodes(buffer_state: dict[str, Any]) -> list[MarlEpisode]:
    """The episodes in a multi-agent run's saved online replay buffer (torchrl ``LazyTensorStorage`` state of
    the collector's frames), oldest first. Rows are in collection order (after a wrap-around, from the write
    cursor); an episode ends at the team's ``done`` or where the collector's trajectory id changes; a piece
    that does not end in ``done`` (the run stopped, or older rows were overwritten) ends as a time-out."""
    storage = (buffer_state.get("_storage") or {})
    rows = storage.get("_storage") or {}
    length, cursor = int(storage.get("_len") or 0), int((buffer_state.get("_writer") or {}).get("_cursor") or 0)
    if not length or not rows:
        return []
    order = np.arange(length) if length < len(next(iter(rows.values()))) or cursor == 0 else \
        np.r_[np.arange(cursor, length), np.arange(cursor)]

    def get(key: str) -> np.ndarray:
        return np.asarray(rows[key][:length].numpy())[order]

    obs, next_obs = get("agents.observation"), get("next.agents.observation")
    state, next_state = get("state"), get("next.state")
    actions = get("agents.action").reshape(length, -1)
    rewards = get("next.agents.reward").reshape(length, -1)
    terminated = get("next.terminated").reshape(-1).astype(bool)
    done = get("next.done").reshape(-1).astype(bool)
    traj = get("collector.traj_ids").reshape(-1)
    cuts = np.flatnonzero(done[:-1] | (traj[1:] != traj[:-1])) + 1
    episodes = []
    for seg in np.split(np.arange(length), cuts):
        a, b = int(seg[0]), int(seg[-1]) + 1
        term = terminated[a:b].copy()
        timeouts = done[a:b] & ~term
        if not done[b - 1]:
            timeouts[-1] = True
        episodes.append(MarlEpisode(observations=np.concatenate([obs[a:b], next_obs[b - 1:b]]),
                                    state=np.concatenate([state[a:b], next_state[b - 1:b]]), actions=actions[a:b],
                                    rewards=rewards[a:b], terminals=term, timeouts=timeouts))
    return episodes


def dataset_from_marl_run(run_dir: Path, checkpoint: Path, cfg: dict[str, Any], *, name: str | None = None,
                          root: str | Path | None = None, ref_min: float | None = None,
                          ref_max: float | None = None) -> Path:
    """Write the online transitions of a multi-agent run (its latest checkpoint's replay buffer) as
    ``<root>/<name>.hdf5`` in the multi-agent layout (``offrl datasets make --from-run RUN_DIR``)."""
    from offrl.datagen.write import check_name, refs_metadata
    from offrl.trainers.checkpoint import load_checkpoint

    env_id = (cfg.get("online") or {}).get("env_id") or (cfg.get("dataset") or {}).get("env_id")
    state = load_checkpoint(checkpoint)
    buffer_state = (state.get("replay_buffer") or {}).get("buffer") or {}
    episodes = marl_replay_episodes(buffer_state) if isinstance(buffer_state, dict) else []
    if not episodes or env_id not in MARL_ENVS:
        raise UserError(f"--from-run {run_dir}: this multi-agent run holds no online replay buffer (it trained "
                        f"offline from a dataset); record its policy instead: offrl datasets make --policy "
                        f"{run_dir} --episodes K [--noise EPSILON]")
    name = name or f"offrl-runs/{run_dir.name}/replay-v0"
    check_name(name)
    attrs = {"dataset_id": name, "env_id": env_id, "max_episode_steps": MARL_ENVS[env_id].max_steps,
             "offrl_source": {"kind": "run", "run_dir": str(run_dir), "algo": cfg.get("algo"),
                              "step": int(state.get("step") or 0), "frames": int(state.get("frames") or 0)}}
    attrs.update(refs_metadata((None, None, None), ref_min, ref_max))
    return _write_named(name, root, episodes, int(marl_env_shapes(env_id)["n_actions"]), attrs)


def _write_named(name: str, root: str | Path | None, episodes: Any, n_actions: int, attrs: dict[str, Any]) -> Path:
    """Write ``episodes`` as ``<root>/<name>.hdf5`` (``--from-run`` / ``--policy``); a write error is one line."""
    try:
        return write_marl_hdf5((Path(root) if root is not None else minari_root()) / f"{name}.hdf5", episodes,
                               n_actions=n_actions, attrs=attrs)
    except OSError as exc:
        raise UserError(f"{exc.filename or root}: cannot write the dataset ({exc.strerror}); choose another "
                        "--root") from None

