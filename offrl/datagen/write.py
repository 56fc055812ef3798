"""Writing a generated dataset: its id, its reference-score metadata, and the atomic Minari write under
``$MINARI_DATASETS_PATH`` (by default), where ``offrl.data.load_dataset(<id>)`` finds it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gymnasium as gym

from offrl.data.minari import minari_root
from offrl.data.minari_writer import write_minari_dataset
from offrl.errors import UserError

__all__ = ["check_name", "refs_metadata", "write_dataset"]


def check_name(name: str) -> None:
    """A dataset id is ``namespace/env/flavour-vN``: else a UserError naming ``--name``."""
    parts = name.split("/")
    if not name or any(not p for p in parts) or "-v" not in parts[-1] or not parts[-1].rsplit("-v", 1)[1].isdigit():
        raise UserError(f"--name {name!r}: a dataset id looks like 'namespace/env/flavour-v0' (ends in -vN)")


def refs_metadata(refs: tuple[Any, Any, str | None], ref_min: float | None, ref_max: float | None) -> dict[str, Any]:
    """Reference-score metadata: the user's ``ref_min``/``ref_max``, else ``refs`` (min, max, source)."""
    lo = ref_min if ref_min is not None else refs[0]
    hi = ref_max if ref_max is not None else refs[1]
    out: dict[str, Any] = {}
    if lo is not None and hi is not None:
        if float(lo) == float(hi):
            raise UserError(f"--ref-min/--ref-max: equal reference scores ({lo}); give two different values")
        out = {"ref_min_score": float(lo), "ref_max_score": float(hi)}
        source = "user" if ref_min is not None or ref_max is not None else (refs[2] or "run dataset")
        out["offrl_references"] = {"source": source}
    return out


def write_dataset(name: str, root: str | os.PathLike[str] | None, episodes: Any, env: gym.Env, extra: dict[str, Any]) -> Path:
    """Write ``episodes`` as Minari dataset ``name`` under ``root`` (default ``$MINARI_DATASETS_PATH``)."""
    check_name(name)
    target = (Path(root) if root is not None else minari_root()) / name
    try:
        return write_minari_dataset(target, episodes, dataset_id=name, env_spec=env.spec,
                                    observation_space=env.observation_space, action_space=env.action_space,
                                    extra_metadata=extra)
    except OSError as exc:
        raise UserError(f"{exc.filename or target}: cannot write the dataset ({exc.strerror}); choose another "
                        "--root") from None
