"""Several seeds' discrete Q losses as one batched loss (``offrl train --seeds N --vectorize``).

:class:`StackedQLoss` takes N losses of the same configuration (:class:`~offrl.algos.fused_q.FusedDQNLoss` or
:class:`~offrl.algos.fused_q.FusedWeightedDiscreteCQLLoss`, one per seed, each built from its own seed) and
moves their Q-network and target-network parameters into stacked ``[N, ...]`` tensors: each seed's
parameters become views of its slice, so its policy, evaluator and ``state_dict`` read the stacked values,
and a ``load_state_dict`` writes into them. One call runs the N fused forwards as batched matmuls on a
``[N, B]`` batch and returns the sum of the seeds' mean losses, whose gradient with respect to seed i's slice
is seed i's own gradient (the seeds share no parameter). Same numbers as each seed's own fused loss within
float rounding (tests/algos/test_stacked_q.py).

:meth:`StackedQLoss.gradients` computes the same gradients without autograd (:mod:`offrl.algos.q_grad`), written
into ``.grad`` tensors allocated once, for the networks that allows (ReLU or Tanh MLPs; an l2, l1 or smooth-l1
distance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.objectives import DQNLoss
from torchrl.objectives.utils import distance_loss

from offrl.algos.fused_q import FusedDQNLoss, FusedWeightedDiscreteCQLLoss, td0_target
from offrl.algos.q_grad import QGrad, backward, closed_form_reason, forward_saved

__all__ = ["StackedQLoss", "stack_as_views", "stackable_reason", "stacked_steps"]

_HYPER = ("loss_function", "action_space", "double_dqn", "min_q_weight", "reduction")


def _key(key: Any) -> tuple[str, ...]:
    return key if isinstance(key, tuple) else (key,)


def stack_as_views(sources: Sequence[Tensor], grad: bool = True) -> Tensor:
    """The seeds' tensors stacked ``[N, ...]`` (a leaf, requiring grad as they did when ``grad``), each
    seed's own tensor then becoming a view of its slice (its identity kept: modules, optimizers and
    ``state_dict`` still hold it, and read and write the stack)."""
    stacked = torch.stack([p.detach() for p in sources])
    if grad:
        stacked.requires_grad_(sources[0].requires_grad)
    for i, p in enumerate(sources):
        p.data = stacked.data[i]
    return stacked


def stacked_steps(plan: list, tensors: dict[tuple[str, ...], Tensor]) -> list:
    """A network's plan (``offrl.algos.plans``) resolved on stacked ``[N, ...]`` parameters, keyed like the
    plan's (tuple) keys: ``(weight, bias | None)`` per linear step, activations as they are."""
    return [(tensors[_key(s[1])], tensors[_key(s[2])] if s[2] is not None else None) if isinstance(s, tuple) else s
            for s in plan]


def _gamma(loss: Any) -> float:
    return float(loss.value_estimator.gamma)


def stackable_reason(losses: Sequence[Any]) -> str | None:
    """Why ``losses`` cannot run as one :class:`StackedQLoss` (None when they can)."""
    first = losses[0]
    kind = type(first)
    if kind not in (FusedDQNLoss, FusedWeightedDiscreteCQLLoss):
        return (f"the batched seeds run the fused DQN and discrete CQL losses, not {kind.__name__} "
                "(set dqn.fused / discrete_cql.fused to true)")
    for loss in losses:
        if type(loss) is not kind:
            return "every seed must train the same algorithm"
        if loss.q_plan is None or not loss.fast_path:
            return ("the batched seeds need a plain MLP Q-network with TD(0) targets and mean reduction "
                    "(no dueling head)")
        if any(getattr(loss, a, None) != getattr(first, a, None) for a in _HYPER) or _gamma(loss) != _gamma(first):
            return "every seed must use the same hyperparameters"
        shapes = [tuple(p.shape) for p in loss.value_network_params.values(True, True)]
        if shapes != [tuple(p.shape) for p in first.value_network_params.values(True, True)]:
            return "every seed must use the same network sizes"
        if any(p.device != next(iter(first.value_network_params.values(True, True))).device
               for p in loss.value_network_params.values(True, True)):
            return "every seed must train on the same device"
    return None


