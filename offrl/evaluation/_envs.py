"""Making an evaluation env from an id: the data catalog's rules when present, else ``gymnasium.make``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from offrl.errors import UserError

__all__ = ["make_env"]


def make_env(env_id: Any) -> gym.Env:
    """Make ``env_id`` (an id or a Minari env_spec) for evaluation; a missing package is a UserError."""
    try:
        from offrl.data.catalog import make_env as catalog_make_env
    except ImportError:  # the catalog is optional at this layer
        catalog_make_env = None
    if catalog_make_env is not None:
        return catalog_make_env(env_id)
    try:
        return gym.make(env_id)
    except gym.error.NameNotFound as err:
        raise UserError(f"--env {env_id}: no such gymnasium environment ({err}); check the id or install its package") from None
    except (gym.error.DependencyNotInstalled, ImportError, ModuleNotFoundError) as err:
        raise UserError(f"--env {env_id}: a package it needs is missing ({err}); install it, e.g. pip install 'offrl[mujoco]'") from None
