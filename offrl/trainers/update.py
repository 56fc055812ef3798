"""The trainer's update step: forward (optionally under bf16 autocast), backward, clip, optimizer step and
target update, optionally captured as a CUDA graph; and the process tweaks that make it fast on a CPU.

The step is built from tensor operations only, with no Python branch on tensor values (the
behaviour-cloning switch is a ``torch.where`` on a step tensor), so it can be compiled or captured.
"""

from __future__ import annotations

import ctypes
import platform
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import CudaGraphModule
from torchrl.objectives import HardUpdate, SoftUpdate

from offrl.data.reward_scaling import RewardScaler, checked_reward_scaler
from offrl.data.scaling import ObservationScaler, checked_scaler
from offrl.errors import UserError
from offrl.trainers.optim import fast_optimizer_step, fast_zero_grad

__all__ = ["UpdateStep", "batch_scalers", "capture_cuda_graph", "fast_target_step", "tune_allocator"]


def batch_scalers(observation_scaler: Any, reward_scaler: Any, device: Any,
                  loss_module: Any) -> tuple[ObservationScaler | None, RewardScaler | None]:
    """A trainer's scaler arguments, checked; None: the ones ``loss_module`` carries (:mod:`offrl.algos.scaled`)."""
    return checked_scaler(observation_scaler, device, loss_module), checked_reward_scaler(reward_scaler, loss_module)


def tune_allocator() -> bool:
    """Keep freed activation buffers in the process instead of returning them to the OS (glibc only).

    Why: glibc serves allocations above its mmap threshold (128 KiB, adapted up to 32 MiB) with fresh
    ``mmap`` pages and unmaps them on free, so every update re-faults its activations page by page (most
    of a small update's system time). Raising the mmap and trim thresholds lets the heap reuse those
    buffers. Process-wide and harmless (peak memory stays what the update needs); returns False where it
    does not apply.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
    return libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1 and ok


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


def capture_cuda_graph(step: Callable[[TensorDictBase], TensorDict], optimizer: torch.optim.Optimizer,
                       device_type: str, *, warmup: int = 10) -> Callable[[TensorDictBase], TensorDict]:
    """``step`` (batch -> TensorDict of detached tensors, optimizer step included) as a CUDA graph.

    Uses tensordict's ``CudaGraphModule``: ``warmup`` eager calls on a side stream, then one capture,
    then replays that copy each batch into the graph's static input. On a CUDA device the optimizer's
    param groups are switched to ``capturable`` (Adam/AdamW keep their step counters on the GPU); an
    optimizer without that mode is refused. Elsewhere the wrapper calls ``step`` directly.
    """



    if device_type == "cuda":
        for group in optimizer.param_groups:
            if "capturable" not in group:
                raise UserError(f"cuda_graph needs an optimizer with a capturable mode (Adam, AdamW, ...), "
                                f"not {type(optimizer).__name__}")
            group["capturable"] = True
    with warnings.catch_warnings():  # "instantiated on a machine without CUDA": the eager pass-through
        warnings.simplefilter("ignore")
        return CudaGraphModule(step, in_keys=[], out_keys=[], warmup=warmup)


def _with_total_norm(norms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``norms`` (one ``grad_norm_<group>`` per param group) with ``grad_norm``, the norm over all groups."""
    values = list(norms.values())
    if not values:
        return norms
    total = values[0] if len(values) == 1 else torch.stack(values).pow(2).sum().sqrt()
    return {**norms, "grad_norm": total}


