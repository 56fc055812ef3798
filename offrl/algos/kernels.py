"""CPU kernels of the fused losses: a linear layer through oneDNN (fused ReLU), a cheaper output layer, and
a chain of resolved layer steps that picks the kernel per layer.

Why: torch's float32 ``addmm``/``mm`` on CPU go to MKL or OpenBLAS, and which of them or oneDNN is faster
depends on the CPU and the layer's shape (oneDNN ran CQL's 7,936-row layers 2x faster on an AVX-512 EPYC and
DQN's 256-row ones slower on an AVX2 one): :mod:`offrl.algos.routes` measures it per shape on the machine.
A width-1 output layer's backward is a K=1 matrix product CPU BLAS runs slowly (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from offrl.algos.routes import forced_route, route_for

__all__ = ["chain", "linear"]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` as one ``addmm``."""
    if bias is None:
        return x @ weight.t()
    return torch.addmm(bias, x, weight.t())


class _OutputLinear(torch.autograd.Function):
    """The output layer ``h @ w.T + b`` in float32, with a leaner backward than autograd's.

    For a width-1 output (a critic) autograd computes ``grad_h = grad @ w`` as a K=1 matrix product, which
    CPU BLAS runs at a few GFLOP/s; it is the same products as the broadcast ``grad * w`` (bit for bit).
    Under bf16 autocast the layer runs in float32 on the bf16 hidden features (Q-values and TD targets keep
    full precision; a bf16 Q of 100 is quantized in steps of 0.5) and hands back a bf16 ``grad_h``
    without a float32 copy of the features.
    """

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, b: Tensor | None) -> Tensor:  # noqa: D102
        ctx.save_for_backward(h, w)
        ctx.has_bias = b is not None
        with torch.autocast(h.device.type, enabled=False):
            x = h if h.dtype == w.dtype else h.to(w.dtype)
            return torch.addmm(b, x, w.t()) if b is not None else x @ w.t()

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        h, w = ctx.saved_tensors
        grad_h = grad_w = grad_b = None
        with torch.autocast(h.device.type, enabled=False):
            g = grad.to(h.dtype)
            if ctx.needs_input_grad[0]:
                grad_h = g * w.to(h.dtype) if w.shape[0] == 1 else g @ w.to(h.dtype)
            if ctx.needs_input_grad[1]:
                grad_w = (g.t() @ h).to(w.dtype)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = grad.sum(0)
        return grad_h, grad_w, grad_b


def _onednn_linear_op() -> Callable | None:
    """oneDNN's fused linear (+ReLU) kernel, the one torch.compile's CPU backend emits, if usable here
    (without a oneDNN build of torch, or with ``OFFRL_KERNEL_ROUTE=torch``, it is off)."""
    if forced_route() == "torch" or not torch.backends.mkldnn.is_available():
        return None
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None:
        return None
    try:  # the op's schema has changed across torch releases: check it on a tiny product
        x, w = torch.ones(2, 3), torch.full((4, 3), 0.5)
        out = op(x, w, torch.zeros(4), "relu", [], "")
        if out.shape != (2, 4) or not torch.equal(out, torch.full((2, 4), 1.5)):
            return None
    except Exception:  # noqa: BLE001 - any failure means: use torch's own matmuls
        return None
    return op


_ONEDNN: Callable | None | bool = False  # False: not probed yet


def _onednn() -> Callable | None:
    global _ONEDNN
    if _ONEDNN is False:
        _ONEDNN = _onednn_linear_op()
    return _ONEDNN  # type: ignore[return-value]


class _OneDNNLinear(torch.autograd.Function):
    """``relu?(x @ w.T + b)`` in float32 on CPU through oneDNN: forward, input and weight gradients.

    The weight gradient ``g.T @ x`` runs as oneDNN's linear on the two transposed views, or with
    ``mm_weight_grad`` as torch's ``mm`` (which of the two is faster depends on the CPU and the shape:
    :mod:`offrl.algos.routes` measures it). ReLU is fused into the forward kernel and its backward reads
    the saved output, as ``relu`` itself does.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, relu: bool,  # noqa: D102
                mm_weight_grad: bool = False) -> Tensor:
        op = _onednn()
        # A strided input (observations sliced out of a packed batch row) is copied once here: oneDNN's
        # weight gradient on its transposed view falls back to a kernel ~250x slower (docs/performance.md).
        x = x.contiguous()
        y = op(x, w, b, "relu" if relu else "none", [], "")
        ctx.relu = relu
        ctx.mm_weight_grad = mm_weight_grad
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, w, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        x, w, y = ctx.saved_tensors
        g = torch.ops.aten.threshold_backward(grad, y, 0) if ctx.relu else grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn()(g, w.t().contiguous(), None, "none", [], "")
        if ctx.needs_input_grad[1]:
            if ctx.mm_weight_grad:
                grad_w = torch.mm(g.t(), x)
            else:
                grad_w = _onednn()(g.t(), x.t(), None, "none", [], "")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, None, None


def onednn_linear(x: Tensor, w: Tensor, b: Tensor | None, relu: bool, mm_weight_grad: bool = False) -> Tensor:
    """``relu?(x @ w.T + b)`` through oneDNN, with autograd (:class:`_OneDNNLinear`)."""
    return _OneDNNLinear.apply(x, w, b, relu, mm_weight_grad)


_RELUS = (torch.relu, torch.relu_)


def _route(x: Tensor, w: Tensor, relu: bool) -> str | None:
    """The oneDNN route this float32 CPU layer runs on (``onednn`` or ``onednn-mm``), or None for torch's
    own matmul: where torch has oneDNN, as measured on this machine for this shape and thread count
    (:mod:`offrl.algos.routes`)."""
    if not (
        x.is_cpu  # the cheapest checks first: this runs on every layer call
        and x.dtype is torch.float32
        and w.dtype is torch.float32
        and x.ndim == 2
        and w.shape[0] > 1
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # inductor picks its own CPU kernels
        and _onednn() is not None
    ):
        return None
    route = route_for(x.shape[0], w.shape[0], w.shape[1], relu, onednn_linear)
    return None if route == "torch" else route


def chain(steps: list, x: Tensor) -> Tensor:
    """Run resolved steps ((weight, bias) pairs and activations) on ``x``.

    Under autocast (``precision="bf16"``) the hidden matmuls run in bfloat16 and the output layer in
    float32 (see :class:`_OutputLinear`). In float32 on CPU, layers wider than one output run through
    oneDNN with a following ReLU fused in (see :class:`_OneDNNLinear`).
    """
    last = max(i for i, s in enumerate(steps) if isinstance(s, tuple))
    i, n = 0, len(steps)
    while i < n:
        step = steps[i]
        if isinstance(step, tuple):
            w, b = step
            if i == last and (w.shape[0] == 1 or torch.is_autocast_enabled(x.device.type)):
                x = _OutputLinear.apply(x, w, b)
            elif (route := _route(x, w, relu := i + 1 < n and any(steps[i + 1] is f for f in _RELUS))):
                x = _OneDNNLinear.apply(x, w, b, relu, route == "onednn-mm")
                i += 2 if relu else 1
                continue
            else:
                x = linear(x, w, b)
        else:
            x = step(x)
        i += 1
    return x

