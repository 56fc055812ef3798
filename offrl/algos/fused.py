"""Fast update steps: fused drop-in replacements for torchrl's CQL, discrete CQL and DQN losses.

Why: on a small CPU, continuous CQL is bound by arithmetic (about 90% of its FLOPs are the conservative
penalty: 3 action sources x ``num_random`` samples x batch x 2 critics) and DQN / discrete CQL by per-op
overhead. The classes here compute exactly what torchrl's losses compute (same constructor, same output
keys, same random draws in the same order, so the same numbers up to float rounding, checked by
tests/test_fused.py) with less work:

* :class:`FusedCQLLoss` runs the actor once per distinct observation batch (torchrl re-runs it on every
  repeated copy), evaluates the data action and all three penalty action sources in one forward per
  critic, and runs the two-critic ensemble as plain per-critic matmuls (torchrl's vmapped ensemble turns
  the width-1 output layer into a slow batched matmul).
* :class:`offrl.algos.fused_offline.FusedOfflineCQLLoss` does the same for offrl's own
  :class:`~offrl.algos.cql.OfflineCQLLoss` (the authors' penalty; what ``offrl train`` uses).
* :class:`FusedDQNLoss` / :class:`FusedDiscreteCQLLoss` skip the TensorDict plumbing on the hot path: the
  Q-network is evaluated as a chain of ``addmm`` calls on the stored parameters.
* :func:`make_update` builds the whole step (loss, backward, clip, optimizer, target update) with foreach
  target updates and an optional bf16 autocast; :func:`make_adam` picks the fused Adam kernel.

Anything outside the fast path's assumptions (another network type, ``reduction != "mean"``, a value
estimator other than TD(0) for the discrete losses, ...) falls back to torchrl's own implementation, so
the classes are always safe to switch on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP
from torchrl.modules.distributions.utils import rsample_and_log_prob
from torchrl.objectives import CQLLoss, DiscreteCQLLoss, DQNLoss, HardUpdate, SoftUpdate
from torchrl.objectives.utils import distance_loss
from torchrl.objectives.value import TD0Estimator

__all__ = [
    "FusedCQLLoss",
    "FusedDQNLoss",
    "FusedDiscreteCQLLoss",
    "default_loss_keys",
    "make_adam",
    "make_update",
    "tune_allocator",
]

# A layer plan is a list of steps: ("linear", weight_key, bias_key | None) or a callable activation.
_Plan = list


# --------------------------------------------------------------------------------------------------
# Networks as plain matmul chains
# --------------------------------------------------------------------------------------------------


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


def _mlp_plan(owner: nn.Module, params: TensorDictBase) -> tuple[_Plan, TensorDictModule] | None:
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
    plan: _Plan = []
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
    if n_linear == 0:
        return None
    return plan, td_module


def tune_allocator() -> bool:
    """Keep freed activation buffers in the process instead of returning them to the OS (glibc only).

    Why: glibc serves allocations above its mmap threshold (128 KiB, adapted up to 32 MiB) with fresh
    ``mmap`` pages and unmaps them on free, so every update re-faults its activations page by page (on a
    2-core VM: ~12,000 page faults and ~20 ms of system time per CQL update at batch 256, and most of a DQN
    update). Raising the mmap and trim thresholds lets the heap reuse those buffers. Process-wide and
    harmless (peak memory stays what the update needs); returns False where it does not apply.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
    return libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1 and ok


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
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
    """oneDNN's fused linear (+ReLU) kernel, the one torch.compile's CPU backend emits, if usable here.

    Why: torch's float32 ``addmm``/``mm`` on CPU go to MKL, which on AMD processors (this project's
    reference machine is an AMD EPYC) runs about half as fast as oneDNN on the same matrices (a
    7936x256 @ 256x256 product: 6.0 ms in MKL, 2.6 ms in oneDNN, 2 threads). ``OFFRL_ONEDNN=0`` turns
    the route off; without a oneDNN build of torch it is off.
    """
    import os

    if os.environ.get("OFFRL_ONEDNN", "1") == "0" or not torch.backends.mkldnn.is_available():
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

    The weight gradient ``g.T @ x`` runs as oneDNN's linear on the two transposed views. ReLU is fused
    into the forward kernel and its backward reads the saved output, as ``relu`` itself does.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, relu: bool) -> Tensor:  # noqa: D102
        op = _onednn()
        y = op(x if x.is_contiguous() else x.contiguous(), w, b, "relu" if relu else "none", [], "")
        ctx.relu = relu
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
            # g.T @ x as oneDNN's linear on transposed views: 4.9 ms against torch.mm's 6.2 ms for
            # 7936 rows of 256 (AMD EPYC, 2 threads); a contiguous transpose first would cost more.
            grad_w = _onednn()(g.t(), x.t(), None, "none", [], "")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, None


