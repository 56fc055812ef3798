"""Configs in and out of YAML: read a ``--config`` file, write a run's ``config.yaml``, compare two configs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from offrl.config.schema import ALGO_SECTION, METADATA_KEYS, TrainerConfig
from offrl.errors import UserError

__all__ = ["config_to_yaml", "diff_configs", "load_yaml"]


def load_yaml(path: str | Path, *, option: str = "--config") -> DictConfig:
    """A YAML config file as a DictConfig, run metadata keys dropped; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{option} {path}: not valid YAML ({first})") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{option} {path}: expected a mapping of config keys at the top level")
    for key in METADATA_KEYS:
        cfg.pop(key, None)
    return cfg


def config_to_yaml(cfg: TrainerConfig | DictConfig, extra: Mapping[str, Any] | None = None) -> str:
    """The resolved config as YAML, only the active algorithm's section, plus ``extra`` (run metadata)."""
    container = _to_container(cfg)
    if extra:
        container.update(extra)
    return OmegaConf.to_yaml(OmegaConf.create(container))


def _to_container(cfg: TrainerConfig | DictConfig) -> dict[str, Any]:
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    container = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    active = ALGO_SECTION.get(container.get("algo", ""))
    for section in ALGO_SECTION.values():
        if section != active:
            container.pop(section, None)
    container.pop("_algos", None)
    return container


def diff_configs(old: TrainerConfig | DictConfig, new: TrainerConfig | DictConfig,
                 *, ignore: Sequence[str] = ("progress_bar", "logger", "dataset.cache_dir", "dataset.path"),
                 ) -> list[str]:
    """Dotted keys whose values differ between two configs (``ignore``: keys that do not change results)."""
    a = _flatten(_to_container(old))
    b = _flatten(_to_container(new))
    return [k for k in sorted(set(a) | set(b)) if k not in ignore and a.get(k) != b.get(k)]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out
