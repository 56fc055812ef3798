"""torchrl replay buffers over a converted dataset: memmapped, read-only, seeded and resumable.

The buffer is a plain :class:`torchrl.data.TensorDictReplayBuffer` whose storage is the dataset itself
(a :class:`DatasetStorage`, no copy into RAM unless ``in_memory=True``). Sampling draws from a dedicated
``torch.Generator``, so ``rb.state_dict()`` carries the generator and sampler state (plus any prefetched
batches) and ``load_state_dict`` makes a resumed run draw the same batches. The storage's own state is
its identity (length), never its contents: checkpoints stay small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import (
    ImmutableDatasetWriter,
    RandomSampler,
    SamplerWithoutReplacement,
    TensorDictReplayBuffer,
    TensorStorage,
)
from torchrl.data.replay_buffers.samplers import Sampler

from offrl.data.layout import RowLayout
from offrl.errors import UserError

__all__ = ["DatasetStorage", "StackedSampler", "SubsetSampler", "direct_draw", "make_replay_buffer", "SAMPLERS"]

SAMPLERS = ("random", "without_replacement")
_GPU_FILL = 0.8  # move the dataset to the GPU only if it takes at most this share of free memory


class DatasetStorage(TensorStorage):
    """A :class:`TensorStorage` over an existing, read-only dataset.

    ``state_dict()`` records only the length (a checkpoint must not embed the dataset);
    ``load_state_dict`` checks that a resumed buffer sits on a dataset of the same length.
    """

    def __init__(
        self,
        data: TensorDictBase,
        *,
        rows: torch.Tensor | None = None,
        layout: RowLayout | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(data, device=device)
        self._rows = rows  # the packed uint8 [N, row_bytes] records that ``data`` views, if any
        self._layout = layout

    def get(self, index: Any) -> Any:
        # Fast path for the samplers' 1-D index tensors: one index_select on the packed rows (one
        # contiguous record per transition), or one per leaf, instead of generic TensorDict indexing.
        if isinstance(index, torch.Tensor) and index.ndim == 1 and index.dtype in (torch.int64, torch.int32):
            index = index.to(device=self.device, dtype=torch.long)
            if self._rows is not None and self._layout is not None:
                return self._layout.view(torch.index_select(self._rows, 0, index))
            return self._storage._fast_apply(
                lambda t: torch.index_select(t, 0, index), batch_size=[index.shape[0]], propagate_lock=False
            )
        return super().get(index)

    def _rand_given_ndim(self, batch_size: int) -> torch.Tensor:
        # Draw on the generator's own device (a trainer may seed the buffer with a CPU generator while the
        # dataset sits on the GPU); ``get`` moves the indices to the data.
        device = self._rng.device if self._rng is not None else self.device
        return torch.randint(0, len(self), (batch_size,), generator=self._rng, device=device)

    def state_dict(self) -> dict[str, Any]:
        return {"offrl_dataset_len": len(self)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("offrl_dataset_len")
        if saved is not None and int(saved) != len(self):
            raise UserError(
                f"the checkpoint's replay buffer was built on a dataset of {saved} transitions but this one "
                f"has {len(self)}; resume with the same dataset"
            )


def _plain(t: torch.Tensor) -> torch.Tensor:
    """The same memory seen as a plain tensor: ops on the MemoryMappedTensor subclass cost more."""
    return t.as_subclass(torch.Tensor) if type(t) is not torch.Tensor else t


class SubsetSampler(RandomSampler):
    """Uniform sampling, with replacement, among ``indices`` only (e.g. the training split, so that the
    held-out episodes of the TD-error diagnostic are never trained on). Draws from the buffer's generator,
    so seeding, ``state_dict`` and resume behave as with :class:`RandomSampler`."""

    def __init__(self, indices: torch.Tensor) -> None:
        super().__init__()
        if indices.numel() == 0:
            raise ValueError("SubsetSampler needs at least one index")
        self.indices = indices.reshape(-1).to(torch.long)

    def sample(self, storage: Any, batch_size: int) -> tuple[torch.Tensor, dict]:
        indices = self.indices if self.indices.device == storage.device else self.indices.to(storage.device)
        self.indices = indices
        rng = storage._rng  # drawn on the generator's device (see DatasetStorage._rand_given_ndim)
        pos = torch.randint(0, indices.numel(), (batch_size,), generator=rng,
                            device=rng.device if rng is not None else indices.device)
        return indices[pos.to(indices.device)], {}


def _make_sampler(sampler: str | Sampler | None, indices: torch.Tensor | None = None) -> Sampler:
    if indices is not None:
        if sampler not in (None, "random"):
            raise UserError("a replay buffer restricted to indices samples uniformly; use sampler='random'")
        return SubsetSampler(indices)
    if sampler is None or sampler == "random":
        return RandomSampler()
    if sampler == "without_replacement":
        return SamplerWithoutReplacement(drop_last=False)
    if isinstance(sampler, Sampler):
        return sampler
    raise UserError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)} or a torchrl Sampler")


def make_replay_buffer(
    data: TensorDictBase,
    batch_size: int,
    *,
    rows: torch.Tensor | None = None,
    layout: RowLayout | None = None,
    device: str | torch.device | None = None,
    sampler: str | Sampler | None = None,
    prefetch: int | None = None,
    seed: int | None = None,
    in_memory: bool = False,
    indices: torch.Tensor | None = None,
) -> TensorDictReplayBuffer:
    """A read-only TensorDictReplayBuffer sampling ``batch_size`` transitions from ``data``.

    ``rows``/``layout``: the packed records ``data`` is a view of (see :mod:`offrl.data.layout`), for
    fast sampling. ``device``: batches arrive there; on a GPU the whole dataset is moved once when it
    fits in 80% of free memory, otherwise each batch is copied. ``prefetch``: batches sampled ahead in
    torchrl's worker threads; with more than one, the workers race for the generator, so the order of batches
    (and exact resume) is only reproducible with ``prefetch`` None or 1. ``in_memory``: copy the dataset into RAM
    first. ``indices``: sample only these rows (the training split). ``seed``: deterministic sampling (without it the generator is seeded from torch's global RNG,
    so its state is still saved and restored).
    """
    if batch_size <= 0:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if rows is not None and layout is None:
        raise ValueError("rows need their layout")
    per_batch_cast = False
    target = torch.device("cpu")
    if dev.type != "cpu":
        tensors = [rows] if rows is not None else list(data.values(include_nested=True, leaves_only=True))
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        free = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else nbytes / _GPU_FILL
        if nbytes <= _GPU_FILL * free:
            target = dev
        else:
            per_batch_cast = True
    if rows is not None:
        rows = _plain(rows)
        if target != torch.device("cpu"):
            rows = rows.to(target)
        elif in_memory:
            rows = rows.clone()
        data = layout.view(rows)
    elif target != torch.device("cpu"):
        data = data.to(target)
    else:
        data = data.apply(lambda t: _plain(t.clone() if in_memory else t))
    generator = torch.Generator(device=target)
    generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    rb = TensorDictReplayBuffer(
        storage=DatasetStorage(data, rows=rows, layout=layout, device=target),
        sampler=_make_sampler(sampler, indices),
        writer=ImmutableDatasetWriter(),
        batch_size=batch_size,
        prefetch=prefetch,
        generator=generator,
    )
    if per_batch_cast:
        rb.append_transform(lambda td: td.to(dev, non_blocking=True))
    return rb


def _stackable(rb: Any) -> bool:
    """Whether ``rb.sample()`` is a plain draw-and-gather that :class:`StackedSampler` can do for it."""
    storage = getattr(rb, "_storage", None)
    return (
        isinstance(rb, TensorDictReplayBuffer)
        and type(getattr(rb, "_sampler", None)) in (RandomSampler, SubsetSampler)
        and isinstance(storage, DatasetStorage)
        and storage._rows is not None
        and storage._layout is not None
        and not getattr(rb, "_prefetch_cap", 0)
        and getattr(rb, "_sample_unit", None) is None
        and not (rb._transform is not None and len(rb._transform))
    )


def direct_draw(rb: Any) -> Callable[[], TensorDictBase] | None:
    """``rb.sample()`` as one draw and one read, for a plain dataset buffer (see :func:`_stackable`): the same
    indices from the same generator and the same rows, without torchrl's per-call machinery (~45 us a batch on a
    CPU) and without the ``index`` entry. None for any other buffer (sample it with ``rb.sample()``)."""
    if not _stackable(rb):
        return None
    sampler, storage = rb._sampler, rb._storage
    random = type(sampler) is RandomSampler

    def draw() -> TensorDictBase:
        if rb._sampler is not sampler or not _stackable(rb):  # changed since (a transform appended, ...)
            return rb.sample().exclude("index")
        size = rb._batch_size
        if random:  # RandomSampler.sample: the storage's randint on its generator (DatasetStorage._rand_given_ndim)
            if not len(storage):
                return rb.sample()  # raises torchrl's own error
            index = storage._rand_given_ndim(size)
        else:
            index = sampler.sample(storage, size)[0]
        rows = storage._rows
        return storage._layout.view(torch.index_select(rows, 0, index.to(device=rows.device, dtype=torch.long)))

    return draw


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors are views of the same elements (same memory, shape, strides and dtype)."""
    return a is b or (a.device == b.device and a.dtype == b.dtype and a.shape == b.shape
                      and a.stride() == b.stride() and a.data_ptr() == b.data_ptr())