_RELUS = (torch.relu, torch.relu_)
# Layers reading fewer features (an MLP's first layer on raw observations) stay with torch's addmm: at
# K = 4..23 the product is memory-bound and oneDNN's per-call cost is the larger one.
_ONEDNN_MIN_IN = 64
# oneDNN's fixed cost per call is ~15 us against MKL's ~3: products smaller than this many multiply-adds
# (rows x out x in) stay with addmm. Measured on a 2-core AMD EPYC, 2 threads, ReLU included: 256x256 @
# 256x256 91 us vs 177 (MKL), 64 rows 37 vs 51, 32 rows 28 vs 30, 256 rows into 2 outputs slower. End to end
# (in-process alternating rounds) DQN and discrete CQL at batch 256 ran ~5% faster with their 256-wide
# hidden layer here than with a 1,024-row floor; CQL's penalty pass has thousands of rows either way.
_ONEDNN_MIN_MACS = 1 << 22


def _use_onednn(x: Tensor, w: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and x.ndim == 2
        and w.shape[0] > 1
        and w.shape[1] >= _ONEDNN_MIN_IN
        and x.shape[0] * w.shape[0] * w.shape[1] >= _ONEDNN_MIN_MACS
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # inductor picks its own CPU kernels
        and _onednn() is not None
    )


def _chain(steps: list, x: Tensor) -> Tensor:
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
            elif _use_onednn(x, w):
                relu = i + 1 < n and any(steps[i + 1] is fn for fn in _RELUS)
                x = _OneDNNLinear.apply(x, w, b, relu)
                i += 2 if relu else 1
                continue
            else:
                x = _linear(x, w, b)
        else:
            x = step(x)
        i += 1
    return x


def _resolve(plan: _Plan, params: TensorDictBase) -> list:
    return [
        (params.get(s[1]), params.get(s[2]) if s[2] is not None else None) if isinstance(s, tuple) else s
        for s in plan
    ]


def _mlp_forward(steps: list, x: Tensor) -> Tensor:
    """One network: ``x`` [N, in] -> [N, out] (``steps`` from :func:`_resolve`)."""
    return _chain(steps, x)


def _ensemble_forward(steps: list, x: Tensor, n: int) -> Tensor:
    """``n`` stacked networks on one shared input: ``x`` [N, in] -> [n, N, out].

    Each member runs as its own chain of plain 2-D matmuls: on CPU that is several times faster than
    the batched matmul a vmapped ensemble uses for the width-1 output layer, and it never copies the
    shared input ``n`` times.
    """
    return torch.stack([_chain(_member(steps, m), x) for m in range(n)], 0)


def _member(steps: list, member: int) -> list:
    """Member ``member``'s steps of a stacked ensemble's steps (weights and biases indexed)."""
    return [(s[0][member], s[1][member] if s[1] is not None else None) if isinstance(s, tuple) else s
            for s in steps]


