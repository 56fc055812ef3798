"""The continuous CQL loss: SAC with the CQL(H) penalty, a fixed weight or a Lagrange multiplier (Kumar et
al. 2020, https://arxiv.org/abs/2006.04779).

It is :class:`OfflineCQLLoss`, a torchrl ``CQLLoss`` whose conservative penalty follows the
authors' code (and CORL's ``cql.py``) where torchrl 0.14 departs from it:

* the log-sum-exp runs over all ``3 * num_random`` sampled actions of a state (random, pi(s), pi(s'));
  torchrl takes it over the three sources of each sample separately;
* actions sampled at ``s'`` are scored at ``s`` (``Q(s, a'~pi(.|s'))``), as in the paper's importance sampling;
* with ``with_lagrange`` the multiplier ``alpha_prime`` scales the penalty (torchrl learns it but never
  applies it), and its own loss sees the penalty detached, so one backward pass over the summed losses
  updates critics and multiplier correctly;
* ``backup_action="mean"`` bootstraps from the target critics at the policy's mean action ``tanh(mu(s'))``
  (d3rlpy's deterministic backup) instead of a sample ``a' ~ pi(.|s')`` (torchrl / CORL); the sample is
  still drawn, so the random stream is the same either way;
* ``actor_bc_weight > 0`` adds TD3+BC's regulariser to ``loss_actor``: ``w * mean|Q(s, a_data)| *
  mean((tanh(mu(s)) - a_data)^2)``, scaled by the critics' magnitude (detached) so the weight does not depend on
  the reward scale (Fujimoto & Gu 2021 use ``1/w = 2.5``); it keeps the actor on the data where the penalty
  leaves the critic no signal off it (narrow, expert-like data);
* actions are rescaled to ``[-1, 1]`` inside the loss, so the uniform proposal and the tanh squashing match
  any box action space (Pendulum's is ``[-2, 2]``); :func:`offrl.algos.cql.build` returns a policy that
  scales back.

With ``min_q_weight == 0`` and no Lagrange multiplier the loss is SAC's (plus the unused BC term): the
penalty cannot change any loss or gradient, so its critic pass (~90% of an update's FLOPs) is skipped
(:attr:`OfflineCQLLoss.penalty_skipped`). The penalty's random actions are still drawn, so every other
output, and the random stream, equal those of a computed zero-weighted penalty; ``loss_cql`` is 0 and
``cql_gap`` NaN (not measured). ``offrl train --env Hopper-v5 --online-steps N --set cql.min_q_weight=0``
trains SAC this way.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import dispatch
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules.distributions.utils import rsample_and_log_prob
from torchrl.objectives import CQLLoss

from offrl.config.algos import BACKUP_ACTIONS

__all__ = ["BACKUP_ACTIONS", "OfflineCQLLoss"]


# Keep dataset actions strictly inside the tanh's range: the BC warm start takes log pi(a|s) of them, and
# atanh(+-1) is infinite (datasets clip actions to the bounds).
_ACTION_EPS = 1e-5


class OfflineCQLLoss(CQLLoss):
    """torchrl ``CQLLoss`` with the authors' CQL(H) penalty, a working Lagrange multiplier and action
    rescaling (see the module docstring). Same outputs as ``CQLLoss`` plus ``alpha_prime`` and
    ``cql_gap`` (the unweighted E[logsumexp Q] - E[Q(s, a_data)], averaged over the critics)."""

    def __init__(self, actor_network: Any, qvalue_network: Any, *, action_low: torch.Tensor | None = None,
                 action_high: torch.Tensor | None = None, backup_action: str = "sample", actor_bc_weight: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(actor_network, qvalue_network, **kwargs)
        if backup_action not in BACKUP_ACTIONS:
            raise ValueError(f"backup_action must be one of {BACKUP_ACTIONS}, got {backup_action!r}")
        self.backup_action = backup_action
        if not (math.isfinite(actor_bc_weight) and actor_bc_weight >= 0):
            raise ValueError(f"actor_bc_weight must be a finite number >= 0, got {actor_bc_weight!r}")
        self.actor_bc_weight = float(actor_bc_weight)
        low = torch.as_tensor(-1.0 if action_low is None else action_low, dtype=torch.float32)
        high = torch.as_tensor(1.0 if action_high is None else action_high, dtype=torch.float32)
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half", (high - low) / 2)

    @property
    def out_keys(self) -> list[str]:
        keys = ["loss_actor", "loss_actor_bc", "loss_qvalue", "loss_cql", "loss_alpha", "alpha", "entropy",
                "cql_gap"]
        if self.with_lagrange:
            keys += ["loss_alpha_prime", "alpha_prime"]
        return keys

    @out_keys.setter
    def out_keys(self, values: Any) -> None:  # CQLLoss.__init__ assigns it
        pass

    #: Skip the penalty's critic pass when it cannot matter (see :attr:`penalty_skipped`); set False to
    #: compute a zero-weighted penalty anyway (tests compare the two).
    skip_zero_penalty: bool = True

    @property
    def penalty_skipped(self) -> bool:
        """Whether :meth:`forward` skips the penalty: ``min_q_weight == 0`` without Lagrange multiplier (the
        loss is then SAC's), unless a subclass hooks the proposals (Cal-QL reports diagnostics from them).
        Read at every forward, so an online weight change (``online.min_q_weight``) takes effect."""
        return (self.skip_zero_penalty and not self.with_lagrange and float(self.min_q_weight) == 0.0
                and type(self)._proposal_q is OfflineCQLLoss._proposal_q)

    def skipped_penalty_terms(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """What :meth:`penalty_terms` gives for a zero weight without Lagrange: ``loss_cql`` = 0 (no graph)."""
        return {"loss_cql": torch.zeros((), dtype=like.dtype, device=like.device)}

    def _draw_penalty_samples(self, tensordict: TensorDictBase) -> None:
        """Draw the penalty's random actions exactly as :meth:`cql_gaps` does (pi(.|s), pi(.|s'), uniform)
        without scoring them, so a skipped penalty leaves the random stream where a computed one would."""
        n_rand = self.num_random
        with torch.no_grad():
            curr_td, _ = self._get_policy_actions(tensordict.copy(), self.actor_network_params, n_rand)
            self._get_policy_actions(tensordict.get("next").copy(), self.actor_network_params, n_rand)
            torch.empty_like(curr_td.get(self.tensor_keys.action)).uniform_(-1, 1)

    def _get_value_v(self, tensordict: TensorDictBase, _alpha: Any, actor_params: Any, qval_params: Any) -> torch.Tensor:
        """torchrl's TD(0) target; with ``backup_action="mean"`` the target critics score ``tanh(mu(s'))``."""
        if self.backup_action == "sample" or self.max_q_backup:
            return super()._get_value_v(tensordict, _alpha, actor_params, qval_params)
        tensordict = tensordict.clone(False)
        next_td = tensordict.get("next").clone(False)
        with set_exploration_type(ExplorationType.RANDOM), actor_params.data.to_module(
            self.actor_network, preserve_module_state=False
        ):
            dist = self.actor_network.get_dist(next_td)
            _, log_prob = rsample_and_log_prob(dist)  # drawn as torchrl does: the same random stream
            next_td.set(self.tensor_keys.action, dist.deterministic_sample)
        value = self._vmap_qvalue_networkN0(next_td, qval_params.data).get(self.tensor_keys.state_action_value)
        value = value.min(0)[0]
        if not self.deterministic_backup:
            value = value - _alpha * log_prob.reshape(value.shape)
        tensordict.set(("next", self.value_estimator.tensor_keys.value), value)
        return self.value_estimator.value_estimate(tensordict).squeeze(-1)

    def actor_regularizer(self, mean_action: torch.Tensor, data_action: torch.Tensor,
                          q_data: torch.Tensor) -> torch.Tensor:
        """The TD3+BC term added to ``loss_actor`` (see the module docstring); 0 without ``actor_bc_weight``."""
        scale = q_data.detach().abs().mean()
        return self.actor_bc_weight * scale * (mean_action - data_action).pow(2).mean()

    def _unit_actions(self, tensordict: TensorDictBase) -> TensorDictBase:
        td = tensordict.copy()  # shallow: the caller's batch keeps its env-scale actions
        action = td.get(self.tensor_keys.action)
        unit = (action - self.action_center) / self.action_half
        td.set(self.tensor_keys.action, unit.clamp(-1 + _ACTION_EPS, 1 - _ACTION_EPS))
        return td

    def cql_gaps(self, tensordict: TensorDictBase) -> torch.Tensor:
        """Per critic ``E_s[T * logsumexp_a (Q(s,a) - log mu(a)) / T] - E[Q(s, a_data)]``, shape ``[2]``.

        The ``3 * num_random`` proposals per state are uniform actions and pi(.|s), pi(.|s') samples, each
        importance-weighted by its density (CQL(H), paper eq. 4 / App. F). Expects ``q_loss`` to have
        written ``pred_q1``/``pred_q2``.
        """
        keys = self.tensor_keys
        pred_q = torch.stack([tensordict.get(keys.pred_q1), tensordict.get(keys.pred_q2)]).reshape(2, -1)
        n_batch, n_rand = pred_q.shape[-1], self.num_random
        curr_td, curr_logp = self._get_policy_actions(tensordict.copy(), self.actor_network_params, n_rand)
        next_td, next_logp = self._get_policy_actions(tensordict.get("next").copy(), self.actor_network_params,
                                                      n_rand)
        curr_action = curr_td.get(keys.action)
        act_dim = curr_action.shape[-1]
        random_td = curr_td.clone(False)
        random_td.set(keys.action, torch.empty_like(curr_action).uniform_(-1, 1))
        next_at_s = curr_td.clone(False)  # Q(s, a' ~ pi(.|s')): the authors' importance sampling
        next_at_s.set(keys.action, next_td.get(keys.action))
        q_in = torch.cat([random_td, curr_td, next_at_s], 0).select(*self.qvalue_network.in_keys, strict=False)
        q = self._vmap_qvalue_networkN0(q_in, self.qvalue_network_params).get(keys.state_action_value)
        q = self._proposal_q(q.reshape(2, 3, n_batch, n_rand), tensordict)
        log_density = torch.stack([
            torch.full_like(curr_logp, -act_dim * math.log(2.0)),  # uniform on [-1, 1]^d
            curr_logp.detach(),
            next_logp.detach(),
        ]).reshape(1, 3, n_batch, n_rand)
        cat_q = (q - log_density).permute(0, 2, 1, 3).reshape(2, n_batch, 3 * n_rand)
        lse = torch.logsumexp(cat_q / self.temperature, dim=-1) * self.temperature
        return (lse - pred_q).mean(-1)

    def _proposal_q(self, q: torch.Tensor, tensordict: TensorDictBase) -> torch.Tensor:
        """Q of the penalty's proposals, ``[critic, source (uniform, pi(.|s), pi(.|s')), batch, sample]``:
        a hook for Cal-QL, which floors the policy proposals (:class:`offrl.algos.calql.CalQLLoss`)."""
        return q

    def penalty_terms(self, gaps: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss_cql`` (and ``loss_alpha_prime`` with Lagrange) from the per-critic gaps."""
        if not self.with_lagrange:
            return {"loss_cql": self.min_q_weight * gaps.sum()}
        alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
        slack = self.min_q_weight * gaps - self.target_action_gap
        # critics minimise alpha' * slack; alpha' maximises it (gradient ascent via the minus sign)
        return {"loss_cql": (alpha_prime.detach() * slack).sum(),
                "loss_alpha_prime": -0.5 * (alpha_prime * slack.detach()).sum()}

    def actor_forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The actor-side outputs of :meth:`forward` alone (``loss_actor``, ``loss_actor_bc``, ``loss_alpha``,
        ``alpha``, ``entropy``), from the current parameters: the second pass of ``update_order="critic_first"``,
        taken after the critics stepped (the critics are detached here, as in :meth:`forward`)."""
        td = self._unit_actions(tensordict)
        out = {"loss_actor_bc": self.actor_bc_loss(td)[0]}
        out["loss_actor"], actor_metadata = self.actor_loss(td)
        if self.actor_bc_weight > 0:
            out["loss_actor"] = out["loss_actor"] + self._regularizer_now(td)
        out["loss_alpha"], _ = self.alpha_loss(actor_metadata, mask_tensordict=td)
        out["alpha"] = self._alpha
        out["entropy"] = -actor_metadata[self.tensor_keys.log_prob].mean()
        return TensorDict(out)

    def _regularizer_now(self, td: TensorDictBase) -> torch.Tensor:
        """:meth:`actor_regularizer` with ``Q(s, a_data)`` scored by the critics as they are now."""
        with torch.no_grad():
            q_in = td.select(*self.qvalue_network.in_keys, strict=False)
            q_data = self._vmap_qvalue_networkN0(q_in, self.qvalue_network_params.data).get(
                self.tensor_keys.state_action_value)
        return self.actor_regularizer(self._mean_action(td), td.get(self.tensor_keys.action), q_data.squeeze(-1))

    def _mean_action(self, td: TensorDictBase) -> torch.Tensor:
        """tanh(mu(s)), with gradient to the actor (the TD3+BC term's action)."""
        with set_exploration_type(ExplorationType.RANDOM), self.actor_network_params.to_module(
            self.actor_network, preserve_module_state=False
        ):
            return self.actor_network.get_dist(td).deterministic_sample

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:  # type: ignore[override]

        td = self._unit_actions(tensordict)
        loss_qvalue, metadata = self.q_loss(td)
        gaps: torch.Tensor | None = None
        if self.penalty_skipped:
            self._draw_penalty_samples(td)
            out: dict[str, torch.Tensor] = {"loss_qvalue": loss_qvalue, **self.skipped_penalty_terms(loss_qvalue)}
        else:
            gaps = self.cql_gaps(td)
            out = {"loss_qvalue": loss_qvalue, **self.penalty_terms(gaps)}
        out["loss_actor_bc"], _ = self.actor_bc_loss(td)
        out["loss_actor"], actor_metadata = self.actor_loss(td)
        if self.actor_bc_weight > 0:
            q_data = torch.stack([td.get(self.tensor_keys.pred_q1), td.get(self.tensor_keys.pred_q2)])
            out["loss_actor"] = out["loss_actor"] + self.actor_regularizer(
                self._mean_action(td), td.get(self.tensor_keys.action), q_data)
        out["loss_alpha"], _ = self.alpha_loss(actor_metadata, mask_tensordict=td)
        out["alpha"] = self._alpha
        out["entropy"] = -actor_metadata[self.tensor_keys.log_prob].mean()
        out["cql_gap"] = gaps.detach().mean() if gaps is not None else torch.full_like(loss_qvalue.detach(), math.nan)
        if self.with_lagrange:
            out["alpha_prime"] = self.log_alpha_prime.detach().exp()
        # let callers (the trainer's Q statistics, prioritized buffers) see what torchrl's loss exposes
        tensordict.set(self.tensor_keys.pred_q1, td.get(self.tensor_keys.pred_q1))
        tensordict.set(self.tensor_keys.pred_q2, td.get(self.tensor_keys.pred_q2))
        tensordict.set(self.tensor_keys.priority, metadata["td_error"].max(0).values)
        return TensorDict(out)