class StackedSampler:
    """Samples one batch from each of several buffers at once: a TensorDict ``[len(buffers), batch_size]``
    (several seeds trained as one batched model, ``offrl train --vectorize``).

    Each buffer draws its indices with its own sampler and generator exactly as ``buffer.sample()`` would (so
    each stream, its state and a resume are what they would be sampling alone); offrl's dataset buffers are
    then read in one ``index_select`` on the packed rows they share. Any other buffer (prefetching,
    transforms, another sampler or storage) is sampled on its own and the batches stacked. The ``index``
    entry ``sample()`` adds is left out.
    """

    def __init__(self, buffers: Sequence[Any]) -> None:
        self.buffers = list(buffers)
        sizes = {getattr(rb, "_batch_size", None) for rb in self.buffers}
        self._fast = all(_stackable(rb) for rb in self.buffers) and len(sizes) == 1
        if self._fast:
            self._size = sizes.pop()
            self._draws = [(rb._sampler, rb._storage) for rb in self.buffers]
            self._direct = [(len(st), st._rng, st._rng.device if st._rng is not None else st.device)
                            if type(sp) is RandomSampler and len(st) else (None, None, None)
                            for sp, st in self._draws]
            first = self.buffers[0]._storage
            # one read when every buffer views the same packed rows (the seeds of one dataset: separate tensor
            # objects over the same memory)
            self._rows = first._rows if all(_same_memory(s._rows, first._rows) for _, s in self._draws) else None
            self._layout = first._layout

    def sample(self) -> TensorDictBase:
        if not self._fast:
            return torch.stack([rb.sample().exclude("index") for rb in self.buffers])
        size = self._size
        # A RandomSampler's draw is its storage's randint on its own generator; a dataset storage's length is
        # fixed, so that draw is made here directly, without the sampler's per-call checks.
        indices = [torch.randint(0, n, (size,), generator=rng, device=device) if n is not None
                   else sampler.sample(storage, size)[0]
                   for (sampler, storage), (n, rng, device) in zip(self._draws, self._direct, strict=True)]
        if self._rows is not None:
            index = torch.cat(indices).to(device=self._rows.device, dtype=torch.long)
            rows = torch.index_select(self._rows, 0, index)
        else:
            rows = torch.cat([torch.index_select(storage._rows, 0, i.to(device=storage.device, dtype=torch.long))
                              for (_, storage), i in zip(self._draws, indices, strict=True)])
        return self._layout.view(rows.view(len(indices), size, rows.shape[-1]))
