"""A run's config and source, checked before its folder exists: a dataset run composes its layers over the
loaded dataset (:func:`compose_run_config`), a run trained online from scratch over its env
(:func:`compose_env_run_config`), and a resumed run over its saved ``config.yaml`` (:func:`compose_resume`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from offrl.config import (
    TrainerConfig,
    compose_config,
    compose_env_config,
    dataset_ref,
    diff_configs,
    env_of_config,
    load_yaml,
    saved_config,
)
from offrl.config.marl import MARL_ALGOS
from offrl.data.marl_envs import is_marl_env
from offrl.errors import UserError
from offrl.runs.assemble import load_config_dataset

__all__ = ["ALIASES", "Resumed", "compose_env_run_config", "compose_resume", "compose_run_config", "config_values",
           "env_source"]

#: Friendly keyword names of :func:`offrl.train` (and CLI flags) -> config keys.
ALIASES = {
    "steps": "offline_steps",
    "eval_every": "eval.interval",
    "eval_episodes": "eval.episodes",
    "cache_dir": "dataset.cache_dir",
    "progress": "progress_bar",
    "online_steps": "online.steps",
    "online_env": "online.env_id",
    "frames_per_batch": "online.frames_per_batch",
    "utd": "optim_steps_per_batch",
    "calql": "online.calql",
}


def config_values(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments as config keys (:data:`ALIASES` resolved; ``None`` values dropped)."""
    return {ALIASES.get(k, k): v for k, v in overrides.items() if v is not None}


def compose_run_config(dataset: str | os.PathLike[str] | None = None, algo: str | None = None, *,
                       config: str | os.PathLike[str] | None = None, dotlist: Sequence[str] = (),
                       **overrides: Any) -> tuple[TrainerConfig, Any]:
    """The ``(config, dataset)`` that :func:`offrl.train` with the same arguments would run, without training or
    writing a run folder: every input is checked (a :class:`~offrl.errors.UserError` names the bad one)
    and the dataset is converted into the cache if needed. With a dataset, ``online_env=`` (``--env``) is also
    the evaluation env unless ``dataset.env_id`` is given."""
    values = config_values(overrides)
    if values.get("online.env_id") is not None:
        values.setdefault("dataset.env_id", values["online.env_id"])
    return compose_config(None if dataset is None else str(dataset), algo, config_file=config,
                          overrides=values, dotlist=dotlist, load=load_config_dataset)


def resolve_dataset_defaults(cfg: TrainerConfig, dataset: Any) -> tuple[TrainerConfig, list[str]]:
    """``cfg`` with the defaults that depend on the data filled in (continuous CQL's ``actor_bc_weight``:
    :func:`offrl.algos.cql.resolve_auto`), and one line per value chosen saying why."""
    if cfg.algo != "cql" or dataset is None:
        return cfg, []
    from offrl.algos.cql import resolve_auto

    section, note = resolve_auto(cfg.cql, dataset)
    return dataclasses.replace(cfg, cql=section), [note] if note else []


def config_origins(cfg: TrainerConfig, *, config: Any = None, dotlist: Sequence[str] = (),
                   overrides: Mapping[str, Any] | None = None) -> list[str]:
    """Lines for a new run's config.yaml (``config_origins``): which layer set which keys, so a reader knows
    where every value comes from: the general defaults, the bundled per-dataset config, ``--config``, the
    command's flags and ``--set`` (later wins)."""
    from offrl.config.compose import bundled_config_files, bundled_env_config_files, parse_dotlist
    from offrl.config.schema import ENV_PREFIX

    def keys(node: Any) -> list[str]:
        flat = OmegaConf.to_container(node, resolve=False) if node is not None else {}
        out: list[str] = []

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif prefix not in ("dataset.id", "algo"):
                out.append(prefix)
        walk("", flat)
        return out

    from offrl.config.algos import DEFAULT_SOURCES

    lines = [f"defaults: {DEFAULT_SOURCES.get(cfg.algo, 'offrl/config/algos.py (sources in its comments)')}"]
    dataset_id = str(cfg.dataset.id)
    bundled = (bundled_env_config_files(dataset_id[len(ENV_PREFIX):], cfg.algo) if dataset_id.startswith(ENV_PREFIX)
               else bundled_config_files(dataset_id, cfg.algo))
    for path in bundled:
        lines.append(f"bundled config offrl/configs/{path.name}: {', '.join(keys(load_yaml(path)))}")
    if config is not None:
        lines.append(f"--config {config}: {', '.join(keys(load_yaml(config)))}")
    flags = [k for k, v in (overrides or {}).items() if v is not None and k not in ("dataset.id", "algo")]
    if flags:
        lines.append(f"flags: {', '.join(flags)}")
    if dotlist:
        lines.append(f"--set: {', '.join(keys(parse_dotlist(dotlist)))}")
    return lines


