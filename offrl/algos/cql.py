"""Continuous CQL's builder: a TanhNormal actor, twin Q critics, automatic entropy tuning and the CQL(H)
loss (:class:`~offrl.algos.cql_loss.OfflineCQLLoss`, or its fused forward when ``CQLConfig.fused``).

Actions are rescaled to ``[-1, 1]`` inside the loss; :func:`build` returns a policy that scales back to the
env's box.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SoftUpdate

from offrl.algos._common import (
    AlgoParts,
    actor_std_tail,
    make_mlp,
    named_adam,
    orthogonal_init_,
    seeded,
)
from offrl.algos._spec import dataset_shapes
from offrl.algos.cql_loss import OfflineCQLLoss
from offrl.algos.fused_cql import FusedOfflineCQLLoss
from offrl.algos.scaled import attach_scalers, observation_scaler_for, reward_scaler_for
from offrl.config.algos import ACTOR_STDS, BACKUP_ACTIONS, UPDATE_ORDERS, CQLConfig
from offrl.data.coverage import action_coverage
from offrl.errors import UserError

__all__ = ["CQLConfig", "NARROW_BC_WEIGHT", "OfflineCQLLoss", "ActionRescale", "build", "build_from_dataset", "resolve_auto"]


class ActionRescale(nn.Module):
    """Maps actions from ``[-1, 1]`` to the env's box ``[low, high]`` (the inverse of the loss's scaling)."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half", (high - low) / 2)

    def forward(self, action: torch.Tensor) -> torch.Tensor:
        return self.action_center + self.action_half * action


#: ``actor_bc_weight`` on narrow data: 5 = TD3+BC with alpha 0.2 (its paper: 2.5); measured in docs/cql.md.
NARROW_BC_WEIGHT = 5.0


def _box_bounds(action_spec: Any) -> tuple[torch.Tensor, torch.Tensor]:
    low = getattr(action_spec, "low", None)
    high = getattr(action_spec, "high", None)
    if low is None or high is None:
        raise UserError("CQL needs a continuous (box) action space; use algo 'discrete-cql' or 'dqn' for "
                        "discrete actions")
    low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise UserError("CQL needs finite action bounds (the actor squashes with tanh); rescale the dataset's "
                        "actions to a bounded box")
    return low, high


@torch.no_grad()
def _orthogonal_stacked_(params: Any, last_gain: float = 1.0) -> None:
    """CORL's orthogonal init on stacked critic parameters (``[n_critics, out, in]``)."""
    items = list(params.items(True, True))
    weights = [v for k, v in items if (k[-1] if isinstance(k, tuple) else k).endswith("weight")]
    for j, weight in enumerate(weights):
        gain = last_gain if j == len(weights) - 1 else math.sqrt(2.0)
        for i in range(weight.shape[0]):
            nn.init.orthogonal_(weight.data[i], gain=gain)
    for k, v in items:
        if (k[-1] if isinstance(k, tuple) else k).endswith("bias"):
            v.data.zero_()


def _make_loss(cfg: CQLConfig, actor: Any, qvalue: Any, low: torch.Tensor, high: torch.Tensor,
               unit_spec: Bounded) -> OfflineCQLLoss:
    loss_cls = FusedOfflineCQLLoss if cfg.fused else OfflineCQLLoss
    return loss_cls(
        actor, qvalue, action_low=low, action_high=high,
        loss_function=cfg.loss_function, alpha_init=cfg.alpha_init, fixed_alpha=cfg.fixed_alpha,
        action_spec=unit_spec, target_entropy="auto" if cfg.target_entropy is None else cfg.target_entropy,
        temperature=cfg.temperature, min_q_weight=cfg.min_q_weight, max_q_backup=cfg.max_q_backup,
        deterministic_backup=cfg.deterministic_backup, num_random=cfg.num_random,
        with_lagrange=cfg.with_lagrange, lagrange_thresh=cfg.target_action_gap, backup_action=cfg.backup_action,
        actor_bc_weight=cfg.actor_bc_weight,
    )


