"""The discrete Q losses' gradients in closed form, without autograd's graph.

DQN's and discrete CQL's loss is a function of the Q-values the network outputs: its derivative with respect to
Q is known in closed form (the distance's derivative at the data action; CQL(H) adds ``softmax(Q) - onehot(a)``),
and the network is a plain MLP (a plan, :mod:`offrl.algos.plans`), whose backward is a few matmuls and the
activations' backward kernels. Small networks spend a large part of an update in autograd's per-node
bookkeeping; computing the same arithmetic directly removes it. Used by the fused losses (one network, 2-D
batches, through :class:`ClosedFormLoss`) and by the stacked seeds (``[N, B]`` batches, gradients written
straight into ``.grad``). The numbers equal autograd's within float rounding (tests/algos/test_q_grad.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchrl.objectives.utils import distance_loss

__all__ = ["ClosedFormLoss", "QGrad", "backward", "closed_form_reason", "forward_saved"]


def _relu_backward(grad: Tensor, out: Tensor) -> Tensor:
    return torch.ops.aten.threshold_backward(grad, out, 0)


# an activation step -> its backward from its output: (grad wrt output, output) -> grad wrt input
_BACKWARD: dict[Any, Callable[[Tensor, Tensor], Tensor]] = {
    torch.relu_: _relu_backward, torch.relu: _relu_backward, torch.tanh: torch.ops.aten.tanh_backward}
# d distance(q_a, target) / d q_a as a function of q_a - target (torchrl's distance_loss; smooth-l1 with beta 1)
_DISTANCE_GRAD: dict[str, Callable[[Tensor], Tensor]] = {
    "l2": lambda d: d * 2, "l1": torch.sign, "smooth_l1": lambda d: d.clamp(-1.0, 1.0)}


def closed_form_reason(steps: Sequence[Any], loss_function: str) -> str | None:
    """Why a plan's gradients cannot be computed here (None when they can)."""
    if loss_function not in _DISTANCE_GRAD:
        return f"no closed-form derivative for the {loss_function!r} distance"
    for step in steps:
        if not isinstance(step, tuple) and step not in _BACKWARD:
            return f"no closed-form backward for the activation {step!r}"
    return None


