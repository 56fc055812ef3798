"""The dataset recipes (``datasets/recipes.yaml``): their schema, loading and checking, names, and the
behaviour checkpoints a recipe reads.

Each recipe names an env, a behaviour policy (:mod:`offrl.datagen.policies`) with its noise, a size and a
seed. Section ``datasets`` holds the bundled datasets (:mod:`offrl.datagen.bundled`), ``references`` how
their reference scores are measured, and ``on_demand`` the MuJoCo datasets generated when asked for
(:mod:`offrl.datagen.on_demand`). Besides ``random`` and the scripted ``expert``, a behaviour can be a
trained actor committed under ``datasets/behaviour/`` (:func:`offrl.datagen.policies.load_actor`):

- ``policy: checkpoint`` + ``checkpoint: behaviour/<env>/<file>.npz`` (medium / expert flavours), with
  ``sample: true`` for the policy's own stochastic actions, and ``noise_std`` / ``epsilon`` on top;
- ``policy: replay`` + ``segments: [{steps: N, checkpoint: FILE | null}, ...]`` (medium-replay): the
  training run's replay buffer, re-created as rollouts of the run's snapshots in order, each snapshot
  taking the share of the transitions that the run collected with (about) its weights (``null``: the
  uniformly random warm-up). See ``datasets/README.md`` for why.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from offrl.data.catalog import match_name, recipes_file
from offrl.datagen.policies import ActorPolicy, load_actor
from offrl.errors import UserError

__all__ = [
    "Recipe",
    "ReferenceSpec",
    "Segment",
    "file_sha256",
    "is_on_demand",
    "list_on_demand",
    "list_recipes",
    "load_on_demand",
    "load_recipes",
    "recipe_actors",
    "recipes_path",
    "resolve_name",
]


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
    """``recipes.yaml`` of the bundled datasets (:func:`offrl.data.catalog.recipes_file`)."""
    return recipes_file()


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


def is_on_demand(name: str) -> bool:
    """Whether ``name`` (or its short form) is an on-demand recipe."""
    try:
        resolve_name(name, {k: v[0] for k, v in load_on_demand().items()})
    except UserError:
        return False
    return True


def resolve_name(name: str, recipes: dict[str, Recipe]) -> str:
    """The full recipe name of ``name`` (also ``cartpole/medium``, ``cartpole/medium-v0``); else a UserError."""
    full = match_name(name, recipes)
    if full is not None:
        return full
    raise UserError(f"no recipe named {name!r}; choose one of: {', '.join(sorted(recipes))}")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex): the identity of a behaviour checkpoint."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe_actors(recipe: Recipe) -> dict[str, tuple[ActorPolicy, str]]:
    """``{relative path: (actor, sha256)}`` of the recipe's behaviour checkpoints (resolved against the
    recipes file's folder). A sidecar ``<file>.json`` with ``weights_sha256`` must match the file."""
    base = recipes_path().parent
    out: dict[str, tuple[ActorPolicy, str]] = {}
    for rel in recipe.checkpoints():
        path = base / rel
        where = f"behaviour checkpoint of {recipe.name} ({recipes_path()})"
        actor = load_actor(path, what=where)
        digest = file_sha256(path)
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
