"""The optimizer's step and ``zero_grad`` without their per-call Python bookkeeping, for the fused Adam the
trainers build (:func:`offrl.algos._common.fused_adam`).

``torch.optim.Adam.step`` spends ~70 us per call outside its one fused kernel on a small network (profiler
record, hook chains, ``_init_group``'s per-parameter checks, device/dtype grouping): about 5% of a DQN or
discrete-CQL update on a CPU. :func:`fast_optimizer_step` calls the same kernels
(``torch._foreach_add_`` on the step counters, then ``torch._fused_adam_`` / ``_fused_adamw_``) with the same
arguments, on the optimizer's own state tensors, so the result is bit-identical and ``state_dict`` /
``load_state_dict`` are untouched. Whenever the call is not that plain case it runs ``optimizer.step()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.optimizer import Optimizer, _global_optimizer_post_hooks, _global_optimizer_pre_hooks

__all__ = ["fast_optimizer_step", "fast_zero_grad"]


def _plain(optimizer: torch.optim.Adam) -> bool:
    """No hook, LR-scheduler wrapper, grad scaler or non-fused group that ``Adam.step`` would honour."""
    return (
        "step" not in optimizer.__dict__  # an LR scheduler (or the user) wrapped step
        and not optimizer._optimizer_step_pre_hooks
        and not optimizer._optimizer_step_post_hooks
        and not _global_optimizer_pre_hooks
        and not _global_optimizer_post_hooks
        and getattr(optimizer, "grad_scale", None) is None
        and getattr(optimizer, "found_inf", None) is None
        and all(g["fused"] and not g["capturable"] and not g["differentiable"] for g in optimizer.param_groups)
    )


def _scalar(x: float | torch.Tensor) -> float | torch.Tensor:
    return x.item() if isinstance(x, torch.Tensor) else x  # Adam's _to_scalar for beta1 / beta2


def fast_optimizer_step(optimizer: Optimizer) -> Callable[[], None]:
    """``optimizer.step`` as a function: for a fused ``Adam`` / ``AdamW`` the kernels it would launch, called
    directly; otherwise (another optimizer, a hook, a scheduler's wrapper, a first step that creates the
    state, mixed devices or dtypes in a group, complex or sparse gradients) ``optimizer.step`` itself."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW) or type(optimizer).step is not torch.optim.Adam.step:
        return optimizer.step

    def step() -> None:
        if not _plain(optimizer):
            optimizer.step()
            return
        work = []
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [optimizer.state.get(p) for p in params]
            lr = group["lr"]
            if (
                not all(states)  # the first step creates the state
                or len({(p.device, p.dtype) for p in params}) != 1
                or any(torch.is_complex(p) or p.grad.is_sparse for p in params)
                or (isinstance(lr, torch.Tensor) and lr.device.type != "cpu")
            ):
                optimizer.step()
                return
            work.append((group, params, states))
        with torch.no_grad():
            for group, params, states in work:
                steps = [s["step"] for s in states]
                torch._foreach_add_(steps, 1)
                kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
                kernel(
                    params, [p.grad for p in params],
                    [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                    [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
                    steps, amsgrad=group["amsgrad"], lr=group["lr"], beta1=_scalar(group["betas"][0]),
                    beta2=_scalar(group["betas"][1]), weight_decay=group["weight_decay"], eps=group["eps"],
                    maximize=group["maximize"], grad_scale=None, found_inf=None,
                )

    return step


def fast_zero_grad(optimizer: Optimizer) -> Callable[[], None]:
    """``optimizer.zero_grad(set_to_none=True)`` as a plain loop over the parameters (no profiler record);
    an optimizer that overrides ``zero_grad`` keeps its own."""
    if type(optimizer).zero_grad is not Optimizer.zero_grad or "zero_grad" in optimizer.__dict__:
        return lambda: optimizer.zero_grad(set_to_none=True)

    def zero_grad() -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None

    return zero_grad
