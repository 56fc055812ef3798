"""Fused forwards for offrl's own losses: :class:`offrl.algos.cql.OfflineCQLLoss` and
:class:`offrl.algos.discrete_cql.WeightedDiscreteCQLLoss`.

Same constructor, outputs, random draws and semantics as ``OfflineCQLLoss`` (the authors' CQL(H) penalty,
working Lagrange multiplier, action rescaling), so the trainer can switch to it with a flag and learn the
same thing faster; tests/test_fused.py checks losses and gradients against ``OfflineCQLLoss``. The speed-ups
are those of :class:`offrl.algos.fused.FusedCQLLoss`: one actor pass per observation batch instead of one
per repeated copy, the data action and all ``3 * num_random`` penalty actions in one forward per critic,
and the critic ensemble as plain matmuls. When the penalty cannot matter (``min_q_weight == 0`` without
Lagrange: SAC; :attr:`OfflineCQLLoss.penalty_skipped`) the critics score only the data actions: the
penalty's actions are still drawn (same random stream), ``loss_cql`` is 0 and ``cql_gap`` NaN.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import dispatch
from tensordict.utils import unravel_key
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules.distributions.utils import rsample_and_log_prob
from torchrl.objectives.utils import distance_loss

from offrl.algos.cql import OfflineCQLLoss
from offrl.algos.discrete_cql import WeightedDiscreteCQLLoss
from offrl.algos.fused import FusedDiscreteCQLLoss, _FusedCQLBase, _LeanQMixin

__all__ = ["FusedOfflineCQLLoss", "FusedWeightedDiscreteCQLLoss"]


class FusedOfflineCQLLoss(_FusedCQLBase, OfflineCQLLoss):
    """:class:`~offrl.algos.cql.OfflineCQLLoss` with a fused forward (same constructor and outputs).

    Falls back to ``OfflineCQLLoss.forward`` outside the fast path (a critic that is not a
    ``ValueOperator(MLP)``, ``reduction != "mean"``, a batch with more than one dimension).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_fused()

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if not self.fused or tensordict.ndim != 1:
            return super().forward(tensordict)
        return self._fused_forward(tensordict)

    def _fused_forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        keys = self.tensor_keys
        n_q, n_rand, batch = self.num_qvalue_nets, self.num_random, tensordict.shape[0]
        alpha = self._alpha
        skip_penalty = self.penalty_skipped
        td = self._unit_actions(tensordict)  # actions in [-1, 1], as OfflineCQLLoss sees them
        actor_in = [unravel_key(k) for k in self.actor_network.in_keys]
        obs_td = td.select(*actor_in)
        next_td = td.get("next").select(*actor_in)
        action = td.get(keys.action)

        with set_exploration_type(ExplorationType.RANDOM), torch.autocast(action.device.type, enabled=False):
            params_obs, params_next = self._actor_dist_params(obs_td, next_td)
            # Random draws in OfflineCQLLoss's order: backup action (q_loss), then pi(s), pi(s'), uniform
            # (cql_gaps), then the BC and actor samples.
            with torch.no_grad():
                dist_next = self.actor_network.build_dist_from_params(params_next)
                next_action, next_log_prob = rsample_and_log_prob(dist_next)
                dist_next_rep = self._repeat_dist(params_next, n_rand)
                max_actions = rsample_and_log_prob(dist_next_rep)[0] if self.max_q_backup else None
                curr_actions, curr_log_pis = rsample_and_log_prob(self._repeat_dist(params_obs.detach(), n_rand))
                next_actions, next_log_pis = rsample_and_log_prob(dist_next_rep)
                random_actions = torch.empty_like(curr_actions).uniform_(-1, 1)
            dist_obs = self.actor_network.build_dist_from_params(params_obs)
            _, bc_sample_log_prob = rsample_and_log_prob(dist_obs)
            bc_log_prob = dist_obs.log_prob(action)
            pi_action, pi_log_prob = rsample_and_log_prob(dist_obs)

        target_value = self._td_target(td, next_td, next_action, next_log_prob, max_actions, alpha)

        # One forward per critic: the data action, then uniform, pi(s) and pi(s') actions, all scored at s
        # (only the data action when the penalty is skipped).
        q_steps = self._steps(self._q_plan, "qvalue_network_params")
        blocks = [("obs", action, 1)]
        if not skip_penalty:
            blocks += [("obs", random_actions, n_rand), ("obs", curr_actions, n_rand), ("obs", next_actions, n_rand)]
        q_all = self._critic_pass(q_steps, obs_td, next_td, blocks)
        q_data = q_all[:, :batch]
        tensordict.set(keys.pred_q1, q_data[0])
        tensordict.set(keys.pred_q2, q_data[1])

        pred_q = q_data.squeeze(-1)  # [n_q, batch]
        loss_qvalue = distance_loss(pred_q, target_value.expand_as(pred_q), loss_function=self.loss_function)
        loss_qvalue = loss_qvalue.sum(0).mean()
        tensordict.set(keys.priority, (pred_q - target_value).pow(2).detach().max(0).values)

        if skip_penalty:
            gap = torch.full_like(loss_qvalue.detach(), math.nan)  # not measured
            out: dict[str, torch.Tensor] = {"loss_qvalue": loss_qvalue, **self.skipped_penalty_terms(loss_qvalue)}
        else:
            log_density = torch.stack([
                torch.full_like(curr_log_pis, -action.shape[-1] * math.log(2.0)),  # uniform on [-1, 1]^d
                curr_log_pis,
                next_log_pis,
            ]).reshape(1, 3, batch, n_rand)
            q_pen = q_all[:, batch:].reshape(n_q, 3, batch, n_rand)
            cat_q = (q_pen - log_density).permute(0, 2, 1, 3).reshape(n_q, batch, 3 * n_rand)
            lse = torch.logsumexp(cat_q / self.temperature, dim=-1) * self.temperature
            gaps = (lse - pred_q).mean(-1)  # [n_q]
            gap = gaps.detach().mean()
            out = {"loss_qvalue": loss_qvalue, **self.penalty_terms(gaps)}
        actor = self._actor_terms(q_steps, obs_td, pi_action, pi_log_prob, bc_sample_log_prob, bc_log_prob,
                                  alpha)
        out["loss_actor_bc"] = actor["loss_actor_bc"]
        out["loss_actor"] = actor["loss_actor"]
        out["loss_alpha"] = actor["loss_alpha"]
        out["alpha"] = alpha
        out["entropy"] = -pi_log_prob.detach().mean()
        out["cql_gap"] = gap
        if self.with_lagrange:
            out["alpha_prime"] = self.log_alpha_prime.detach().exp()
        return TensorDict(out)


