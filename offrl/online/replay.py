"""Replay for fine-tuning: offline data plus what the collector gathers, in one of two ways.

* :class:`MixedReplayBuffer` (default, "mix"): torchrl's ``OfflineToOnlineReplayBuffer`` — the dataset stays
  untouched, online rows go to a capped memory-mapped buffer, and each batch draws exactly
  ``round(offline_fraction * batch_size)`` rows from the dataset and the rest from the online buffer. offrl
  anneals ``offline_fraction`` linearly from ``start_fraction`` to ``final_fraction`` over the first
  ``anneal_frames`` collected frames (torchrl's ``anneal`` only decays to 0, per training step).
  Cal-QL's recipe is a fixed 50/50 mix (``start = final = 0.5``); RLPD uses 50/50 too.
* :class:`AppendReplayBuffer` ("append"): one buffer; the dataset is copied into a memory-mapped storage
  with room for ``online_capacity`` more rows, online rows are appended and sampling is uniform over all
  rows (CORL's AWAC/IQL fine-tuning). When full, the oldest rows — the dataset's first — are overwritten.
  ``offline_fraction`` is then simply the share of dataset rows in the buffer.

Both take the collector's raw batches in :meth:`extend` (the trainer calls ``replay_buffer.extend(batch)``),
convert them with :class:`~offrl.online.transitions.OnlineTransitions`, count frames for the schedule, and
checkpoint everything — online rows, write position, sampling generator, schedule and episode statistics —
through ``state_dict()`` / ``load_state_dict()``, which the trainer's checkpoint calls.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyMemmapStorage, OfflineToOnlineReplayBuffer, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import RandomSampler

from offrl.errors import UserError
from offrl.online.transitions import OnlineTransitions, rows_state

__all__ = ["LinearSchedule", "MixedReplayBuffer", "AppendReplayBuffer"]


class LinearSchedule:
    """``start + (final - start) * min(1, frames / anneal_frames)``; ``anneal_frames=0`` is ``final`` at once."""

    def __init__(self, start: float, final: float, anneal_frames: int) -> None:
        for name, v in (("start_fraction", start), ("final_fraction", final)):
            if not 0.0 <= float(v) <= 1.0:
                raise UserError(f"online.{name}: must be in [0, 1], got {v}")
        if int(anneal_frames) < 0:
            raise UserError(f"online.anneal_frames: must be >= 0, got {anneal_frames}")
        self.start, self.final, self.anneal_frames = float(start), float(final), int(anneal_frames)

    def __call__(self, frames: int) -> float:
        if self.anneal_frames == 0:
            return self.final
        t = min(1.0, max(0, frames) / self.anneal_frames)
        return self.start + (self.final - self.start) * t


def _online_storage(capacity: int, scratch_dir: str | None) -> LazyMemmapStorage:
    if int(capacity) <= 0:
        raise UserError(f"online.capacity: must be a positive number of transitions, got {capacity}")
    return LazyMemmapStorage(int(capacity), scratch_dir=scratch_dir)


class _OnlineReplayMixin:
    """Shared bookkeeping: the transition adapter, frame counting, generator, metrics."""

    transitions: OnlineTransitions
    frames: int
    frame_skip: int
    _gen: torch.Generator | None

    def online_metrics(self) -> dict[str, float]:
        """Online-phase metrics: ``offline_fraction``, ``online_size``, and the episode statistics of
        :meth:`OnlineTransitions.metrics` (online returns, normalized score, cumulative regret)."""
        out = {"offline_fraction": float(self.offline_fraction), "online_size": float(self.online_size)}
        out.update(self.transitions.metrics())
        return out

    def _push(self, data: TensorDictBase) -> TensorDictBase | None:
        self.frames += int(data.numel()) * self.frame_skip
        return self.transitions.push(data)


class MixedReplayBuffer(_OnlineReplayMixin, OfflineToOnlineReplayBuffer):
    """Offline dataset + capped memmapped online buffer, mixed per batch with an annealed offline fraction.

    Args:
        offline: the dataset's replay buffer (``OfflineDataset.replay_buffer(batch_size)``) or None (online
            training from scratch: every batch comes from the online buffer).
        online_capacity: transitions the online buffer keeps (oldest overwritten first).
        batch_size: rows per :meth:`sample`.
        start_fraction, final_fraction, anneal_frames: the offline-fraction schedule, in collected frames
            (env steps x ``frame_skip``, as the trainer counts them).
        transitions: the :class:`OnlineTransitions` adapter (gamma, references, Cal-QL's held episodes).
        scratch_dir: where the online memmap lives (default: a temporary folder).
    """

    def __init__(self, offline: Any, *, online_capacity: int, batch_size: int, start_fraction: float = 0.5,
                 final_fraction: float = 0.5, anneal_frames: int = 0, frame_skip: int = 1,
                 transitions: OnlineTransitions | None = None, scratch_dir: str | None = None) -> None:
        self.schedule = LinearSchedule(start_fraction, final_fraction, anneal_frames)
        online_rb = TensorDictReplayBuffer(storage=_online_storage(online_capacity, scratch_dir),
                                           sampler=RandomSampler(), batch_size=batch_size)
        super().__init__(offline if offline is not None else online_rb, online_storage=online_rb._storage,
                         offline_fraction=0.5, batch_size=batch_size)
        self._online_buffer = online_rb  # a TensorDict buffer, like the dataset's (same sample layout)
        self._has_offline = offline is not None
        self.transitions = transitions or OnlineTransitions()
        self.frames = 0
        self.frame_skip = int(frame_skip)
        self._gen = None
        self._offline_fraction = self.schedule(0) if self._has_offline else 0.0

    # --------------------------------------------------------------------------------- replay buffer
    def extend(self, data: TensorDictBase) -> torch.Tensor | None:  # type: ignore[override]
        """Add one collector batch (raw, any keys); anneals the offline fraction by its frames."""
        rows = self._push(data)
        if self._has_offline:
            self._offline_fraction = self.schedule(self.frames)
        if rows is None:
            return None
        return self._online_buffer.extend(rows)

    def sample(self, batch_size: int | None = None) -> TensorDictBase:
        """``round(f * B)`` dataset rows + the rest online (all dataset rows while the online buffer is
        empty; all online rows when ``f`` is 0 or there is no dataset)."""
        batch_size = batch_size or self._batch_size
        n_online_rows = len(self._online_buffer)
        if not self._has_offline and n_online_rows == 0:
            raise UserError("online training sampled before the collector produced a transition; give "
                            "the collector at least one batch before updating")
        n_off = round(self._offline_fraction * batch_size) if self._has_offline else 0
        if n_online_rows == 0:
            n_off = batch_size
        parts = []
        with warnings.catch_warnings():  # torchrl warns when sample(n) differs from the buffer's batch_size
            warnings.simplefilter("ignore", UserWarning)
            if n_off:
                parts.append(self._offline_buffer.sample(n_off).exclude("index"))
            if batch_size - n_off:
                parts.append(self._online_buffer.sample(batch_size - n_off).exclude("index"))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)

    def set_rng(self, generator: torch.Generator) -> None:
        """One generator for both buffers' samplers (the trainer's ``seed``)."""
        self._gen = generator
        if self._has_offline and hasattr(self._offline_buffer, "set_rng"):
            self._offline_buffer.set_rng(generator)
        self._online_buffer.set_rng(generator)

    @property
    def offline_fraction(self) -> float:
        """The offline share of the next batch (0 when the online buffer is still empty is *not* reported:
        this is the schedule's value)."""
        return self._offline_fraction if self._has_offline else 0.0

    @property
    def online_size(self) -> int:
        return len(self._online_buffer)

    def __len__(self) -> int:
        return (len(self._offline_buffer) if self._has_offline else 0) + len(self._online_buffer)

    # ------------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Online rows (in storage order), writer position, generator, schedule position, statistics;
        the offline sampler's state too (the dataset itself is not copied)."""
        n = len(self._online_buffer)
        offline_state: dict[str, Any] = {}
        if self._has_offline and getattr(self._offline_buffer, "_sampler", None) is not None:
            offline_state = self._offline_buffer._sampler.state_dict()
        return {
            "kind": "mix",
            "frames": self.frames,
            "offline_fraction": float(self._offline_fraction),
            "rows": rows_state(self._online_buffer._storage[:n]) if n else {},
            "writer": self._online_buffer._writer.state_dict(),
            "offline_sampler": offline_state,
            "generator": self._gen.get_state() if self._gen is not None else None,
            "transitions": self.transitions.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "mix":
            raise UserError("the checkpoint's replay buffer is not a mixed offline/online buffer; resume with "
                            "the same online.replay setting")
        self.frames = int(state["frames"])
        self._offline_fraction = float(state["offline_fraction"])
        self._online_buffer.empty()
        if state["rows"]:
            rows = TensorDict(state["rows"])
            rows.batch_size = [next(iter(rows.values(True, True))).shape[0]]
            self._online_buffer.extend(rows)
        self._online_buffer._writer.load_state_dict(state["writer"])
        if state["offline_sampler"] and self._has_offline:
            self._offline_buffer._sampler.load_state_dict(state["offline_sampler"])
        if state["generator"] is not None:
            gen = torch.Generator()
            gen.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))
            self.set_rng(gen)
        self.transitions.load_state_dict(state["transitions"])


