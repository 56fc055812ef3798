"""Fused forwards of the discrete losses: :class:`FusedDQNLoss` (torchrl's ``DQNLoss``) and
:class:`FusedWeightedDiscreteCQLLoss` (offrl's :class:`~offrl.algos.discrete_cql_loss.WeightedDiscreteCQLLoss`).

Small Q-networks are bound by per-op overhead, so the fast path skips the TensorDict plumbing: the
Q-network runs as a chain of matmuls on the stored parameters and the TD(0) target is computed inline.
Same constructor, outputs and numbers (within float rounding; tests/algos/test_fused_losses.py) as the
parent loss, whose own forward runs outside the fast path's assumptions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor
from torchrl.objectives import DQNLoss
from torchrl.objectives.utils import distance_loss
from torchrl.objectives.value import TD0Estimator

from offrl.algos.discrete_cql_loss import WeightedDiscreteCQLLoss
from offrl.algos.plans import ParamCache, Plan, mlp_forward, mlp_plan
from offrl.algos.q_grad import ClosedFormLoss, QGrad, closed_form_reason, forward_saved

__all__ = ["FusedDQNLoss", "FusedQMixin", "FusedWeightedDiscreteCQLLoss", "td0_target"]


def td0_target(forward: Callable[[list, Tensor], Tensor], steps: list, target_steps: list, batch: TensorDictBase,
               obs_key: NestedKey, loss: Any) -> Tensor:
    """``r + gamma * (1 - terminated) * V(s')`` [...] without a graph (torchrl's ``td0_return_estimate``), V from the
    target network: its max over actions, or with ``loss.double_dqn`` its value at the online network's choice
    (van Hasselt et al. 2016). ``forward(steps, obs)`` runs a network's steps."""
    nxt = batch.get("next")
    with torch.no_grad():
        next_obs = nxt.get(obs_key)
        q_next = forward(target_steps, next_obs)
        if getattr(loss, "double_dqn", False):  # the online network chooses, the target network scores
            next_value = torch.gather(q_next, -1, forward(steps, next_obs).argmax(-1, keepdim=True))
        else:  # the greedy action's value (QValueModule's chosen_action_value) is the row max
            next_value = q_next.max(-1, keepdim=True)[0]
        est_keys = loss.value_estimator.tensor_keys
        terminated = nxt.get(est_keys.terminated, None)
        if terminated is None:
            terminated = nxt.get(est_keys.done)
        return torch.add(nxt.get(est_keys.reward), next_value.masked_fill_(terminated, 0.0),
                         alpha=loss.value_estimator.gamma).squeeze(-1)


_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


class FusedQMixin(ParamCache):
    """The discrete losses' fast path: the Q-network as a matmul chain, TD(0) inline, target network
    bootstrap. Mixed into a torchrl loss with a ``value_network`` (``self`` has its attributes)."""

    _q_plan: Plan | None
    _q_obs_key: NestedKey | None

    def _init_fast_path(self) -> None:
        self._q_plan = None
        self._q_obs_key = None
        found = mlp_plan(self.value_network, self.value_network_params)
        if found is not None and len(found[1].in_keys) == 1:
            self._q_plan = found[0]
            self._q_obs_key = unravel_key(found[1].in_keys[0])

    @property
    def q_plan(self) -> tuple[Plan, NestedKey] | None:
        """The Q-network as a plan over ``value_network_params`` and the observation key it reads; None
        when the network is not the plain MLP the fast path runs."""
        return None if self._q_plan is None else (self._q_plan, self._q_obs_key)

    @property
    def fast_path(self) -> bool:
        """Whether :meth:`forward` can take the fast path (otherwise the parent loss's forward runs)."""
        est = self._value_estimator
        return (
            self._q_plan is not None
            and self.reduction == "mean"
            and type(est) is TD0Estimator
            and not est.average_rewards
        )

    def fast_path_for(self, tensordict: TensorDictBase) -> bool:
        """:attr:`fast_path` for this batch: one batch dimension, no multi-step or priority-weight keys."""
        keys = self.tensor_keys
        extra = [self.value_estimator.tensor_keys.steps_to_next_obs]
        if isinstance(self, DQNLoss) and self.use_prioritized_weights in (True, "auto"):
            extra.append(keys.priority_weight)
        return self.fast_path and tensordict.ndim == 1 and all(tensordict.get(k, None) is None for k in extra)

    def _closed_form(self, tensordict: TensorDictBase) -> bool:
        """Whether this call's gradients come in closed form (:mod:`offrl.algos.q_grad`): an MLP whose
        activations and distance it knows, gradients wanted, no autocast on the network's device, no functorch
        transform around the call."""
        steps = self._steps(self._q_plan, "value_network_params")
        cache = self.__dict__["_step_cache"]  # dropped with the steps when the parameters may be replaced
        found = cache.get("closed_form")
        if found is None:  # (possible, the device its matmuls run on)
            device = next(step[0] for step in steps if isinstance(step, tuple)).device.type
            found = cache["closed_form"] = (closed_form_reason(steps, self.loss_function) is None, device)
        ok, device = found
        return ok and torch.is_grad_enabled() and not _functorch_active() and not torch.is_autocast_enabled(device)

    def _q_closed_form(self, tensordict: TensorDictBase, cql: bool) -> tuple[Tensor, Tensor, QGrad, tuple]:
        """Q [B, A], the TD(0) target [B] and the loss head (:class:`~offrl.algos.q_grad.QGrad`), computed
        without a graph; and what :class:`~offrl.algos.q_grad.ClosedFormLoss` attaches the loss values to
        (the network's steps, saved activations and parameters)."""
        steps = self._steps(self._q_plan, "value_network_params")
        with torch.no_grad():
            q, saved = forward_saved(steps, tensordict.get(self._q_obs_key))
            target = self._td_target(tensordict)
            head = QGrad(q, tensordict.get(self.tensor_keys.action), self.action_space == "categorical", target,
                         self.loss_function, cql)
        params = tuple(t for step in steps if isinstance(step, tuple) for t in step if t is not None)
        return q, target, head, (steps, saved, *params)

    def _td_target(self, tensordict: TensorDictBase) -> Tensor:
        """The TD(0) target [B] from the target network (double DQN: at the online network's choice)."""
        plan = self._q_plan
        return td0_target(mlp_forward, self._steps(plan, "value_network_params"),
                          self._steps(plan, "target_value_network_params"), tensordict, self._q_obs_key, self)

    def _q_terms(self, tensordict: TensorDictBase) -> tuple[Tensor, Tensor, Tensor]:
        """Predicted Q for all actions [B, A], Q of the taken action [B], TD(0) target from the target
        network [B] (with ``double_dqn``, at the action the online network picks; van Hasselt et al. 2016)."""
        keys = self.tensor_keys
        plan = self._q_plan
        q = mlp_forward(self._steps(plan, "value_network_params"), tensordict.get(self._q_obs_key))
        action = tensordict.get(keys.action)
        if self.action_space == "categorical":
            if action.ndim != q.ndim:
                action = action.unsqueeze(-1)
            q_a = torch.gather(q, -1, index=action).squeeze(-1)
        else:
            q_a = (q * action.to(torch.float)).sum(-1)
        return q, q_a, self._td_target(tensordict)


