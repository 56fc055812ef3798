"""The bundled datasets: where they live (``$OFFRL_DATASETS``, else the repository's ``datasets/``), which
are there, and the folder of one by id or short name."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from offrl.data.references import VERSION_RE

__all__ = ["bundled_path", "bundled_root", "list_bundled"]


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
        if name in (short, VERSION_RE.sub("", short)):
            return root / full
    return None


def recipes_file() -> Path:
    """``recipes.yaml`` of the bundled datasets: under :func:`bundled_root`, else the repository's."""
    candidate = bundled_root() / "recipes.yaml"
    if candidate.is_file():
        return candidate
    return Path(__file__).resolve().parents[2] / "datasets" / "recipes.yaml"


def on_demand_names() -> list[str]:
    """Ids of the datasets generated on demand (``offrl datasets make``): the ``on_demand`` and ``multiagent``
    sections of the bundled ``recipes.yaml`` (its readers in :mod:`offrl.datagen` check the rest); [] when the
    file is missing or unreadable."""
    import yaml

    path = recipes_file()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(raw, dict):
        return []
    return sorted(str(name) for section in ("on_demand", "multiagent") if isinstance(raw.get(section), dict)
                  for name in raw[section])


def match_name(name: str, names: Iterable[str]) -> str | None:
    """The full id among ``names`` that ``name`` means: itself, or a short form without ``offrl/`` and with or
    without its version (``cartpole/medium``, ``cartpole/medium-v0`` for ``offrl/cartpole/medium-v0``)."""
    names = list(names)
    if name in names:
        return name
    for full in names:
        short = full.removeprefix("offrl/")
        if name in (short, VERSION_RE.sub("", short), VERSION_RE.sub("", full)):
            return full
    return None