def env_source(dataset: Any, config: Any, values: Mapping[str, Any]) -> str | None:
    """The env a new run trains in from scratch (no dataset; ``online_env=`` or a from-scratch run's
    ``--config``), else None (a dataset run)."""
    if dataset is not None:
        return None
    if config is None:
        return values.get("online.env_id")
    scratch_env = env_of_config(load_yaml(config))
    if scratch_env is None:
        return None
    return values.get("online.env_id") or scratch_env


def compose_env_run_config(env_id: str, algo: str | None, *, config: Any = None, dotlist: Sequence[str] = (),
                           overrides: Mapping[str, Any] | None = None, base: Any = None) -> TrainerConfig:
    """The config of a run trained online in ``env_id`` from scratch; ``auto`` picks CQL for continuous
    actions and DQN for discrete ones (both discrete algorithms explore with an annealed epsilon)."""
    values = dict(overrides or {})
    values.pop("online.env_id", None)  # the env is the run's source
    if algo in (None, "auto") and config is not None and base is None:
        algo = OmegaConf.select(load_yaml(config), "algo", default=None) or algo
    return compose_env_config(env_id, _env_algo(algo, env_id), overrides=values, dotlist=dotlist, base=base,
                              config_file=config)


def _env_algo(algo: str | None, env_id: str) -> str:
    algo = (algo or "auto").lower().replace("_", "-")
    if is_marl_env(env_id):  # a multi-agent env: QMIX unless told otherwise
        if algo == "auto":
            return "qmix"
        if algo not in MARL_ALGOS:
            raise UserError(f"--algo {algo}: {env_id} is a multi-agent env; use --algo qmix, vdn or iql")
        return algo
    if algo in MARL_ALGOS:
        raise UserError(f"--algo {algo}: {env_id} is a single-agent env; {algo} needs a multi-agent one "
                        "(e.g. mpe2/simple_spread)")
    if algo == "auto":
        from offrl.online.setup import env_specs

        _, spec, _ = env_specs(env_id)
        return "cql" if hasattr(spec, "low") else "dqn"
    if algo not in ("cql", "discrete-cql", "dqn"):
        raise UserError(f"--algo {algo!r}: unknown algorithm; use cql, discrete-cql or dqn")
    return algo


@dataclass
class Resumed:
    """A resumed run's composed config, its source and what changed from the saved config."""

    cfg: TrainerConfig
    dataset: Any
    env_id: str | None
    changed: list[str]
    saved_full: DictConfig


def compose_resume(path: Path, *, dataset: Any, algo: str | None, config: Any, dotlist: Sequence[str],
                   overrides: Mapping[str, Any], force: bool) -> Resumed:
    """The config to continue ``path`` with: its saved config.yaml < ``--config`` < overrides < ``--set``; a
    changed config is refused unless ``force`` (``dataset.digest`` among the changes means the data changed)."""
    saved = load_yaml(path / "config.yaml", option="--resume")  # a damaged file: one line naming it
    saved_full = OmegaConf.load(path / "config.yaml")
    assert isinstance(saved_full, DictConfig)
    env_id = env_of_config(saved)
    data = None
    if env_id is not None:  # trained online from scratch: no dataset to rebuild from
        if dataset is not None:
            raise UserError(f"--resume {path}: the run trained online from scratch in {env_id}, "
                            f"not on {dataset}; drop --dataset")
        new_env = overrides.get("online.env_id")
        if new_env is not None and new_env != env_id:
            raise UserError(f"--resume {path}: the run trained online in {env_id}, not {new_env}; drop --env")
        saved_algo = str(OmegaConf.select(saved, "algo", default=""))
        if algo not in (None, "auto") and algo != saved_algo:
            raise UserError(f"--resume {path}: the run trained {saved_algo}, not {algo}; drop --algo")
        old = saved_config(saved)
        cfg = compose_env_run_config(env_id, saved_algo, config=config, dotlist=dotlist, overrides=overrides,
                                     base=saved)
    else:
        saved_dataset = OmegaConf.select(saved, "dataset.id")
        if dataset is not None and dataset_ref(str(dataset)) == dataset_ref(str(saved_dataset)):
            dataset = None  # the run's own dataset, named as a relative or absolute path: nothing changes
        if dataset is not None and str(dataset) != saved_dataset and not force:
            raise UserError(f"--resume {path}: the run trained on {saved_dataset}, not {dataset}; drop --dataset "
                            "(or --force to switch)")
        cfg, data = compose_config(None if dataset is None else str(dataset),
                                   algo if algo not in (None, "auto") else None, config_file=config,
                                   overrides=overrides, dotlist=dotlist, base=saved, load=load_config_dataset)
        old = saved_config(saved)
    changed = diff_configs(old, cfg)
    if changed and not force:
        raise UserError(f"--resume {path}: config differs from the run's in {', '.join(changed)}; "
                        "resume without changes, or add --force to continue with the new values")
    return Resumed(cfg, data, env_id, changed, saved_full)
