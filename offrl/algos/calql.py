"""Cal-QL's builder (Nakamoto et al. 2023): continuous CQL's networks with the loss turned into a
:class:`~offrl.algos.calql_loss.CalQLLoss` (a fused CQL loss into :class:`~offrl.algos.fused_cql.FusedCalQLLoss`).
"""

from __future__ import annotations

from typing import Any

import torch

from offrl.algos import cql
from offrl.algos._common import AlgoParts
from offrl.algos._spec import dataset_shapes
from offrl.algos.calql_loss import CalQLLoss, calibrate
from offrl.algos.fused_cql import FusedCalQLLoss
from offrl.algos.scaled import observation_scaler_for, reward_scaler_for
from offrl.config.algos import CQLConfig
from offrl.errors import UserError

__all__ = ["CalQLLoss", "FusedCalQLLoss", "build", "build_from_dataset", "calibrate"]


def build(cfg: CQLConfig, *, observation_shape: tuple[int, ...], action_spec: Any,
          device: torch.device | str = "cpu", seed: int | None = None, calibrated: bool = True,
          observation_scaler: Any = None, reward_scaler: Any = None) -> AlgoParts:
    """:func:`offrl.algos.cql.build` with the loss turned into a :class:`CalQLLoss` (same networks; a reward
    shift is refused by :meth:`CalQLLoss.from_cql`)."""
    parts = cql.build(cfg, observation_shape=observation_shape, action_spec=action_spec, device=device, seed=seed,
                      observation_scaler=observation_scaler, reward_scaler=reward_scaler)
    parts.loss_module = CalQLLoss.from_cql(parts.loss_module, calibrated=calibrated)
    return parts


def build_from_dataset(cfg: CQLConfig, dataset: Any, *, device: torch.device | str = "cpu",
                       seed: int | None = None, calibrated: bool = True) -> AlgoParts:
    """:func:`build` with shapes and bounds read from an ``OfflineDataset``."""
    if "mc_return" not in dataset.data.keys():
        raise UserError(f"{dataset.name}: no mc_return in the converted data; Cal-QL needs the Monte-Carlo "
                        "return-to-go (re-convert the dataset with this offrl version)")
    return build(cfg, **dataset_shapes(dataset), device=device, seed=seed, calibrated=calibrated,
                 observation_scaler=observation_scaler_for(cfg, dataset, device),
                 reward_scaler=reward_scaler_for(cfg, dataset))
