"""The trainer's state: RNG states, ``state_dict`` / ``load_state_dict`` (everything an exact resume
needs, see docs/contracts.md, Checkpoints) and checkpoint files (:mod:`offrl.trainers.checkpoint`)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from tensordict import TensorDict

from offrl.errors import UserError, root_cause_line
from offrl.trainers.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["CHECKPOINT_FORMAT", "TrainerState", "own_storage", "rng_state", "set_rng_state"]

CHECKPOINT_FORMAT = 1


def rng_state() -> dict[str, Any]:
    """torch / numpy / python RNG states, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        # as a tensor: 625 ints would be 625 leaves in a memmap checkpoint
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np.asarray(np_state["keys"], dtype=np.uint32), int(np_state["pos"]),
                         int(np_state["has_gauss"]), float(np_state["cached_gaussian"])))
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))



def own_storage(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples) with every tensor that views a larger storage copied into its own.

    ``torch.save`` writes a view's whole storage: a seed's parameters and optimizer moments in a batched
    group (:mod:`offrl.trainers.vectorized`) are slices of every seed's stacked tensors, and its checkpoint
    must hold only its own.
    """
    if isinstance(obj, torch.Tensor):
        if obj.untyped_storage().nbytes() > obj.numel() * obj.element_size():
            return obj.detach().clone()
        return obj
    if isinstance(obj, dict):
        return type(obj)((k, own_storage(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(own_storage(v) for v in obj)
    return obj


class TrainerState:
    """Checkpointing of a :class:`~offrl.trainers.Trainer` (a mixin: ``self`` is the trainer)."""

    _algo_name = "offrl"
    _held_rng: dict[str, Any] | None = None

    def hold_rng(self) -> None:
        """Keep the process RNG state as this trainer's own from now on: its checkpoints record it and its
        evaluations start from it. For trainers that share a process (a batched group of seeds), where the
        process RNG belongs to none of them; call it right after building (or loading) the trainer."""
        self._held_rng = rng_state()

    @property
    def last_eval_returns(self) -> tuple[int, list[float]] | None:
        """(step, each episode's return) of the last evaluation that ran episodes, if it is the trainer's last
        evaluation: from this process's evaluator (``last_result``) or from the checkpoint the trainer resumed
        from; None otherwise (no evaluation yet, an evaluator that keeps no result, or older checkpoints)."""
        evaluator = getattr(self, "evaluator", None)
        result = getattr(evaluator, "last_result", None)
        if result is not None and getattr(evaluator, "last_step", None) == self._last_eval_step:
            return self._last_eval_step, [float(r) for r in result.returns]
        restored = getattr(self, "_restored_eval_returns", None)
        return restored if restored is not None and restored[0] == self._last_eval_step else None

    def _replay_buffer_state(self) -> dict[str, Any]:
        """The buffer's own ``state_dict()`` (sampler, writer, generator, prefetch; the storage's state: only
        the length for offrl's read-only dataset storage, the collected data for a torchrl storage)."""
        rb = self.replay_buffer
        if rb is None:  # no buffer: the collected batch its owed updates train on (an exact resume needs it)
            batch = self._collected
            return {"collected": {} if batch is None else {"data": own_storage(batch.to_dict()),
                                                          "n": torch.tensor(batch.numel())}}
        if hasattr(rb, "state_dict"):
            return {"buffer": rb.state_dict()}
        gen = getattr(rb, "_rng", None)
        return {"rng": gen.get_state() if gen is not None else None}

    def _load_replay_buffer_state(self, state: dict[str, Any] | None) -> None:
        rb = self.replay_buffer
        if rb is None:
            saved = (state or {}).get("collected") or {}
            self._collected = (TensorDict(saved["data"], batch_size=[int(saved["n"])]).to(self.device)
                               if saved else None)
            return
        if not state:
            return
        if state.get("buffer") is not None and hasattr(rb, "load_state_dict"):
            rb.load_state_dict(state["buffer"])
        elif state.get("rng") is not None and hasattr(rb, "set_rng"):
            gen = torch.Generator()
            gen.set_state(torch.as_tensor(state["rng"], dtype=torch.uint8))
            rb.set_rng(gen)

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs (see docs/contracts.md, Checkpoints)."""
        updater = self.target_net_updater
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "algo": self._algo_name,
            "step": self._step,
            "frames": self._frames,
            "updates_left": self._updates_left,
            # the last collected batch's metrics (done_percentage, episode_reward_mean), logged with its updates
            "online_stats": {k: torch.tensor(v, dtype=torch.float64)
                             for k, v in self._online_stats.items()},
            "step_tensor": self._step_t.detach().cpu().clone(),
            "last_eval_step": self._last_eval_step,
            # that evaluation's per-episode returns (summary.json's final.episode_returns after a resume)
            "last_eval_returns": ({"step": returns[0], "returns": torch.tensor(returns[1], dtype=torch.float64)}
                                  if (returns := self.last_eval_returns) is not None else {}),
            "loss_module": own_storage(self.loss_module.state_dict()),
            "optimizer": own_storage(self.optimizer.state_dict()),
            "target_net_updater": {"counter": int(getattr(updater, "counter", 0) or 0)},
            "greedy_module": self.greedy_module.state_dict() if self.greedy_module is not None else {},
            "replay_buffer": self._replay_buffer_state(),
            # offrl's GuardedCollector: env + episode in progress (exact online resume, offrl.online.collect)
            "collector": self.collector.resume_state() if hasattr(self.collector, "resume_state") else {},
            "rng": self._held_rng if self._held_rng is not None else rng_state(),
            "metrics_acc": {"n": self._acc_n, "sums": {k: v.detach().cpu() for k, v in self._acc_sums().items()}},
            "logger": self.logger.state_dict() if hasattr(self.logger, "state_dict") else {},
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next :meth:`train` continues from its step."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}; it was "
                            "written by another offrl version")
        if state.get("algo") not in (None, self._algo_name):
            raise UserError(f"this checkpoint was written by {state['algo']}, not {self._algo_name}; resume it "
                            "with the same algorithm")
        try:
            self.loss_module.load_state_dict(state["loss_module"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"checkpoint does not match this trainer's networks/optimizer "
                            f"({root_cause_line(exc)}); resume with the configuration that wrote it") from exc
        if self.target_net_updater is not None and hasattr(self.target_net_updater, "counter"):
            self.target_net_updater.counter = int(state["target_net_updater"]["counter"])
        if self.greedy_module is not None and state.get("greedy_module"):
            self.greedy_module.load_state_dict(state["greedy_module"])
        self._load_replay_buffer_state(state.get("replay_buffer"))
        if hasattr(self.collector, "load_resume_state"):  # after the buffer: it may drop open episodes
            self.collector.load_resume_state(state.get("collector") or {})
        self._step = int(state["step"])
        self._saved_step = self._step  # the file it came from holds this step
        self._finite_step = self._step
        self._frames = int(state["frames"])
        self._updates_left = int(state.get("updates_left", 0))
        self._online_stats = {k: float(v) for k, v in (state.get("online_stats") or {}).items()}
        self._step_t.copy_(torch.as_tensor(state["step_tensor"]))
        self._last_eval_step = int(state.get("last_eval_step", -1))
        saved = state.get("last_eval_returns") or {}
        self._restored_eval_returns = ((int(saved["step"]), torch.as_tensor(saved["returns"]).tolist())
                                       if saved else None)
        acc = state.get("metrics_acc") or {}
        self._acc = {k: torch.as_tensor(v).to(self.device) for k, v in (acc.get("sums") or {}).items()}
        self._acc_keys, self._acc_vec = None, None
        self._acc_n = int(acc.get("n", 0))
        if state.get("logger") and hasattr(self.logger, "load_state_dict"):
            self.logger.load_state_dict(state["logger"])
        set_rng_state(state["rng"])
        if self._held_rng is not None:
            self._held_rng = rng_state()

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint (atomically) to ``path`` or ``save_trainer_file``; with ``keep_checkpoints``
        also ``step_<N><suffix>`` beside it."""
        target = Path(path) if path is not None else self.save_trainer_file
        if target is None:
            raise UserError("no checkpoint path: pass save_trainer_file= to the trainer or a path to save()")
        state = self.state_dict()
        if self.keep_checkpoints:
            # step_<N> first: a process killed between the two writes leaves latest.pt at the previous
            # checkpoint, and the resume from it trains to N again and rewrites this file (the other order
            # would leave latest.pt at N and step_<N> missing for good)
            save_checkpoint(state, target.with_name(f"step_{self._step}{target.suffix}"))
        save_checkpoint(state, target)
        self._saved_step = self._step
        return target

    def load_from_file(self, file: str | Path, **kwargs: Any) -> Self:
        """Load a checkpoint file (``CKPT_BACKEND=torch``: ``torch.load`` with ``weights_only=True`` unless
        overridden in ``kwargs``; memmap directories ignore ``kwargs``) into this trainer."""
        self.load_state_dict(load_checkpoint(file, **kwargs))
        return self