def _ensemble_forward_split(steps: list, obs: Tensor, index: Tensor, actions: Tensor, n: int) -> Tensor:
    """:func:`_ensemble_forward` on rows ``[obs[index], actions]``, without repeating the observations.

    The penalty scores ``num_random`` actions per state, so the first layer's observation half
    ``obs @ W_obs.T + b`` is computed once per distinct state and gathered, and only the action half runs
    on every row (as a K=action_dim matmul into the gathered buffer). This removes most of the first
    layer's matmul work, which CPU BLAS runs inefficiently at K = obs_dim + action_dim anyway.
    """
    obs_dim = obs.shape[-1]
    outs = []
    for member in range(n):
        (w, b), rest = steps[0], steps[1:]
        w = w[member]
        partial = _linear(obs, w[:, :obs_dim], b[member] if b is not None else None)
        pre = partial.index_select(0, index)
        # in place, so autocast does not see it: cast by hand (no-ops in float32)
        pre = pre.addmm_(actions.to(pre.dtype), w[:, obs_dim:].t().to(pre.dtype))
        member_steps = _member(rest, member)
        outs.append(_chain(member_steps, pre) if any(isinstance(s, tuple) for s in member_steps) else pre)
    return torch.stack(outs, 0)


def _detached(steps: list) -> list:
    return [
        (s[0].detach(), s[1].detach() if s[1] is not None else None) if isinstance(s, tuple) else s
        for s in steps
    ]


class _StepCache:
    """Parameter tensors of each network looked up once, not on every update.

    ``TensorDictParams.get`` costs microseconds per call, which adds up in a DQN update. The tensors
    keep their identity through optimizer steps, target updates and ``load_state_dict`` (all in place);
    anything that may replace them (``.to()``, ``.float()``, ...) goes through ``_apply``, which drops
    the cache.
    """

    def _steps(self, plan: _Plan, name: str) -> list:
        cache = self.__dict__.setdefault("_step_cache", {})
        steps = cache.get(name)
        if steps is None:
            steps = cache[name] = _resolve(plan, getattr(self, name))
        return steps

    def _apply(self, *args: Any, **kwargs: Any):
        self.__dict__.pop("_step_cache", None)
        return super()._apply(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any):
        self.__dict__.pop("_step_cache", None)
        return super().load_state_dict(*args, **kwargs)


# --------------------------------------------------------------------------------------------------
# Continuous CQL
# --------------------------------------------------------------------------------------------------


class _FusedCQLBase(_StepCache):
    """What the fused continuous CQL losses share: the critic as matmuls, one actor pass per observation
    batch, the TD target. Mixed into a ``CQLLoss`` subclass (``self`` has its attributes)."""

    def _init_fused(self) -> None:
        found = _mlp_plan(self.qvalue_network, self.qvalue_network_params)
        self._q_plan: _Plan | None = None
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
            return _ensemble_forward(q_steps, q_input, n_q)
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
        return _ensemble_forward_split(q_steps, obs, index, actions, n_q)

    @property
    def fused(self) -> bool:
        """Whether :meth:`forward` takes the fused path (otherwise the parent class's forward)."""
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
        with self.actor_network_params.to_module(self.actor_network, preserve_module_state=False):
            params_obs = self.actor_network.get_dist_params(obs_td.copy())
        with torch.no_grad(), self.actor_network_params.data.to_module(
            self.actor_network, preserve_module_state=False
        ):
            params_next = self.actor_network.get_dist_params(next_td.copy())
        dist_in = [unravel_key(k) for k in self._dist_param_keys()]
        return params_obs.select(*dist_in), params_next.select(*dist_in)

    @torch.no_grad()
    def _td_target(self, tensordict, next_td, next_action, next_log_prob, max_actions, alpha) -> Tensor:
        """torchrl's ``CQLLoss._get_value_v`` on the target critics: TD(0) target of shape [batch]."""
        n_q, n_rand, batch = self.num_qvalue_nets, self.num_random, tensordict.shape[0]
        target_steps = self._steps(self._q_plan, "target_qvalue_network_params")
        if not self.max_q_backup:
            q_next = _ensemble_forward(target_steps, self._q_input(next_td, next_action), n_q)
            next_value = q_next.min(0)[0]
            if not self.deterministic_backup:
                next_value = next_value - alpha * next_log_prob.unsqueeze(-1)
        else:
            q_next = _ensemble_forward(target_steps, self._q_input(next_td, max_actions, n_rand), n_q)
            next_value = q_next.reshape(n_q, batch, n_rand, -1).max(-2)[0].min(0)[0]
        value_td = tensordict.clone(False)
        value_td.set(("next", self.value_estimator.tensor_keys.value), next_value)
        return self.value_estimator.value_estimate(value_td).squeeze(-1)

    def _actor_terms(self, q_steps: list, obs_td: TensorDictBase, pi_action: Tensor, pi_log_prob: Tensor,
                     bc_sample_log_prob: Tensor, bc_log_prob: Tensor, alpha: Tensor) -> dict[str, Tensor]:
        """loss_actor (critics detached), loss_actor_bc and loss_alpha, as torchrl computes them."""
        q_pi = _ensemble_forward(_detached(q_steps), self._q_input(obs_td, pi_action), self.num_qvalue_nets)
        min_q_pi = q_pi.min(0)[0].squeeze(-1)
        if self.target_entropy is not None:
            loss_alpha = (-self.log_alpha * (pi_log_prob.detach() + self.target_entropy)).mean()
        else:
            loss_alpha = torch.zeros_like(pi_log_prob).mean()
        return {
            "loss_actor": (alpha * pi_log_prob - min_q_pi).mean(),
            "loss_actor_bc": (alpha * bc_sample_log_prob - bc_log_prob).mean(),
            "loss_alpha": loss_alpha,
        }