class AppendReplayBuffer(_OnlineReplayMixin):
    """One torchrl buffer holding the dataset's rows and, after them, the online rows; uniform sampling.

    Args:
        offline_data: the dataset's rows (``OfflineDataset.data``), copied once into the memmap.
        online_capacity: room for online rows beyond the dataset's.
        Other arguments as :class:`MixedReplayBuffer`.
    """

    def __init__(self, offline_data: TensorDictBase, *, online_capacity: int, batch_size: int, frame_skip: int = 1,
                 transitions: OnlineTransitions | None = None, scratch_dir: str | None = None,
                 chunk: int = 65536) -> None:
        self.n_offline = int(offline_data.shape[0])
        self.online_capacity = int(online_capacity)
        storage = _online_storage(self.n_offline + self.online_capacity, scratch_dir)
        self.buffer = TensorDictReplayBuffer(storage=storage, sampler=RandomSampler(), batch_size=batch_size)
        for start in range(0, self.n_offline, chunk):  # chunked: a large dataset never sits in RAM twice
            self.buffer.extend(offline_data[start:start + chunk].to_tensordict())
        self._batch_size = batch_size
        self.transitions = transitions or OnlineTransitions()
        self.frames = 0
        self.frame_skip = int(frame_skip)
        self.online_written = 0
        self._gen = None

    def extend(self, data: TensorDictBase) -> torch.Tensor | None:
        rows = self._push(data)
        if rows is None:
            return None
        self.online_written += rows.shape[0]
        return self.buffer.extend(rows)

    def sample(self, batch_size: int | None = None) -> TensorDictBase:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return self.buffer.sample(batch_size or self._batch_size).exclude("index")

    def set_rng(self, generator: torch.Generator) -> None:
        self._gen = generator
        self.buffer.set_rng(generator)

    def _offline_left(self) -> int:
        # round-robin writes fill the free room first, then overwrite the dataset's rows from index 0
        overwritten = max(0, self.online_written - self.online_capacity)
        return max(0, self.n_offline - overwritten)

    @property
    def offline_fraction(self) -> float:
        """Share of dataset rows among the buffer's rows (what a uniform sample draws in expectation)."""
        return self._offline_left() / max(len(self.buffer), 1)

    @property
    def online_size(self) -> int:
        return len(self.buffer) - self._offline_left()

    def __len__(self) -> int:
        return len(self.buffer)

    def _online_positions(self) -> torch.Tensor:
        """Storage indices that hold online rows (everything but the dataset rows still in place)."""
        cap = self.n_offline + self.online_capacity
        if self.online_written >= cap:
            return torch.arange(cap)
        left = self._offline_left()
        first = self.n_offline - left  # dataset rows [first, n_offline) survive
        tail = torch.arange(self.n_offline, min(cap, self.n_offline + self.online_written))
        return torch.cat([torch.arange(0, first), tail])

    def state_dict(self) -> dict[str, Any]:
        pos = self._online_positions()
        return {
            "kind": "append",
            "frames": self.frames,
            "online_written": self.online_written,
            "positions": pos,
            "rows": rows_state(self.buffer._storage[pos]) if len(pos) else {},
            "writer": self.buffer._writer.state_dict(),
            "generator": self._gen.get_state() if self._gen is not None else None,
            "transitions": self.transitions.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "append":
            raise UserError("the checkpoint's replay buffer is not an append buffer; resume with the same "
                            "online.replay setting")
        self.frames = int(state["frames"])
        self.online_written = int(state["online_written"])
        pos = torch.as_tensor(state["positions"], dtype=torch.int64)
        if len(pos):
            rows = TensorDict(state["rows"])
            rows.batch_size = [len(pos)]
            self.buffer._storage.set(pos, rows)
        self.buffer._writer.load_state_dict(state["writer"])
        if state["generator"] is not None:
            gen = torch.Generator()
            gen.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))
            self.set_rng(gen)
        self.transitions.load_state_dict(state["transitions"])