class UpdateStep:
    """One gradient step of a :class:`~offrl.trainers.Trainer` (a mixin: ``self`` is the trainer).

    Subclasses define :meth:`_loss_terms`; :meth:`_batch_stats` comes from the metrics mixin.
    """

    def _loss_terms(self, loss_td: TensorDictBase, batch: TensorDictBase
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total loss, metrics)`` from the loss module's output; tensor ops only."""
        raise NotImplementedError

    def _autocast(self, fn: Callable[[TensorDictBase], TensorDictBase], batch: TensorDictBase) -> TensorDictBase:
        """``fn(batch)`` under bf16 autocast when the trainer's precision asks for it."""
        if self.precision == "bf16":
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                return fn(batch)
        return fn(batch)

    def _forward(self, batch: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, metrics = self._loss_terms(self._autocast(self.loss_module, batch), batch)
        metrics.update(self._batch_stats(batch))
        return total, metrics

    def _passes(self) -> tuple[tuple[Callable[[TensorDictBase], tuple[torch.Tensor, dict[str, torch.Tensor]]],
                                     frozenset[int] | None], ...]:
        """The gradient step's passes: ``(forward, ids of the parameters it steps, None for all)``, run in
        order, each a forward, backward and optimizer step. One pass over every loss by default."""
        return ((self._forward, None),)

    def _optimizer_calls(self) -> tuple[Callable[[], None], Callable[[], None]]:
        """``(zero_grad, step)`` of the current optimizer without their per-call bookkeeping
        (:mod:`offrl.trainers.optim`; rebuilt if ``self.optimizer`` is replaced)."""
        fns = self._optimizer_fns
        if fns is None or fns[0] is not self.optimizer:
            fns = self._optimizer_fns = (self.optimizer, fast_zero_grad(self.optimizer),
                                         fast_optimizer_step(self.optimizer))
        return fns[1], fns[2]

    def _backward(self, total: torch.Tensor) -> None:
        self._optimizer_calls()[0]()
        total.backward()

    def _optim(self, only: frozenset[int] | None = None) -> dict[str, torch.Tensor]:
        """Clip with torchrl's semantics, step; returns each group's norm before clipping
        (``grad_norm_<group>``). ``clip_grad_norm``: one ``clip_grad_norm_`` over every parameter of every
        group (torchrl's trainer clips them together); else values clipped to ``clip_norm``. ``only``: the ids
        of the parameters to step; the others' gradients are dropped first, so the optimizer skips them (and
        the norm that is clipped is that of the parameters this pass steps)."""
        norms: dict[str, torch.Tensor] = {}
        stepped: list[torch.Tensor] = []
        for i, group in enumerate(self.optimizer.param_groups):
            if only is not None:
                for p in group["params"]:
                    if id(p) not in only:
                        p.grad = None
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            # one foreach kernel instead of one norm per parameter
            norms[f"grad_norm_{group.get('name', i)}"] = torch.linalg.vector_norm(
                torch.stack(torch._foreach_norm([p.grad for p in params]))).detach()
            stepped += params
        if stepped and self.clip_norm is not None:
            if self.clip_grad_norm:  # clip_grad_norm_'s arithmetic on the norm over all groups
                total = torch.linalg.vector_norm(torch.stack(list(norms.values())))
                coef = (self.clip_norm / (total + 1e-6)).clamp(max=1.0)
                torch._foreach_mul_([p.grad for p in stepped], coef)
            else:
                torch.nn.utils.clip_grad_value_(stepped, self.clip_norm)
        self._optimizer_calls()[1]()
        return norms

    def _target(self) -> None:
        if self.target_net_updater is not None:
            if self._target_fn is None:  # built on first use: the updater initialises lazily
                # SoftUpdate/HardUpdate as foreach ops (same arithmetic, same counter); others keep step().
                self._target_fn = fast_target_step(self.target_net_updater)
            self._target_fn()
        self._step_t += 1

    def _gradient_step(self, batch: TensorDictBase, timings: dict[str, float] | None = None
                       ) -> dict[str, torch.Tensor]:
        """Forward, backward, clip and optimizer step of each pass: the part a CUDA graph captures.
        ``timings``: add each piece's wall time to it (``log_timings``)."""
        metrics: dict[str, torch.Tensor] = {}
        norms: dict[str, torch.Tensor] = {}
        for forward, only in self._passes():
            t0 = time.perf_counter()
            total, pass_metrics = forward(batch)
            t1 = time.perf_counter()
            self._backward(total)
            t2 = time.perf_counter()
            for key, norm in self._optim(only).items():  # a group stepped in two passes: both parts' norm
                norms[key] = torch.hypot(norms[key], norm) if key in norms else norm
            t3 = time.perf_counter()
            metrics.update(pass_metrics)
            if timings is not None:
                for name, dt in (("forward", t1 - t0), ("backward", t2 - t1), ("optim", t3 - t2)):
                    timings[name] += dt
        metrics.update(_with_total_norm(norms))
        return {k: v.detach() for k, v in metrics.items()}

    def _graph_step(self) -> Callable[[TensorDictBase], TensorDictBase]:
        """The gradient step wrapped in tensordict's CudaGraphModule (built on first use, after any
        checkpoint was loaded: the graph holds the optimizer's state tensors)."""
        if self._graphed is None:
            self._graphed = capture_cuda_graph(lambda batch: TensorDict(self._gradient_step(batch)),
                                               self.optimizer, self.device.type)
        return self._graphed

    def _update(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """:meth:`update` without wrapping the metrics in a TensorDict (the loop's per-step path)."""
        metrics = dict(self._graph_step()(batch).items()) if self.cuda_graph else self._gradient_step(batch)
        self._target()  # outside any graph: HardUpdate's interval counter is Python state
        return metrics

    def _timed_update(self, batch: TensorDictBase, timings: dict[str, float]) -> dict[str, torch.Tensor]:
        """:meth:`_update` (without a CUDA graph) adding each piece's wall time to ``timings`` (forward,
        backward, optim, target: ``log_timings``)."""
        metrics = self._gradient_step(batch, timings)
        t0 = time.perf_counter()
        self._target()
        timings["target"] += time.perf_counter() - t0
        return metrics

    def _scaled(self, batch: TensorDictBase) -> TensorDictBase:
        """``batch`` as the networks see it: observations and rewards scaled when the trainer has an
        ``observation_scaler`` / ``reward_scaler``."""
        if self.observation_scaler is not None:
            batch = self.observation_scaler.scale_batch(batch, self.observation_key)
        if self.reward_scaler is not None:
            batch = self.reward_scaler.scale_batch(batch, ("next", self.reward_key))
        return batch

    def update(self, batch: TensorDictBase) -> TensorDictBase:
        """One gradient step on ``batch`` (as sampled: scaled like the trainer's own batches); returns a
        TensorDict of detached scalar metrics."""
        return TensorDict(self._update(self._scaled(batch)))

