"""Shapes and action specs from a dataset: the builders need torchrl specs, the data layer stores numbers."""

from __future__ import annotations

from typing import Any

import torch
from torchrl.data import Bounded, Categorical

__all__ = ["action_spec_from_dataset", "dataset_shapes"]


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def action_spec_from_dataset(dataset: Any) -> Bounded | Categorical:
    """``Categorical(n)`` for int64 index actions, ``Bounded(low, high)`` for float actions.

    Bounds and ``n`` come from ``dataset.info.action_space`` when it has them (a gymnasium space, or a dict
    with ``n`` / ``low`` / ``high``), else from the data itself (max index + 1, min and max action).
    """
    action = dataset.data.get("action")
    space = _get(getattr(dataset, "info", None), "action_space")
    if not torch.is_floating_point(action):
        n = _get(space, "n")
        if n is None:
            n = int(action.max()) + 1
        return Categorical(int(n))
    act_dim = int(action.shape[-1]) if action.ndim > 1 else 1
    low, high = _get(space, "low"), _get(space, "high")
    if low is None or high is None:
        flat = action.reshape(-1, act_dim)
        low, high = flat.min(0).values, flat.max(0).values
    low = torch.as_tensor(low, dtype=torch.float32).reshape(-1).expand(act_dim).clone()
    high = torch.as_tensor(high, dtype=torch.float32).reshape(-1).expand(act_dim).clone()
    return Bounded(low=low, high=high, shape=(act_dim,))


def dataset_shapes(dataset: Any) -> dict[str, Any]:
    """``observation_shape`` and ``action_spec`` of an ``OfflineDataset``: the keyword arguments every
    algorithm's ``build`` takes besides its config."""
    obs = dataset.data.get("observation")
    return {"observation_shape": tuple(obs.shape[1:]), "action_spec": action_spec_from_dataset(dataset)}