class StackedQLoss:
    """N fused discrete Q losses as one batched loss over stacked parameters (see the module docstring).

    ``params`` are the stacked leaves to optimize (one per parameter of a seed's Q-network, in the order of
    ``value_network_params``), ``targets`` the stacked target parameters (same order). ``seed_params(i)``
    maps each of seed i's own parameter tensors (by identity) to its stacked leaf.
    """

    def __init__(self, losses: Sequence[Any]) -> None:
        reason = stackable_reason(losses)
        if reason is not None:
            raise ValueError(reason)
        self.losses = list(losses)
        self.n = len(self.losses)
        first = self.losses[0]
        self.discrete_cql = isinstance(first, FusedWeightedDiscreteCQLLoss)
        keys = [_key(k) for k, _ in first.value_network_params.items(True, True)]
        self.keys = keys
        self.params: list[Tensor] = []
        self.targets: list[Tensor] = []
        for key in keys:
            self.params.append(stack_as_views([loss.value_network_params.get(key) for loss in self.losses]))
            self.targets.append(stack_as_views([loss.target_value_network_params.get(key) for loss in self.losses],
                                               grad=False))
        self.target_sources = self.params  # the target update's sources: the Q-network itself
        plan, self.obs_key = first.q_plan
        by_key = dict(zip(keys, self.params, strict=True))
        by_key_target = dict(zip(keys, self.targets, strict=True))
        self.steps = stacked_steps(plan, by_key)
        self.target_steps = stacked_steps(plan, by_key_target)
        self.loss_function = first.loss_function
        self.categorical = first.action_space == "categorical"
        self.min_q_weight = float(getattr(first, "min_q_weight", 0.0))
        self._checked = False
        used = {id(t) for step in self.steps if isinstance(step, tuple) for t in step if t is not None}
        #: whether :meth:`gradients` can run (else: ``__call__`` and autograd)
        self.manual = (closed_form_reason(self.steps, self.loss_function) is None
                       and used == {id(p) for p in self.params})
        self._grads: list[Tensor] = []
        self._grad_steps: list[tuple[Tensor, Tensor | None] | None] = []
        if self.manual:  # each linear step's (weight, bias) gradient tensors, written in place every step
            self._grads = [torch.zeros_like(p) for p in self.params]
            grad_of = {id(p): g for p, g in zip(self.params, self._grads, strict=True)}
            self._grad_steps = [(grad_of[id(step[0])], grad_of[id(step[1])] if step[1] is not None else None)
                                if isinstance(step, tuple) else None for step in self.steps]

    def seed_params(self, i: int) -> dict[int, Tensor]:
        """``id(seed i's parameter) -> stacked leaf`` (how a seed's optimizer state maps onto the stack)."""
        own = [self.losses[i].value_network_params.get(k) for k in self.keys]
        return {id(p): s for p, s in zip(own, self.params, strict=True)}

    @staticmethod
    def forward_mlp(steps: list, x: Tensor) -> Tensor:
        """N stacked MLPs on their own inputs: ``x`` [N, B, in] -> [N, B, out] (batched matmuls)."""
        return forward_saved(steps, x)[0]

    def _check_batch(self, batch: TensorDictBase) -> None:
        first = self.losses[0]
        extra = [first.value_estimator.tensor_keys.steps_to_next_obs]
        if isinstance(first, DQNLoss) and first.use_prioritized_weights in (True, "auto"):
            extra.append(first.tensor_keys.priority_weight)
        if batch.ndim != 2 or any(batch.get(k, None) is not None for k in extra):
            raise ValueError("the batched seeds need [seeds, batch] transitions without multi-step or priority "
                             "weight keys")
        self._checked = True

    def _target(self, batch: TensorDictBase) -> Tensor:
        """The TD(0) target [N, B] from the target network (double DQN: at the online network's choice)."""
        return td0_target(self.forward_mlp, self.steps, self.target_steps, batch, self.obs_key, self.losses[0])

    def gradients(self, batch: TensorDictBase) -> tuple[dict[str, Tensor], Tensor]:
        """:meth:`__call__`'s metrics and Q, with every seed's gradient written into its slice of the stacked
        parameters' ``.grad`` (no autograd: the loss's derivative in closed form, then the layers' backward).
        Only when :attr:`manual`."""
        if not self._checked:
            self._check_batch(batch)
        for p, g in zip(self.params, self._grads, strict=True):
            p.grad = g
        with torch.no_grad():
            q, saved = forward_saved(self.steps, batch.get(self.obs_key))
            target = self._target(batch)
            head = QGrad(q, batch.get(self.losses[0].tensor_keys.action), self.categorical, target,
                         self.loss_function, self.discrete_cql)
            grad = head.grad(0.5, self.min_q_weight) if self.discrete_cql else head.grad(1.0)
            backward(self.steps, grad, saved, out=self._grad_steps)
            td_error = head.squared.mean(1)
            if not self.discrete_cql:
                return {"loss": head.distance.mean(1), "td_error": td_error}, q
            gap = (head.logsumexp - head.q_a).mean(1)
            metrics = {"loss_qvalue": (0.5 * head.distance).mean(1), "loss_cql": gap * self.min_q_weight,
                       "td_error": td_error, "cql_gap": gap, "target_value": target.mean(1)}
            return metrics, q

    def __call__(self, batch: TensorDictBase) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """``batch`` [N, B] (seed i's transitions in row i) -> (the sum of the seeds' total losses, the per-seed
        metrics the trainers log, each [N], in their order; Q of every action [N, B, A], detached)."""
        if not self._checked:
            self._check_batch(batch)
        first = self.losses[0]
        keys = first.tensor_keys
        q = self.forward_mlp(self.steps, batch.get(self.obs_key))
        action = batch.get(keys.action)
        if self.categorical:
            q_a = torch.gather(q, -1, action if action.ndim == q.ndim else action.unsqueeze(-1)).squeeze(-1)
        else:
            q_a = (q * action.to(torch.float)).sum(-1)
        target = self._target(batch)
        td_error = (q_a - target).pow(2).detach().mean(1)
        distance = distance_loss(q_a, target, self.loss_function)
        if not self.discrete_cql:
            loss = distance.mean(1)
            return loss.sum(), {"loss": loss.detach(), "td_error": td_error}, q.detach()
        loss_qvalue = (0.5 * distance).mean(1)
        gap = (torch.logsumexp(q, dim=-1) - q_a).mean(1)  # CQL(H), per seed
        loss_cql = gap * self.min_q_weight
        metrics = {"loss_qvalue": loss_qvalue.detach(), "loss_cql": loss_cql.detach(), "td_error": td_error,
                   "cql_gap": gap.detach(), "target_value": target.mean(1)}
        return (loss_qvalue + loss_cql).sum(), metrics, q.detach()