def build(cfg: CQLConfig, *, observation_shape: tuple[int, ...], action_spec: Any,
          device: torch.device | str = "cpu", seed: int | None = None, observation_scaler: Any = None,
          reward_scaler: Any = None) -> AlgoParts:
    """Actor, twin critics, :class:`OfflineCQLLoss`, one Adam (groups actor/critic/alpha[/alpha_prime]) and
    a SoftUpdate. ``action_spec``: a torchrl ``Bounded`` spec (``low``/``high``) in env units.
    ``observation_scaler`` / ``reward_scaler``: the fitted scalers ``cfg`` asks for (:mod:`offrl.algos.scaled`;
    ``reward_scale``/``reward_bias`` alone need no data and are applied when ``reward_scaler`` is None)."""
    if len(observation_shape) != 1:
        raise UserError(f"CQL's MLPs need flat observations, got shape {tuple(observation_shape)}; flatten them")
    if cfg.actor_bc_weight is None:  # auto, and no dataset to measure: off
        cfg = dataclasses.replace(cfg, actor_bc_weight=0.0)
    if cfg.backup_action not in BACKUP_ACTIONS:
        raise UserError(f"cql.backup_action: must be one of {', '.join(BACKUP_ACTIONS)}, got {cfg.backup_action!r}")
    if cfg.actor_std not in ACTOR_STDS:
        raise UserError(f"cql.actor_std: must be one of {', '.join(ACTOR_STDS)}, got {cfg.actor_std!r}")
    if cfg.update_order not in UPDATE_ORDERS:
        raise UserError(f"cql.update_order: must be one of {', '.join(UPDATE_ORDERS)}, got {cfg.update_order!r}")
    low, high = _box_bounds(action_spec)
    obs_dim, act_dim = int(observation_shape[0]), int(low.numel())
    low, high = low.reshape(act_dim).to(device), high.reshape(act_dim).to(device)
    unit_spec = Bounded(low=-torch.ones(act_dim), high=torch.ones(act_dim), shape=(act_dim,), device=device)
    with seeded(seed):
        actor_net = nn.Sequential(
            make_mlp(obs_dim, 2 * act_dim, cfg.hidden_sizes, cfg.activation, device),
            actor_std_tail(cfg.actor_std, cfg.scale_lb),
        )
        q_net = make_mlp(obs_dim + act_dim, 1, cfg.hidden_sizes, cfg.activation, device)
        if cfg.orthogonal_init:
            orthogonal_init_(actor_net[0])
        actor = ProbabilisticActor(
            TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
            in_keys=["loc", "scale"], spec=unit_spec, distribution_class=TanhNormal,
            distribution_kwargs={"low": unit_spec.space.low, "high": unit_spec.space.high, "tanh_loc": False},
            return_log_prob=False,
        )
        qvalue = ValueOperator(q_net, in_keys=["observation", "action"])
        # the loss draws the second critic's initial weights: keep that inside the seeded block too
        loss = _make_loss(cfg, actor, qvalue, low, high, unit_spec)
        if cfg.orthogonal_init:  # ... and with torch's default init: redo it for every critic copy
            _orthogonal_stacked_(loss.qvalue_network_params)
            with warnings.catch_warnings():  # "no target updater yet": it is created below
                warnings.simplefilter("ignore", UserWarning)
                loss.target_qvalue_network_params.data.copy_(loss.qvalue_network_params.data)
    loss.make_value_estimator(gamma=cfg.gamma)
    loss.to(device)
    groups = {
        "actor": list(loss.actor_network_params.values(True, True)),
        "critic": list(loss.qvalue_network_params.values(True, True)),
        "alpha": [loss.log_alpha] if isinstance(loss.log_alpha, nn.Parameter) else [],
    }
    lrs = {"actor": cfg.actor_lr, "critic": cfg.critic_lr, "alpha": cfg.alpha_lr, "alpha_prime": cfg.alpha_prime_lr}
    if cfg.with_lagrange:
        groups["alpha_prime"] = [loss.log_alpha_prime]
    optimizer = named_adam(groups, lrs)
    rescale = TensorDictModule(ActionRescale(low, high), in_keys=["action"], out_keys=["action"])
    policy = TensorDictSequential(actor, rescale)
    return attach_scalers(AlgoParts(
        loss_module=loss, optimizer=optimizer, target_net_updater=SoftUpdate(loss, tau=cfg.tau),
        policy=policy, exploration_policy=policy, config=cfg, trainer_kwargs={"bc_steps": cfg.bc_steps, "update_order": cfg.update_order},
    ), observation_scaler, reward_scaler)


def resolve_auto(cfg: CQLConfig, dataset: Any) -> tuple[CQLConfig, str | None]:
    """``cfg`` with ``actor_bc_weight=None`` (auto) replaced by its value for ``dataset``, and a line saying
    why when it turned something on (None otherwise): :data:`NARROW_BC_WEIGHT` when the data's actions are
    narrow (:func:`offrl.data.coverage.action_coverage`), else 0."""
    if cfg.actor_bc_weight is not None:
        return cfg, None
    coverage = action_coverage(dataset) if dataset is not None else None
    if coverage is None or not coverage.narrow:  # plain CQL: nothing to say
        return dataclasses.replace(cfg, actor_bc_weight=0.0), None
    note = f"cql.actor_bc_weight={NARROW_BC_WEIGHT:g} (auto: {coverage.describe()})"
    return dataclasses.replace(cfg, actor_bc_weight=NARROW_BC_WEIGHT), note


def build_from_dataset(cfg: CQLConfig, dataset: Any, *, device: torch.device | str = "cpu",
                       seed: int | None = None) -> AlgoParts:
    """:func:`build` with shapes and bounds read from an ``OfflineDataset`` (its ``data``) and the
    dataset-dependent defaults resolved (:func:`resolve_auto`)."""
    cfg, _ = resolve_auto(cfg, dataset)
    return build(cfg, **dataset_shapes(dataset), device=device, seed=seed,
                 observation_scaler=observation_scaler_for(cfg, dataset, device),
                 reward_scaler=reward_scaler_for(cfg, dataset))
