"""Fused forward of offrl's continuous CQL loss (:class:`FusedOfflineCQLLoss`) and of its Cal-QL variant.

Same constructor, outputs, random draws and semantics as :class:`~offrl.algos.cql_loss.OfflineCQLLoss` (the
authors' CQL(H) penalty, working Lagrange multiplier, action rescaling), so the trainer can switch to it
with a flag and learn the same thing faster; tests/algos/test_fused_losses.py checks losses and gradients.
Continuous CQL on a CPU is bound by arithmetic (about 90% of its FLOPs are the penalty: 3 action sources x
``num_random`` samples x batch x 2 critics); the fast path runs the actor once per observation batch
instead of once per repeated copy, the data action and all ``3 * num_random`` penalty actions in one
forward per critic, and the critic ensemble as plain per-critic matmuls (torchrl's vmapped ensemble turns
the width-1 output layer into a slow batched matmul). When the penalty cannot matter (``min_q_weight == 0``
without Lagrange: SAC; :attr:`OfflineCQLLoss.penalty_skipped`) the critics score only the data actions:
the penalty's actions are still drawn (same random stream), ``loss_cql`` is 0 and ``cql_gap`` NaN.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules.distributions.utils import rsample_and_log_prob
from torchrl.objectives.utils import distance_loss

from offrl.algos.calql_loss import CalQLLoss
from offrl.algos.cql_loss import OfflineCQLLoss
from offrl.algos.kernels import chain
from offrl.algos.plans import (
    ParamCache,
    Plan,
    actor_plan,
    detached,
    ensemble_forward,
    ensemble_forward_split,
    mlp_plan,
)

__all__ = ["FusedCalQLLoss", "FusedOfflineCQLLoss"]


class FusedOfflineCQLLoss(ParamCache, OfflineCQLLoss):
    """:class:`~offrl.algos.cql_loss.OfflineCQLLoss` with a fused forward (same constructor and outputs).

    Falls back to ``OfflineCQLLoss.forward`` outside the fast path (a critic that is not a
    ``ValueOperator(MLP)``, ``reduction != "mean"``, a batch with more than one dimension).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_fast_path()

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if not self.fast_path or tensordict.ndim != 1:
            return super().forward(tensordict)
        return self._fast_forward(tensordict)

    def _fast_forward(self, tensordict: TensorDictBase) -> TensorDictBase:
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
            # (cql_gaps), then the BC and actor samples (_actor_terms).
            with torch.no_grad():
                dist_next = self.actor_network.build_dist_from_params(params_next)
                next_action, next_log_prob = rsample_and_log_prob(dist_next)
                if self.backup_action == "mean":
                    next_action = dist_next.deterministic_sample
                dist_next_rep = self._repeat_dist(params_next, n_rand)
                max_actions = rsample_and_log_prob(dist_next_rep)[0] if self.max_q_backup else None
                curr_actions, curr_log_pis = rsample_and_log_prob(self._repeat_dist(params_obs.detach(), n_rand))
                next_actions, next_log_pis = rsample_and_log_prob(dist_next_rep)
                random_actions = torch.empty_like(curr_actions).uniform_(-1, 1)

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
        out.update(self._actor_terms(q_steps, obs_td, params_obs, action, alpha, q_data))
        out["cql_gap"] = gap
        if self.with_lagrange:
            out["alpha_prime"] = self.log_alpha_prime.detach().exp()
        return TensorDict(out)

    def actor_forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """:meth:`OfflineCQLLoss.actor_forward` with the fused actor and critic passes."""
        if not self.fast_path or tensordict.ndim != 1:
            return super().actor_forward(tensordict)
        td = self._unit_actions(tensordict)
        obs_td = td.select(*[unravel_key(k) for k in self.actor_network.in_keys])
        action = td.get(self.tensor_keys.action)
        with set_exploration_type(ExplorationType.RANDOM), torch.autocast(action.device.type, enabled=False):
            params_obs = self._dist_params(obs_td)
        q_steps = self._steps(self._q_plan, "qvalue_network_params")
        q_data = None
        if self.actor_bc_weight > 0:  # the regulariser's scale, from the critics as they are now
            with torch.no_grad():
                q_data = ensemble_forward(q_steps, self._q_input(obs_td, action), self.num_qvalue_nets)
        return TensorDict(self._actor_terms(q_steps, obs_td, params_obs, action, self._alpha, q_data))

    def _init_fast_path(self) -> None:
        found = mlp_plan(self.qvalue_network, self.qvalue_network_params)
        self._q_plan: Plan | None = None
        if found is not None:
            plan, td_module = found
            # The critic must read exactly the actor's inputs plus the action (the penalty feeds it the
            # actor's inputs, repeated), in the order the MLP concatenates them.
            q_in = [unravel_key(k) for k in td_module.in_keys]
            if list(td_module.in_keys) == list(self.qvalue_network.in_keys) and q_in.count(
                unravel_key(self.tensor_keys.action)
            ) == 1:
                self._q_plan = plan
        self._q_in_keys = [unravel_key(k) for k in self.qvalue_network.in_keys]
        # The split first layer needs the action to be the critic's last input, a Linear first layer
        # and at least one more Linear after it (there always is one in practice).
        self._split_first = (
            self._q_plan is not None
            and self._q_in_keys[-1] == unravel_key(self.tensor_keys.action)
            and isinstance(self._q_plan[0], tuple)
            and sum(isinstance(st, tuple) for st in self._q_plan) >= 2
        )
        self._index_cache: dict = {}
        # The actor as a plan on its parameters too, where it is laid out as offrl builds it and its outputs
        # cover the distribution's inputs (otherwise it runs through its modules, as torchrl runs it).
        actor = actor_plan(self.actor_network, self.actor_network_params)
        self._dist_in = [unravel_key(k) for k in self._dist_param_keys()]
        covers = actor is not None and {unravel_key(k) for k in actor[3]} >= set(self._dist_in)
        self._actor = actor if covers else None

    def _critic_pass(self, q_steps: list, obs_td: TensorDictBase, next_td: TensorDictBase,
                     blocks: list[tuple[str, Tensor, int]]) -> Tensor:
        """All critics on row blocks ``(state source "obs" | "next", actions, repeat)``: [n_q, rows, 1].

        Each block scores ``actions`` (``[batch * repeat, act]``) at its states repeated ``repeat`` times.
        """
        n_q = self.num_qvalue_nets
        if not self._split_first:
            q_input = torch.cat(
                [self._q_input(obs_td if src == "obs" else next_td, act, rep) for src, act, rep in blocks], 0
            )
            return ensemble_forward(q_steps, q_input, n_q)
        obs_keys = self._q_in_keys[:-1]

        def states(td: TensorDictBase) -> Tensor:
            parts = [td.get(k) for k in obs_keys]
            return torch.cat(parts, -1) if len(parts) > 1 else parts[0]

        batch = blocks[0][1].shape[0] // blocks[0][2]
        uses_next = any(src == "next" for src, _, _ in blocks)
        obs = torch.cat([states(obs_td), states(next_td)], 0) if uses_next else states(obs_td)
        signature = (batch, tuple((src, rep) for src, _, rep in blocks), obs.device)
        index = self._index_cache.get(signature)
        if index is None:
            base = torch.arange(batch, device=obs.device)
            index = torch.cat([(base + (batch if src == "next" else 0)).repeat_interleave(rep)
                               for src, _, rep in blocks])
            self._index_cache = {signature: index}  # one shape at a time is all a training run uses
        actions = torch.cat([act for _, act, _ in blocks], 0)
        return ensemble_forward_split(q_steps, obs, index, actions, n_q)

    @property
    def fast_path(self) -> bool:
        """Whether :meth:`forward` can take the fast path (otherwise the parent class's forward)."""
        if self._q_plan is None or self.reduction != "mean":
            return False
        action = unravel_key(self.tensor_keys.action)
        actor_in = {unravel_key(k) for k in self.actor_network.in_keys}
        return all(k == action or k in actor_in for k in self._q_in_keys) and hasattr(
            self.actor_network, "build_dist_from_params"
        )

    def _q_input(self, source: TensorDictBase | dict, action: Tensor, repeat: int = 1) -> Tensor:
        """Concatenate the critic's inputs in its in_keys order, observations repeated ``repeat`` times."""
        action_key = unravel_key(self.tensor_keys.action)
        parts = []
        for key in self._q_in_keys:
            if key == action_key:
                parts.append(action)
            else:
                x = source.get(key)
                parts.append(x.repeat_interleave(repeat, dim=0) if repeat > 1 else x)
        return torch.cat(parts, -1) if len(parts) > 1 else parts[0]

    def _repeat_dist(self, dist_params: TensorDictBase, repeat: int):
        """The policy at each state repeated ``repeat`` times (as torchrl's repeated observations give)."""
        rep = dist_params.apply(
            lambda x: x.repeat_interleave(repeat, dim=0), batch_size=[dist_params.shape[0] * repeat]
        )
        return self.actor_network.build_dist_from_params(rep)

    def _dist_param_keys(self) -> list[NestedKey]:
        """In-keys of the actor's distribution (e.g. ``loc``, ``scale``)."""
        cached = self.__dict__.get("_dist_keys")
        if cached is None:
            prob_module = None
            for mod in self.actor_network.modules():
                if hasattr(mod, "distribution_class") and hasattr(mod, "in_keys"):
                    prob_module = mod
            cached = self.__dict__["_dist_keys"] = list(prob_module.in_keys)
        return cached

    def _actor_dist_params(self, obs_td: TensorDictBase, next_td: TensorDictBase):
        """Distribution parameters at ``s`` (with grad: actor and BC losses) and at ``s'`` (no grad:
        torchrl samples there with the detached actor parameters). One actor pass each."""
        params_obs = self._dist_params(obs_td)
        with torch.no_grad():
            return params_obs, self._dist_params(next_td, detach=True)

    def _dist_params(self, td: TensorDictBase, detach: bool = False) -> TensorDictBase:
        """The actor's distribution parameters at ``td`` (through its plan where it has one)."""
        if self._actor is not None:
            steps = self._steps(self._actor[0], "actor_network_params")
            return self._actor_params(td, detached(steps) if detach else steps)
        params = self.actor_network_params.data if detach else self.actor_network_params
        with params.to_module(self.actor_network, preserve_module_state=False):
            return self.actor_network.get_dist_params(td.copy()).select(*self._dist_in)

    def _actor_params(self, td: TensorDictBase, steps: list) -> TensorDictBase:
        """The actor's distribution parameters at ``td``'s observations, computed by its plan."""
        _, tail, in_key, out_keys = self._actor
        out = tail(chain(steps, td.get(in_key)))
        out = out if isinstance(out, tuple) else (out,)
        return TensorDict(dict(zip(out_keys, out, strict=True)), batch_size=td.batch_size).select(*self._dist_in)

    @torch.no_grad()
    def _td_target(self, tensordict, next_td, next_action, next_log_prob, max_actions, alpha) -> Tensor:
        """torchrl's ``CQLLoss._get_value_v`` on the target critics: TD(0) target of shape [batch]."""
        n_q, n_rand, batch = self.num_qvalue_nets, self.num_random, tensordict.shape[0]
        target_steps = self._steps(self._q_plan, "target_qvalue_network_params")
        if not self.max_q_backup:
            q_next = ensemble_forward(target_steps, self._q_input(next_td, next_action), n_q)
            next_value = q_next.min(0)[0]
            if not self.deterministic_backup:
                next_value = next_value - alpha * next_log_prob.unsqueeze(-1)
        else:
            q_next = ensemble_forward(target_steps, self._q_input(next_td, max_actions, n_rand), n_q)
            next_value = q_next.reshape(n_q, batch, n_rand, -1).max(-2)[0].min(0)[0]
        value_td = tensordict.clone(False)
        value_td.set(("next", self.value_estimator.tensor_keys.value), next_value)
        return self.value_estimator.value_estimate(value_td).squeeze(-1)

    def _actor_terms(self, q_steps: list, obs_td: TensorDictBase, params_obs: TensorDictBase, action: Tensor,
                     alpha: Tensor, q_data: Tensor | None) -> dict[str, Tensor]:
        """loss_actor (critics detached; plus the TD3+BC term, scaled by ``q_data`` = Q(s, a_data) per critic,
        when ``actor_bc_weight`` > 0), loss_actor_bc, loss_alpha, alpha and entropy, as torchrl computes them.
        Draws the BC sample, then the actor's, from pi(.|s) (``params_obs``)."""
        with set_exploration_type(ExplorationType.RANDOM), torch.autocast(action.device.type, enabled=False):
            dist_obs = self.actor_network.build_dist_from_params(params_obs)
            _, bc_sample_log_prob = rsample_and_log_prob(dist_obs)
            bc_log_prob = dist_obs.log_prob(action)
            pi_action, pi_log_prob = rsample_and_log_prob(dist_obs)
        q_pi = ensemble_forward(detached(q_steps), self._q_input(obs_td, pi_action), self.num_qvalue_nets)
        min_q_pi = q_pi.min(0)[0].squeeze(-1)
        if self.target_entropy is not None:
            loss_alpha = (-self.log_alpha * (pi_log_prob.detach() + self.target_entropy)).mean()
        else:
            loss_alpha = torch.zeros_like(pi_log_prob).mean()
        loss_actor = (alpha * pi_log_prob - min_q_pi).mean()
        if self.actor_bc_weight > 0:
            loss_actor = loss_actor + self.actor_regularizer(dist_obs.deterministic_sample, action,
                                                             q_data.squeeze(-1))
        return {
            "loss_actor_bc": (alpha * bc_sample_log_prob - bc_log_prob).mean(),
            "loss_actor": loss_actor,
            "loss_alpha": loss_alpha,
            "alpha": alpha,
            "entropy": -pi_log_prob.detach().mean(),
        }


class FusedCalQLLoss(CalQLLoss, FusedOfflineCQLLoss):
    """A :class:`FusedOfflineCQLLoss` turned into Cal-QL (:meth:`CalQLLoss.from_cql`): Cal-QL's forward is
    the plain one (the fast path computes the penalty inline and would skip the calibration); same
    parameters."""


FusedOfflineCQLLoss.calql_class = FusedCalQLLoss