class FusedDQNLoss(FusedQMixin, DQNLoss):
    """torchrl's :class:`~torchrl.objectives.DQNLoss` with a fused forward (same constructor and outputs).

    The fast path covers an MLP Q-network (``QValueActor(MLP)``), TD(0) targets (double DQN included) and no
    prioritized weights in the batch; anything else runs ``DQNLoss.forward``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_fast_path()

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        if not self.fast_path_for(tensordict):
            return super().forward(tensordict)
        if self._closed_form(tensordict):
            _, _, head, attach = self._q_closed_form(tensordict, cql=False)
            tensordict.set(self.tensor_keys.priority, head.squared.unsqueeze(-1), inplace=True)
            (loss,) = ClosedFormLoss.apply((head.distance.mean(),), head, ((1.0, 0.0),), *attach)
            return TensorDict(loss=loss)
        _, q_a, target = self._q_terms(tensordict)
        tensordict.set(self.tensor_keys.priority, (q_a - target).pow(2).detach().unsqueeze(-1), inplace=True)
        loss = distance_loss(q_a, target, self.loss_function).mean()
        return TensorDict(loss=loss)


class FusedWeightedDiscreteCQLLoss(FusedQMixin, WeightedDiscreteCQLLoss):
    """:class:`~offrl.algos.discrete_cql_loss.WeightedDiscreteCQLLoss` with a fused forward (same
    constructor and outputs: TD target from the target network, penalty weighted by ``min_q_weight``,
    ``cql_gap``). Falls back to its parent's forward outside the fast path (a non-MLP Q-network,
    ``reduction != "mean"``, a multi-dimensional batch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_fast_path()

    @property
    def fast_path(self) -> bool:
        # The parent computes TD(0) inline from the estimator's gamma, whatever the estimator's type.
        return self._q_plan is not None and self.reduction == "mean"

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if not self.fast_path or tensordict.ndim != 1:
            return super().forward(tensordict)
        if self._closed_form(tensordict):
            return self._closed_form_forward(tensordict)
        q, q_a, target = self._q_terms(tensordict)
        td_error = (q_a - target).pow(2).unsqueeze(-1)
        tensordict.set(self.tensor_keys.priority, td_error.detach(), inplace=True)
        tensordict.set(self.tensor_keys.pred_val, q, inplace=True)  # torchrl's side output
        loss_cql = (torch.logsumexp(q, dim=-1) - q_a).mean()  # CQL(H): log-sum-exp minus the data action
        return TensorDict({
            "loss_qvalue": (0.5 * distance_loss(q_a, target, self.loss_function)).mean(),
            "loss_cql": loss_cql * self.min_q_weight,
            "td_error": td_error.mean(0).detach(),
            "pred_value": q.mean().detach(),
            "target_value": target.mean().detach(),
            "cql_gap": loss_cql.detach(),
        })

    def _closed_form_forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """:meth:`forward`'s outputs with the gradients in closed form (:mod:`offrl.algos.q_grad`)."""
        q, target, head, attach = self._q_closed_form(tensordict, cql=True)
        td_error = head.squared.unsqueeze(-1)
        tensordict.set(self.tensor_keys.priority, td_error, inplace=True)
        tensordict.set(self.tensor_keys.pred_val, q, inplace=True)
        gap = (head.logsumexp - head.q_a).mean()
        loss_qvalue, loss_cql = ClosedFormLoss.apply(
            ((0.5 * head.distance).mean(), gap * self.min_q_weight), head, ((0.5, 0.0), (0.0, self.min_q_weight)),
            *attach)
        return TensorDict({
            "loss_qvalue": loss_qvalue,
            "loss_cql": loss_cql,
            "td_error": td_error.mean(0),
            "pred_value": q.mean(),
            "target_value": target.mean(),
            "cql_gap": gap,
        })
