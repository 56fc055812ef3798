"""Composing a run's config from its layers, later wins: dataclass defaults < bundled per-dataset YAML
(``offrl/configs/``) < ``--config FILE.yaml`` < explicit arguments (``--steps``, ``offline_steps=...``) <
``--set key=value``. A run's ``config.yaml`` is itself a valid ``--config`` (its metadata keys are ignored),
so any run can be reproduced from its folder.

The dataset decides the algorithm (``auto``) and the bundled YAML, so :func:`compose_config` takes the
loaded dataset or a ``load`` callable (:mod:`offrl.runs` passes :func:`offrl.data.load_dataset`); this
stage imports no data code. A run trained online from scratch in an env composes with
:func:`compose_env_config`.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from offrl.config.io import load_yaml
from offrl.config.ranges import check_ref_scores
from offrl.config.schema import (
    ALGO_CHOICES,
    ALGO_SECTION,
    ALGOS,
    ENV_PREFIX,
    METADATA_KEYS,
    CQLTrainerConfig,
    DQNTrainerConfig,
    TrainerConfig,
    marl_defaults,
    resolve_algo,
    schema_for,
    structured_config,
)
from offrl.errors import UserError, did_you_mean

__all__ = [
    "CONFIGS_DIR",
    "bundled_config_files",
    "bundled_env_config_files",
    "compose_config",
    "compose_env_config",
    "dataset_ref",
    "merge_layer",
    "nest_overrides",
    "parse_dotlist",
    "saved_config",
]

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
#: Loads the dataset a config's ``dataset`` section names (``id``, ``cache_dir``, ``env_id``, references).
DatasetLoader = Callable[[Any], Any]


def bundled_config_files(dataset_name: str, algo: str) -> list[Path]:
    """The bundled YAML files for a dataset and algorithm, general first.

    ``offrl/configs/<env>.<algo>.yaml`` applies to every ``offrl/<env>/*`` dataset, and
    ``offrl/configs/<env>-<flavour>.<algo>.yaml`` to one dataset (e.g. ``pendulum-medium-v0.cql.yaml``).
    """
    parts = dataset_name.strip("/").split("/")
    if len(parts) != 3 or parts[0] != "offrl":
        return []
    env, flavour = parts[1], parts[2]
    candidates = [CONFIGS_DIR / f"{env}.{algo}.yaml", CONFIGS_DIR / f"{env}-{flavour}.{algo}.yaml"]
    return [p for p in candidates if p.is_file()]


def bundled_env_config_files(env_id: str, algo: str) -> list[Path]:
    """The bundled YAML for training ``algo`` online from scratch in ``env_id``:
    ``offrl/configs/env-<env id, '/' as '-'>.<algo>.yaml`` (e.g. ``env-mpe2-simple_spread-n2.vdn.yaml``)."""
    path = CONFIGS_DIR / f"env-{env_id.strip('/').replace('/', '-')}.{algo}.yaml"
    return [path] if path.is_file() else []


def dataset_ref(text: str) -> str:
    """How a run records its dataset: an existing file or folder as its absolute path (so ``offrl eval``,
    ``--resume`` and sweep nodes find it from any working directory), an id (bundled, Minari) as given."""
    path = Path(text).expanduser()
    if not path.is_absolute() and path.exists():
        return os.path.abspath(path)
    return text


def merge_layer(base: DictConfig, layer: Any, origin: str) -> DictConfig:
    """Merge one layer into the schema, turning OmegaConf's errors into one-line user errors."""
    try:
        return OmegaConf.merge(base, layer)  # type: ignore[return-value]
    except ConfigKeyError as err:
        key = err.full_key or err.key
        hint = did_you_mean(str(key), _flat_keys(base))
        raise UserError(f"{origin}: unknown config key '{key}'{hint}; see 'offrl train --help' or a run's config.yaml") from None
    except ValidationError as err:
        key = err.full_key or err.key
        msg = str(err).splitlines()[0]
        if not key:  # OmegaConf names no key (a list element, a scalar for a section): find it ourselves
            bad = _bad_leaf(base, layer)
            if bad is not None:
                key, value = bad
                text = f"[{', '.join(map(str, value))}]" if isinstance(value, list) else value
                shown = f"--set {key}={text}" if origin == "--set" else f"{origin}: {key}: {text}"
                raise UserError(f"{shown}: expected {_expected(base, key)}") from None
            raise UserError(f"{origin}: {msg}") from None
        if origin == "--set":
            raise UserError(f"--set {key}: bad value: {msg}") from None
        raise UserError(f"{origin}: bad value for '{key}': {msg}") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        raise UserError(f"{origin}: {msg}" + (f" (key '{key}')" if key else "")) from None
    except ValueError as err:  # a scalar where a section belongs (dataset: 5)
        raise UserError(f"{origin}: {str(err).splitlines()[0]}; a section (like dataset:) takes key: value "
                        "pairs") from None


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf of a plain nested dict (lists are leaves)."""
    if not isinstance(node, Mapping) or not node:
        return [(prefix, node)] if prefix else []
    out: list[tuple[str, Any]] = []
    for key, value in node.items():
        out += _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def _bad_leaf(base: DictConfig, layer: Any) -> tuple[str, Any] | None:
    """The first leaf of ``layer`` that the schema ``base`` refuses on its own, as ``(key, value)``."""
    try:
        plain = OmegaConf.to_container(OmegaConf.create(dict(layer) if isinstance(layer, Mapping) else layer),
                                       resolve=False)
    except (OmegaConfBaseException, ValueError):
        return None
    for key, value in _leaves(plain):
        single = OmegaConf.create(nest_overrides({key: value}))
        try:
            OmegaConf.merge(base, single)
        except (OmegaConfBaseException, ValueError):
            return key, value
    return None


def _expected(base: DictConfig, key: str) -> str:
    """What the schema takes at ``key``, in words (for a one-line error)."""
    *head, last = key.split(".")
    parent = OmegaConf.select(base, ".".join(head)) if head else base
    node = parent._get_node(last) if isinstance(parent, DictConfig) else None
    if node is None:
        return "a value of the right type (see a run's config.yaml)"
    if isinstance(node, DictConfig):
        return f"a section, not a value; set its keys one by one, e.g. --set {key}.<name>=VALUE"
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    ref = node._metadata.ref_type
    if isinstance(node, ListConfig) or typing.get_origin(ref) in (list, tuple):
        args = [a for a in typing.get_args(ref) if a is not Ellipsis]
        plural = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
        example = " (e.g. [256,256])" if args and args[0] is int else ""
        return f"a list of {plural.get(args[0], 'values')}{example}" if args else "a list"
    text = words.get(ref, getattr(ref, "__name__", str(ref)))
    return text + (" or null" if node._metadata.optional else "")


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config tree (sections and leaves)."""
    keys: list[str] = []
    for key in node.keys() if isinstance(node, DictConfig) else ():
        full = f"{prefix}{key}"
        keys.append(full)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            keys += _flat_keys(child, full + ".")
    return keys


def parse_dotlist(dotlist: Sequence[str]) -> DictConfig:
    for item in dotlist:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set cql.min_q_weight=5")
        if "${" in item.split("=", 1)[1]:
            # OmegaConf would resolve it (lr=${seed} trains with the seed as learning rate): a value is literal
            raise UserError(f"--set {item}: interpolations (${{...}}) are not accepted in --set; give the value")
    try:
        return OmegaConf.from_dotlist(list(dotlist))
    except OmegaConfBaseException as err:
        raise UserError(f"--set: cannot parse {list(dotlist)} ({str(err).splitlines()[0]})") from None


def nest_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"eval.interval": 5, "cql": {"tau": 0.01}}`` -> a nested dict OmegaConf can merge."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        node = out
        *head, last = str(key).split(".")
        for part in head:
            node = node.setdefault(part, {})
        if isinstance(value, Mapping) and isinstance(node.get(last), dict):
            node[last].update(value)
        else:
            node[last] = dict(value) if isinstance(value, Mapping) else value
    return out


def saved_config(saved: DictConfig | Mapping[str, Any], origin: str = "config.yaml") -> TrainerConfig:
    """A saved run config (metadata keys dropped) read through its schema, so defaults added since compare
    equal; no dataset is loaded."""
    node = OmegaConf.create(dict(saved) if not isinstance(saved, DictConfig) else saved)
    for key in METADATA_KEYS:
        node.pop(key, None)
    algo = str(node.get("algo", "cql"))
    if algo not in ALGOS:
        raise UserError(f"{origin}: algo {algo!r} is not one of {', '.join(ALGOS)}")
    obj = OmegaConf.to_object(merge_layer(structured_config(schema_for(algo)), node, origin))
    assert isinstance(obj, TrainerConfig)
    return obj


def compose_config(
    dataset: str | None = None,
    algo: str | None = None,
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    dotlist: Sequence[str] = (),
    base: DictConfig | Mapping[str, Any] | None = None,
    loaded: Any = None,
    load: DatasetLoader | None = None,
) -> tuple[TrainerConfig, Any]:
    """Resolve a full, validated config and its dataset (``loaded``, else ``load(dataset section)``).

    ``dataset``/``algo``: the CLI's ``--dataset``/``--algo`` (``None`` = from the config file, else auto);
    ``config_file``: ``--config``; ``overrides``: explicit values by dotted key (``offline_steps``,
    ``eval.interval``, ...); ``dotlist``: ``--set key=value`` items; ``base``: a starting config (a run's
    saved config when resuming; bundled YAML is then not applied again). Returns the config dataclass
    (with ``dataset.digest``/``path`` filled in) and the loaded dataset; every input is checked before
    anything is written.
    """
    file_layer = load_yaml(config_file) if config_file is not None else OmegaConf.create({})
    set_layer = parse_dotlist(dotlist)
    explicit = OmegaConf.create(nest_overrides(overrides or {}))
    base_layer = OmegaConf.create(dict(base) if isinstance(base, Mapping) else base) if base is not None else None

    layers = [x for x in (base_layer, file_layer, explicit, set_layer) if x is not None]
    # The dataset and algorithm decide the schema and bundled YAML, so read them first from every layer.
    raw = OmegaConf.merge(*layers) if layers else OmegaConf.create({})
    dataset_id = dataset or OmegaConf.select(raw, "dataset.id", default=None)
    if not dataset_id:
        raise UserError("--dataset: required (a bundled id like offrl/pendulum/medium-v0, a Minari id or folder, "
                        "or an HDF5 file)")
    if dataset or base is None:  # a new run, or a new --dataset: a relative path recorded as absolute
        dataset = dataset_ref(str(dataset_id))
        dataset_id = dataset
    if dataset:
        explicit = OmegaConf.merge(explicit, {"dataset": {"id": str(dataset)}})
        layers = [x for x in (base_layer, file_layer, explicit, set_layer) if x is not None]
    requested = algo if algo not in (None, "") else OmegaConf.select(raw, "algo", default="auto")
    requested = str(requested).lower().replace("_", "-")
    if requested not in ALGO_CHOICES:
        raise UserError(f"--algo {requested!r}: unknown algorithm; use one of {', '.join(ALGO_CHOICES)}")

    if loaded is None:
        probe = structured_config(CQLTrainerConfig if requested in ("auto", "cql", "discrete-cql")
                                  else DQNTrainerConfig)
        probe.dataset.id = str(dataset_id)
        for layer in layers:  # dataset.* options (cache_dir, env_id, refs) apply to loading
            if "dataset" in layer:
                origin = _origin(layer, file_layer, config_file, set_layer, base_layer)
                if not isinstance(layer.dataset, DictConfig):
                    raise UserError(f"{origin}: dataset must be a section (dataset.id: ..., dataset.cache_dir: "
                                    f"...), got {layer.dataset!r}; the dataset itself is dataset.id or --dataset")
                probe.dataset = merge_layer(probe.dataset, layer.dataset, origin)
        check_ref_scores(probe.dataset.ref_min_score, probe.dataset.ref_max_score,
                         "dataset.ref_min_score", "dataset.ref_max_score")
        if load is None:
            raise TypeError("compose_config: pass the loaded dataset (loaded=) or a loader (load=)")
        loaded = load(probe.dataset)
    resolved_algo = resolve_algo(requested, loaded)

    schema = merge_layer(structured_config(schema_for(resolved_algo)), marl_defaults(resolved_algo), "--algo")
    bundled = [] if base is not None else bundled_config_files(loaded.name, resolved_algo)
    cfg = schema
    for path in bundled:
        cfg = merge_layer(cfg, load_yaml(path, option="bundled config"), f"bundled config {path}")
    for layer in layers:
        cfg = merge_layer(cfg, layer, _origin(layer, file_layer, config_file, set_layer, base_layer))
    cfg = merge_layer(cfg, {"algo": resolved_algo}, "--algo")

    expected = OmegaConf.select(cfg, "dataset.digest", default=None)
    if expected and base is None and expected != loaded.digest:
        raise UserError(
            f"dataset.digest: {loaded.name} has digest {loaded.digest[:12]}..., the config expects "
            f"{str(expected)[:12]}...; the data changed (remove dataset.digest to accept it)"
        )
    cfg.dataset.digest = loaded.digest
    cfg.dataset.path = os.path.abspath(str(loaded.source))
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, TrainerConfig)
    _check_inactive_sections(layers, resolved_algo)
    _check_final_episodes(obj, [x for x in (file_layer, explicit, set_layer) if x is not None])
    obj.validate()
    if obj.batch_size > len(loaded):
        raise UserError(f"--batch-size {obj.batch_size} (batch_size): larger than the dataset "
                        f"({len(loaded)} transitions); use at most {len(loaded)}")
    return obj, loaded


def _origin(layer: Any, file_layer: Any, config_file: Any, set_layer: Any = None, base_layer: Any = None) -> str:
    if layer is file_layer and config_file is not None:
        return f"--config {config_file}"
    if layer is set_layer:
        return "--set"
    if layer is base_layer and base_layer is not None:
        return "saved run config"
    return "arguments"


def _check_final_episodes(cfg: Any, layers: Sequence[DictConfig]) -> None:
    """``eval.final_episodes`` set below ``eval.episodes`` would be silently raised to it: refuse it (the
    default, 20, is not refused: a larger --eval-episodes simply applies to the last evaluation too)."""
    if not any(OmegaConf.select(layer, "eval.final_episodes", default=None) is not None for layer in layers):
        return
    final, episodes = int(cfg.eval.final_episodes), int(cfg.eval.episodes)
    if 0 < final < episodes:
        raise UserError(f"eval.final_episodes: {final} is below eval.episodes ({episodes}); the last evaluation "
                        f"runs at least eval.episodes episodes: set it to {episodes} or more (or lower "
                        "--eval-episodes)")


def _check_inactive_sections(layers: Sequence[DictConfig], algo: str) -> None:
    """A value set for another algorithm's section would be silently ignored: refuse it instead."""
    active = ALGO_SECTION[algo]
    for layer in layers:
        for section in ALGO_SECTION.values():
            if section != active and section in layer and layer[section]:
                key = next(iter(layer[section]))
                raise UserError(f"{section}.{key}: set for another algorithm; this run's algo is {algo} "
                                f"(its hyperparameters are under '{active}.')")




def compose_env_config(env_id: str, algo: str, *, overrides: Mapping[str, Any] | None = None,
                       dotlist: Sequence[str] = (), base: Any = None, config_file: str | Path | None = None,
                       ) -> TrainerConfig:
    """The config of a run trained online from scratch in ``env_id``: defaults < the env's bundled YAML
    (or ``base``, a saved run config) < ``--config`` < keyword overrides < ``--set``; ``offline_steps`` = 0 and ``dataset.id`` =
    ``env:<ENV_ID>``. ``algo`` is already resolved (no ``auto``)."""
    node = merge_layer(structured_config(schema_for(algo)), marl_defaults(algo), "--algo")
    if base is not None:
        node = merge_layer(node, base, "saved run config")
    else:
        for path in bundled_env_config_files(env_id, algo):
            node = merge_layer(node, load_yaml(path, option="bundled config"), f"bundled config {path}")
    if config_file is not None:
        node = merge_layer(node, load_yaml(config_file), f"--config {config_file}")
    node = merge_layer(node, {"algo": algo, "dataset": {"id": f"{ENV_PREFIX}{env_id}"}, "offline_steps": 0,
                              "online": {"env_id": env_id}}, "--env")
    explicit, set_layer = OmegaConf.create(nest_overrides(dict(overrides or {}))), parse_dotlist(dotlist)
    node = merge_layer(node, explicit, "arguments")
    node = merge_layer(node, set_layer, "--set")
    _check_inactive_sections([explicit, set_layer], algo)
    _check_final_episodes(node, [explicit, set_layer, *([load_yaml(config_file)] if config_file else [])])
    cfg = OmegaConf.to_object(node)
    assert isinstance(cfg, TrainerConfig)
    if cfg.offline_steps != 0:
        raise UserError("--steps: a run without --dataset has no offline phase; drop --steps (use --online-steps)")
    if cfg.online.steps <= 0:
        raise UserError("--online-steps: required (> 0) when training online from scratch with --env")
    if cfg.online.calql:
        raise UserError("--calql needs a dataset (its Monte-Carlo returns); drop it for --env training")
    cfg.validate()
    return cfg