class FusedWeightedDiscreteCQLLoss(_LeanQMixin, WeightedDiscreteCQLLoss):
    """:class:`~offrl.algos.discrete_cql.WeightedDiscreteCQLLoss` with the lean forward of
    :class:`offrl.algos.fused.FusedDiscreteCQLLoss` (same constructor and outputs: TD target from the
    target network, penalty weighted by ``min_q_weight``, ``cql_gap``). Falls back to its parent's forward
    outside the lean path (a non-MLP Q-network, ``reduction != "mean"``, a multi-dimensional batch)."""

    target_network_bootstrap = True  # the parent's fix: bootstrap from the target network

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_lean()

    _lean_target_name = FusedDiscreteCQLLoss._lean_target_name
    _lean_discrete_cql = FusedDiscreteCQLLoss._lean_discrete_cql

    @property
    def fused(self) -> bool:
        # The parent computes TD(0) inline from the estimator's gamma, whatever the estimator's type.
        return self._lean_plan is not None and self.reduction == "mean"

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if not self.fused or tensordict.ndim != 1:
            return super().forward(tensordict)
        out = self._lean_discrete_cql(tensordict)
        out["cql_gap"] = out["loss_cql"].detach()
        out["loss_cql"] = out["loss_cql"] * self.min_q_weight
        return TensorDict(out)
