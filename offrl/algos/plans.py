"""Networks as plain matmul chains: a torchrl MLP described as layer steps ("plans"), resolved on the
loss's functional parameters, and run alone or as a stacked critic ensemble.

A plan is a list of steps: ``("linear", weight_key, bias_key | None)`` or a callable activation. The fused
losses resolve it on their live, target or detached parameters at call time (:class:`ParamCache`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.modules import MLP

from offrl.algos.kernels import chain, linear

__all__ = ["Plan", "ParamCache", "actor_plan", "detached", "ensemble_forward", "ensemble_forward_split",
           "member", "mlp_forward", "mlp_plan", "resolve"]

Plan = list


def _activation(module: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """The elementwise function of a parameter-free layer, or None if the fast path cannot run it."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return None  # random: its draws would not line up with the vmapped reference
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        return None
    if type(module) is nn.ReLU:
        # In place on the matmul output (nothing else reads it; addmm's backward does not need it):
        # one activation-sized buffer less per layer.
        return torch.relu_
    if type(module) is nn.Tanh:
        return torch.tanh
    return module


def mlp_plan(owner: nn.Module, params: TensorDictBase) -> tuple[Plan, TensorDictModule] | None:
    """Find the torchrl MLP inside ``owner`` and describe it as Linear / activation steps.

    The weights are looked up by the MLP's module path in ``params`` (the loss module's functional
    parameters), so the plan reads the live (or target, or detached) parameters at call time.
    """
    found = None
    for name, mod in owner.named_modules():
        if isinstance(mod, TensorDictModule) and isinstance(mod.module, MLP):
            if found is not None:
                return None  # several MLPs: not the simple layout the fast path assumes
            found = (name, mod)
    if found is None:
        return None
    name, td_module = found
    mlp = td_module.module
    if getattr(mlp, "_reshape_out", False):
        return None
    prefix = tuple(k for k in (name.split(".") if name else [])) + ("module",)
    plan = _layer_plan(mlp, prefix, params)
    return None if plan is None else (plan, td_module)


def _layer_plan(mlp: MLP, prefix: tuple[str, ...], params: TensorDictBase) -> Plan | None:
    """``mlp``'s layers as steps, its weights looked up under ``prefix`` in ``params``."""
    plan: Plan = []
    n_linear = 0
    for child_name, child in mlp.named_children():
        if isinstance(child, nn.Linear):
            w_key = (*prefix, child_name, "weight")
            b_key = (*prefix, child_name, "bias")
            if params.get(w_key, None) is None:
                return None
            plan.append(("linear", w_key, b_key if params.get(b_key, None) is not None else None))
            n_linear += 1
        else:
            fn = _activation(child)
            if fn is None:
                return None
            if fn is torch.relu_ and n_linear == 0:
                fn = torch.relu  # never modify the caller's input in place
            plan.append(fn)
    return plan if n_linear else None


def actor_plan(actor: nn.Module,
               params: TensorDictBase) -> tuple[Plan, nn.Module, NestedKey, list[NestedKey]] | None:
    """The distribution-parameter network of a torchrl ``ProbabilisticActor`` laid out as offrl builds it,
    ``TensorDictModule(Sequential(MLP, parameter-free tail such as NormalParamExtractor))`` then the
    probabilistic module: the MLP's plan, the tail, the in-key and the out-keys (None for any other layout).

    Running the plan on the parameters directly skips ``to_module``'s parameter swap and the
    ``TensorDictModule`` plumbing, which cost more than a small actor's arithmetic.
    """
    modules = getattr(actor, "module", None)
    if not isinstance(modules, nn.ModuleList) or len(modules) != 2:
        return None
    td_module = modules[0]
    if type(td_module) is not TensorDictModule or len(td_module.in_keys) != 1:
        return None
    seq = td_module.module
    if not isinstance(seq, nn.Sequential) or len(seq) < 2 or type(seq[0]) is not MLP \
            or getattr(seq[0], "_reshape_out", False):
        return None
    tail = seq[1:]
    if any(True for _ in tail.parameters()) or any(True for _ in tail.buffers()):
        return None
    plan = _layer_plan(seq[0], ("module", "0", "module", "0"), params)
    if plan is None:
        return None
    return plan, tail, td_module.in_keys[0], list(td_module.out_keys)