def forward_saved(steps: Sequence[Any], x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The MLP on ``x`` ([B, in], or [N, B, in] for stacked ``[N, ...]`` parameters), keeping what
    :func:`backward` reads: each linear step's input and each activation's output."""
    saved = []
    stacked = x.ndim == 3
    for step in steps:
        if isinstance(step, tuple):
            saved.append(x)
            w, b = step
            if stacked:
                x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)) if b is not None else x @ w.transpose(1, 2)
            else:
                x = torch.addmm(b, x, w.t()) if b is not None else x @ w.t()
        else:
            x = step(x)
            saved.append(x)
    return x, saved


def backward(steps: Sequence[Any], grad: Tensor, saved: Sequence[Tensor],
             out: Sequence[tuple[Tensor, Tensor | None] | None] | None = None) -> list[Tensor]:
    """The parameters' gradients from ``grad`` = d loss / d output, in the order the steps hold them
    (weight, then bias if any, per linear step). With ``out`` (per step, preallocated ``(weight, bias)``
    gradient tensors), written into those."""
    grads: list[Tensor] = []
    stacked = grad.ndim == 3
    for k in range(len(steps) - 1, -1, -1):
        step, inp = steps[k], saved[k]
        if not isinstance(step, tuple):
            grad = _BACKWARD[step](grad, inp)
            continue
        g_w, g_b = out[k] if out is not None else (None, None)  # type: ignore[misc]
        if stacked:
            g_w = torch.bmm(grad.transpose(1, 2), inp, out=g_w)
        else:
            g_w = torch.mm(grad.t(), inp, out=g_w)
        if step[1] is not None:
            g_b = torch.sum(grad, -2, out=g_b)
            grads.append(g_b)
        grads.append(g_w)
        if k:
            grad = grad @ step[0]
    grads.reverse()
    return grads


class QGrad:
    """The loss head of a batch, from Q ``[..., B, A]``: the data action's Q, the squared TD error, the distance
    and (with ``cql``) logsumexp(Q); :meth:`grad` gives the derivative of a weighted sum of the mean distance and
    the mean CQL gap with respect to Q (computed only when a backward asks for it)."""

    __slots__ = ("_exp", "_total", "categorical", "diff", "distance", "logsumexp", "loss_function", "q", "q_a",
                 "scale", "squared", "where")

    def __init__(self, q: Tensor, action: Tensor, categorical: bool, target: Tensor, loss_function: str,
                 cql: bool) -> None:
        self.q, self.categorical, self.loss_function = q, categorical, loss_function
        if categorical:
            self.where = action if action.ndim == q.ndim else action.unsqueeze(-1)
            self.q_a = torch.gather(q, -1, self.where).squeeze(-1)
        else:
            self.where = action.to(q.dtype)
            self.q_a = (q * self.where).sum(-1)
        self.diff = self.q_a - target
        self.squared = self.diff.square()
        self.distance = self.squared if loss_function == "l2" else distance_loss(self.q_a, target, loss_function)
        self.scale = 1.0 / q.shape[-2]  # the mean over the batch
        self.logsumexp: Tensor | None = None
        if cql:  # softmax (in grad) and logsumexp from one exp
            top = q.amax(-1, keepdim=True)
            self._exp = (q - top).exp_()
            self._total = self._exp.sum(-1, keepdim=True)
            self.logsumexp = self._total.log().add_(top).squeeze(-1)

    def grad(self, distance_weight: float | Tensor, cql_weight: float | Tensor = 0.0) -> Tensor:
        """d/dQ of ``distance_weight * mean(distance) + cql_weight * mean(logsumexp(Q) - Q[a])`` (a new tensor)."""
        grad_a = _DISTANCE_GRAD[self.loss_function](self.diff).mul_(distance_weight * self.scale)
        if self.logsumexp is not None and not (isinstance(cql_weight, float) and cql_weight == 0.0):
            weight = cql_weight * self.scale
            grad = self._exp.mul(self._total.reciprocal().mul_(weight))  # weight * softmax(Q)
            grad_a = grad_a.sub_(weight)
        else:
            grad = torch.zeros_like(self.q)
        grad_a = grad_a.unsqueeze(-1)
        if self.categorical:
            return grad.scatter_add_(-1, self.where, grad_a)
        return grad.addcmul_(self.where, grad_a)


class ClosedFormLoss(torch.autograd.Function):
    """Loss values computed without a graph, attached to the network's parameters: their backward is the
    closed-form one. ``apply(values, head, weights, steps, saved, *params)``: value ``i`` is
    ``weights[i][0] * mean distance + weights[i][1] * mean CQL gap`` of ``head``; the values' upstream gradients
    weigh those terms into one derivative with respect to Q (:meth:`QGrad.grad`), then :func:`backward` runs the
    network's backward once."""

    @staticmethod
    def forward(ctx: Any, values: tuple[Tensor, ...], head: QGrad, weights: Sequence[tuple[float, float]],  # noqa: D102
                steps: Sequence[Any], saved: Sequence[Tensor], *params: Tensor) -> tuple[Tensor, ...]:
        ctx.head, ctx.weights, ctx.steps, ctx.saved, ctx.n_params = head, weights, steps, saved, len(params)
        return tuple(v.clone() for v in values)

    @staticmethod
    def backward(ctx: Any, *upstream: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        distance: Tensor | float = 0.0
        cql: Tensor | float = 0.0
        used = False
        for up, (w_distance, w_cql) in zip(upstream, ctx.weights, strict=True):
            if up is None:
                continue
            used = True
            if w_distance:
                distance = distance + up * w_distance
            if w_cql:
                cql = cql + up * w_cql
        if not used:
            return (None,) * (5 + ctx.n_params)
        params = backward(ctx.steps, ctx.head.grad(distance, cql), ctx.saved)
        return (None,) * 5 + tuple(params)