class FusedCQLLoss(_FusedCQLBase, CQLLoss):
    """torchrl's :class:`~torchrl.objectives.CQLLoss` with a fused forward (same constructor and outputs).

    Matches ``CQLLoss`` on the same parameters, batch and random state within float rounding (losses and
    gradients), including ``with_lagrange``, ``max_q_backup`` and ``deterministic_backup``. Semantics are
    torchrl's, including two of its quirks kept on purpose for equivalence: the penalty's log-sum-exp runs
    over the three action sources per sample, and ``loss_alpha_prime`` also back-propagates into the
    critics (offrl's own semantics: :class:`offrl.algos.fused_offline.FusedOfflineCQLLoss`). Networks other
    than a ``ValueOperator(MLP)`` critic fall back to ``CQLLoss.forward``.
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
        n_rand = self.num_random
        batch = tensordict.shape[0]
        alpha = self._alpha
        actor_in = [unravel_key(k) for k in self.actor_network.in_keys]
        obs_td = tensordict.select(*actor_in)
        next_td = tensordict.get("next").select(*actor_in)
        action = tensordict.get(keys.action)

        # The actor stays in float32 under bf16 autocast: it is a small share of the FLOPs and its
        # log-probabilities feed the entropy and CQL terms directly.
        with set_exploration_type(ExplorationType.RANDOM), torch.autocast(action.device.type, enabled=False):
            params_obs, params_next = self._actor_dist_params(obs_td, next_td)
            # Random draws in exactly torchrl's order, so both losses see the same samples.
            with torch.no_grad():
                dist_next = self.actor_network.build_dist_from_params(params_next)
                next_action, next_log_prob = rsample_and_log_prob(dist_next)  # q_loss: backup action
                dist_next_rep = self._repeat_dist(params_next, n_rand)
                max_actions = rsample_and_log_prob(dist_next_rep)[0] if self.max_q_backup else None
                random_actions = action.new_empty((batch * n_rand, action.shape[-1])).uniform_(-1, 1)
                dist_obs_rep = self._repeat_dist(params_obs.detach(), n_rand)
                curr_actions, curr_log_pis = rsample_and_log_prob(dist_obs_rep)
                new_actions, new_log_pis = rsample_and_log_prob(dist_next_rep)
            dist_obs = self.actor_network.build_dist_from_params(params_obs)
            _, bc_sample_log_prob = rsample_and_log_prob(dist_obs)  # actor_bc_loss
            bc_log_prob = dist_obs.log_prob(action)
            pi_action, pi_log_prob = rsample_and_log_prob(dist_obs)  # actor_loss

        target_value = self._td_target(tensordict, next_td, next_action, next_log_prob, max_actions, alpha)

        # ---- one forward per critic: data actions + the three penalty sources
        q_steps = self._steps(self._q_plan, "qvalue_network_params")
        q_all = self._critic_pass(
            q_steps, obs_td, next_td,
            [("obs", action, 1), ("obs", random_actions, n_rand), ("obs", curr_actions, n_rand),
             ("next", new_actions, n_rand)],
        )
        n_pen = batch * n_rand
        q_pred, q_random, q_curr, q_new = q_all.split([batch, n_pen, n_pen, n_pen], dim=1)
        tensordict.set(keys.pred_q1, q_pred[0])
        tensordict.set(keys.pred_q2, q_pred[1])

        q_pred = q_pred.squeeze(-1)  # [n_q, batch]
        loss_qvalue = distance_loss(
            q_pred, target_value.expand_as(q_pred), loss_function=self.loss_function
        ).sum(0)
        loss_qvalue = loss_qvalue.mean()
        tensordict.set(keys.priority, (q_pred - target_value).pow(2).detach().max(0).values)

        random_density = np.log(0.5 ** action.shape[-1])
        cat_q = torch.cat(
            [
                q_random - random_density,
                q_new - new_log_pis.unsqueeze(-1),
                q_curr - curr_log_pis.unsqueeze(-1),
            ],
            -1,
        )
        min_qf_loss = torch.logsumexp(cat_q / self.temperature, dim=-1) * self.min_q_weight * self.temperature
        # torchrl subtracts [batch, 1] data values from [batch * num_random] penalties (broadcasting to a
        # [batch, batch * num_random] matrix) and averages; the mean of that matrix is this difference.
        cql_per_critic = min_qf_loss.mean(-1) - q_pred.mean(-1) * self.min_q_weight  # [n_q]

        actor = self._actor_terms(q_steps, obs_td, pi_action, pi_log_prob, bc_sample_log_prob, bc_log_prob,
                                  alpha)
        out = {
            "loss_actor": actor["loss_actor"],
            "loss_actor_bc": actor["loss_actor_bc"],
            "loss_qvalue": loss_qvalue,
            "loss_cql": cql_per_critic.sum(),
            "loss_alpha": actor["loss_alpha"],
        }
        if self.with_lagrange:
            alpha_prime = torch.clamp_max(self.log_alpha_prime.exp(), max=1000000.0)
            gap = cql_per_critic - self.target_action_gap
            out["loss_alpha_prime"] = (-(alpha_prime * gap[0]) - alpha_prime * gap[1]) * 0.5
        out["alpha"] = alpha
        out["entropy"] = -pi_log_prob.detach().mean()
        return TensorDict(out)


# --------------------------------------------------------------------------------------------------
# DQN and discrete CQL
# --------------------------------------------------------------------------------------------------


class _LeanQMixin(_StepCache):
    """Shared fast path of the discrete losses: the Q-network as an addmm chain, TD(0) inline."""

    _lean_plan: _Plan | None
    _lean_obs_key: NestedKey | None

    def _init_lean(self) -> None:
        self._lean_plan = None
        self._lean_obs_key = None
        found = _mlp_plan(self.value_network, self.value_network_params)
        if found is not None and len(found[1].in_keys) == 1:
            self._lean_plan = found[0]
            self._lean_obs_key = unravel_key(found[1].in_keys[0])

    @property
    def fused(self) -> bool:
        """Whether :meth:`forward` takes the lean path (otherwise torchrl's own forward)."""
        est = self._value_estimator
        return (
            self._lean_plan is not None
            and self.reduction == "mean"
            and type(est) is TD0Estimator
            and not est.average_rewards
            and not getattr(self, "double_dqn", False)
        )

    def _lean_ok(self, tensordict: TensorDictBase) -> bool:
        keys = self.tensor_keys
        extra = [self.value_estimator.tensor_keys.steps_to_next_obs]
        if isinstance(self, DQNLoss) and self.use_prioritized_weights in (True, "auto"):
            extra.append(keys.priority_weight)
        return self.fused and tensordict.ndim == 1 and all(tensordict.get(k, None) is None for k in extra)

    def _lean_terms(self, tensordict: TensorDictBase) -> tuple[Tensor, Tensor, Tensor]:
        """Predicted Q for all actions [B, A], Q of the taken action [B], TD(0) target [B]."""
        keys = self.tensor_keys
        plan = self._lean_plan
        nxt = tensordict.get("next")
        q = _mlp_forward(self._steps(plan, "value_network_params"), tensordict.get(self._lean_obs_key))
        action = tensordict.get(keys.action)
        if self.action_space == "categorical":
            if action.ndim != q.ndim:
                action = action.unsqueeze(-1)
            q_a = torch.gather(q, -1, index=action).squeeze(-1)
        else:
            q_a = (q * action.to(torch.float)).sum(-1)
        with torch.no_grad():
            q_next = _mlp_forward(self._steps(plan, self._lean_target_name()), nxt.get(self._lean_obs_key))
            # The greedy action's value (QValueModule's chosen_action_value) is the row max.
            next_value = q_next.max(-1, keepdim=True)[0]
            est_keys = self.value_estimator.tensor_keys
            reward = nxt.get(est_keys.reward)
            terminated = nxt.get(est_keys.terminated, None)
            if terminated is None:
                terminated = nxt.get(est_keys.done)
            # td0_return_estimate, inline
            target = reward + self.value_estimator.gamma * (~terminated).int() * next_value
        return q, q_a, target.squeeze(-1)


class FusedDQNLoss(_LeanQMixin, DQNLoss):
    """torchrl's :class:`~torchrl.objectives.DQNLoss` with a lean forward (same constructor and outputs).

    The lean path covers an MLP Q-network (``QValueActor(MLP)``), TD(0) targets, no double DQN and no
    prioritized weights in the batch; anything else runs ``DQNLoss.forward``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_lean()

    def _lean_target_name(self) -> str:
        return "target_value_network_params"

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        if not self._lean_ok(tensordict):
            return super().forward(tensordict)
        _, q_a, target = self._lean_terms(tensordict)
        tensordict.set(self.tensor_keys.priority, (q_a - target).pow(2).detach().unsqueeze(-1), inplace=True)
        loss = distance_loss(q_a, target, self.loss_function).mean()
        return TensorDict(loss=loss)


class FusedDiscreteCQLLoss(_LeanQMixin, DiscreteCQLLoss):
    """torchrl's :class:`~torchrl.objectives.DiscreteCQLLoss` with a lean forward (same constructor and
    outputs: ``loss_qvalue``, ``loss_cql``, ``td_error``, ``pred_value``, ``target_value``).

    Args:
        target_network_bootstrap: torchrl 0.14's DiscreteCQLLoss builds its TD(0) estimator on a copy of
            the Q-network that holds the *online* parameters, so the TD target never reads the target
            network (``delay_value`` only creates an unused copy). ``False`` (default) reproduces that
            exactly; ``True`` bootstraps from the target network like DQN and d3rlpy's DiscreteCQL.
        *args, **kwargs: as for ``DiscreteCQLLoss``.
    """

    def __init__(self, *args: Any, target_network_bootstrap: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target_network_bootstrap = target_network_bootstrap
        self._init_lean()

    def _lean_target_name(self) -> str:
        if self.target_network_bootstrap:
            return "target_value_network_params"
        return "value_network_params"  # read under no_grad, as torchrl's estimator does

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        if not self._lean_ok(tensordict):
            if self.target_network_bootstrap:
                raise ValueError(
                    "target_network_bootstrap=True needs the lean path (an MLP QValueActor, TD(0) value "
                    "estimator, reduction='mean', a 1-D batch); torchrl's forward bootstraps online"
                )
            return super().forward(tensordict)
        return TensorDict(self._lean_discrete_cql(tensordict))

    def _lean_discrete_cql(self, tensordict: TensorDictBase) -> dict[str, Tensor]:
        q, q_a, target = self._lean_terms(tensordict)
        td_error = (q_a - target).pow(2).unsqueeze(-1)
        tensordict.set(self.tensor_keys.priority, td_error.detach(), inplace=True)
        tensordict.set(self.tensor_keys.pred_val, q, inplace=True)  # torchrl's side output
        loss_qvalue = (0.5 * distance_loss(q_a, target, self.loss_function)).mean()
        # CQL(H): log-sum-exp over actions minus the data action's value.
        loss_cql = (torch.logsumexp(q, dim=-1) - q_a).mean()
        return {
            "loss_qvalue": loss_qvalue,
            "loss_cql": loss_cql,
            "td_error": td_error.mean(0).detach(),
            "pred_value": q.mean().detach(),
            "target_value": target.mean().detach(),
        }


# --------------------------------------------------------------------------------------------------
# Update step
# --------------------------------------------------------------------------------------------------


def default_loss_keys(loss_module: nn.Module) -> list[str]:
    """The loss terms a plain training loop sums for this loss (as torchrl's sota scripts do).

    CQL: actor, Q-value, CQL penalty, alpha (+ alpha prime with Lagrange); ``loss_actor_bc`` is a
    diagnostic and not optimized. Discrete CQL: Q-value + penalty. DQN: ``loss``.
    """
    if isinstance(loss_module, CQLLoss):
        keys = ["loss_actor", "loss_qvalue", "loss_cql", "loss_alpha"]
        if loss_module.with_lagrange:
            keys.append("loss_alpha_prime")
        return keys
    if isinstance(loss_module, DiscreteCQLLoss):
        return ["loss_qvalue", "loss_cql"]
    if isinstance(loss_module, DQNLoss):
        return ["loss"]
    raise TypeError(f"no default loss keys for {type(loss_module).__name__}; pass loss_keys=")


def make_adam(params: Iterable[Tensor] | Iterable[dict], lr: float, **kwargs: Any) -> torch.optim.Adam:
    """``torch.optim.Adam`` with the fused kernel (one kernel for all tensors; foreach as a fallback).

    The default for-loop Adam on CPU launches ~10 ops per parameter tensor, which dominates small
    updates like DQN's. Results equal the default Adam up to float rounding.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=lr, foreach=True, **kwargs)


def fast_target_step(target_updater: Any) -> Callable[[], None]:
    """A foreach version of ``SoftUpdate.step`` / ``HardUpdate.step`` (same arithmetic, same counter).

    Other updaters (or uninitialized ones) keep their own ``step``.
    """
    if target_updater is None:
        return lambda: None
    kind = type(target_updater)
    if kind not in (SoftUpdate, HardUpdate) or not target_updater.initialized:
        return target_updater.step
    sources, targets = [], []
    for key, src in target_updater._sources.items(True, True):
        key = key if isinstance(key, tuple) else (key,)
        sources.append(src.data)
        targets.append(target_updater._targets.get(("target_" + key[0], *key[1:])).data)
    if kind is SoftUpdate:
        weight = 1 - target_updater.eps

        def soft() -> None:
            torch._foreach_lerp_(targets, sources, weight)

        return soft

    def hard() -> None:
        if target_updater.counter == target_updater.value_network_update_interval:
            torch._foreach_copy_(targets, sources)
            target_updater.counter = 0
        else:
            target_updater.counter += 1

    return hard


def make_update(
    loss_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    target_updater: Any = None,
    clip_norm: float | None = None,
    *,
    loss_keys: Sequence[str] | None = None,
    precision: str = "fp32",
    allocator: bool = True,
    cuda_graph: bool = False,
) -> Callable[[TensorDictBase], dict[str, Tensor]]:
    """Build ``update(batch) -> {name: detached tensor}``: loss, backward, clip, step, target update.

    Behaves exactly like the plain loop ``loss = sum(out[k] for k in loss_keys); loss.backward();
    clip_grad_norm_; optimizer.step(); optimizer.zero_grad(); target_updater.step()``, with the target
    update done by foreach ops. No Python branch depends on tensor values, so nothing syncs a device.

    Args:
        loss_module: a torchrl loss (a Fused* one for speed; any LossModule works).
        optimizer: steps every parameter the losses train (see :func:`make_adam`).
        target_updater: a torchrl ``SoftUpdate`` / ``HardUpdate`` (or any object with ``step()``), or None.
        clip_norm: max global gradient norm over the optimizer's parameters; None: no clipping. The
            metrics then hold ``grad_norm`` (the norm before clipping).
        loss_keys: loss terms summed for backward; default :func:`default_loss_keys`.
        precision: ``"fp32"`` or ``"bf16"`` (autocast of the loss forward to bfloat16 matmuls, CPU or
            CUDA; backward follows the forward's dtypes; parameters and optimizer stay fp32).
        allocator: call :func:`tune_allocator` (process-wide glibc malloc thresholds) on CPU.
        cuda_graph: on a CUDA device, capture loss + backward + clip + optimizer step as one CUDA graph
            (tensordict's ``CudaGraphModule``, after 10 eager warm-up steps; the optimizer is switched to
            its capturable mode) and replay it; the target update runs outside the graph. On a CPU the
            step runs eagerly, unchanged. Batches must keep one shape (a fixed batch size).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    keys = list(loss_keys) if loss_keys is not None else default_loss_keys(loss_module)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    device_type = params[0].device.type if params else "cpu"
    target_step = fast_target_step(target_updater)
    if allocator and device_type == "cpu":
        tune_allocator()

    def autocast() -> contextlib.AbstractContextManager:
        if precision == "bf16":
            return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def gradient_step(batch: TensorDictBase) -> dict[str, Tensor]:
        with autocast():
            out = loss_module(batch)
        total = out[keys[0]]
        for key in keys[1:]:
            total = total + out[key]
        total.backward()
        metrics = {key: value.detach() for key, value in out.items()}
        if clip_norm is not None:
            metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, clip_norm, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return metrics

    if not cuda_graph:

        def update(batch: TensorDictBase) -> dict[str, Tensor]:
            metrics = gradient_step(batch)
            target_step()
            return metrics

        return update

    graphed = capture_cuda_graph(lambda batch: TensorDict(gradient_step(batch)), optimizer, device_type)

    def graphed_update(batch: TensorDictBase) -> dict[str, Tensor]:
        metrics = graphed(batch)
        target_step()
        return dict(metrics.items())

    return graphed_update


def capture_cuda_graph(step: Callable[[TensorDictBase], TensorDict], optimizer: torch.optim.Optimizer,
                       device_type: str, *, warmup: int = 10) -> Callable[[TensorDictBase], TensorDict]:
    """``step`` (batch -> TensorDict of detached tensors, optimizer step included) as a CUDA graph.

    Uses tensordict's ``CudaGraphModule``: ``warmup`` eager calls on a side stream, then one capture,
    then replays that copy each batch into the graph's static input. On a CUDA device the optimizer's
    param groups are switched to ``capturable`` (Adam/AdamW keep their step counters on the GPU); an
    optimizer without that mode is refused. Elsewhere the wrapper calls ``step`` directly.
    """
    import warnings

    from tensordict.nn import CudaGraphModule

    from offrl.errors import UserError

    if device_type == "cuda":
        for group in optimizer.param_groups:
            if "capturable" not in group:
                raise UserError(f"cuda_graph needs an optimizer with a capturable mode (Adam, AdamW, ...), "
                                f"not {type(optimizer).__name__}")
            group["capturable"] = True
    with warnings.catch_warnings():  # "instantiated on a machine without CUDA": the eager pass-through
        warnings.simplefilter("ignore")
        return CudaGraphModule(step, in_keys=[], out_keys=[], warmup=warmup)