def resolve(plan: Plan, params: TensorDictBase) -> list:
    return [
        (params.get(s[1]), params.get(s[2]) if s[2] is not None else None) if isinstance(s, tuple) else s
        for s in plan
    ]


def mlp_forward(steps: list, x: Tensor) -> Tensor:
    """One network: ``x`` [N, in] -> [N, out] (``steps`` from :func:`resolve`)."""
    return chain(steps, x)


def ensemble_forward(steps: list, x: Tensor, n: int) -> Tensor:
    """``n`` stacked networks on one shared input: ``x`` [N, in] -> [n, N, out].

    Each member runs as its own chain of plain 2-D matmuls: on CPU that is several times faster than
    the batched matmul a vmapped ensemble uses for the width-1 output layer, and it never copies the
    shared input ``n`` times.
    """
    return torch.stack([chain(member(steps, m), x) for m in range(n)], 0)


def member(steps: list, member: int) -> list:
    """Member ``member``'s steps of a stacked ensemble's steps (weights and biases indexed)."""
    return [(s[0][member], s[1][member] if s[1] is not None else None) if isinstance(s, tuple) else s
            for s in steps]


def ensemble_forward_split(steps: list, obs: Tensor, index: Tensor, actions: Tensor, n: int) -> Tensor:
    """:func:`ensemble_forward` on rows ``[obs[index], actions]``, without repeating the observations.

    The penalty scores ``num_random`` actions per state, so the first layer's observation half
    ``obs @ W_obs.T + b`` is computed once per distinct state and gathered, and only the action half runs
    on every row (as a K=action_dim matmul into the gathered buffer). This removes most of the first
    layer's matmul work, which CPU BLAS runs inefficiently at K = obs_dim + action_dim anyway.
    """
    obs_dim = obs.shape[-1]
    outs = []
    for m in range(n):
        (w, b), rest = steps[0], steps[1:]
        w = w[m]
        partial = linear(obs, w[:, :obs_dim], b[m] if b is not None else None)
        pre = partial.index_select(0, index)
        # in place, so autocast does not see it: cast by hand (no-ops in float32)
        pre = pre.addmm_(actions.to(pre.dtype), w[:, obs_dim:].t().to(pre.dtype))
        member_steps = member(rest, m)
        outs.append(chain(member_steps, pre) if any(isinstance(s, tuple) for s in member_steps) else pre)
    return torch.stack(outs, 0)


def detached(steps: list) -> list:
    return [
        (s[0].detach(), s[1].detach() if s[1] is not None else None) if isinstance(s, tuple) else s
        for s in steps
    ]


class ParamCache:
    """Parameter tensors of each network looked up once, not on every update.

    ``TensorDictParams.get`` costs microseconds per call, which adds up in a DQN update. The tensors
    keep their identity through optimizer steps, target updates and ``load_state_dict`` (all in place);
    anything that may replace them (``.to()``, ``.float()``, ...) goes through ``_apply``, which drops
    the cache.
    """

    def _steps(self, plan: Plan, name: str) -> list:
        cache = self.__dict__.setdefault("_step_cache", {})
        steps = cache.get(name)
        if steps is None:
            steps = cache[name] = resolve(plan, getattr(self, name))
        return steps

    def _apply(self, *args: Any, **kwargs: Any):
        self.__dict__.pop("_step_cache", None)
        return super()._apply(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any):
        self.__dict__.pop("_step_cache", None)
        return super().load_state_dict(*args, **kwargs)


