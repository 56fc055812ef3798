"""The training loop shared by :class:`~offrl.trainers.CQLTrainer` and :class:`~offrl.trainers.DQNTrainer`.

One gradient step, read top to bottom (:meth:`Trainer._run`):

    sample -> loss -> backward -> clip -> optimizer step -> target update
           -> every log_interval: log one row (means since the last row)
           -> every eval_interval: evaluator(policy, step), merged into the row
           -> every save_trainer_interval: checkpoint
           -> stop requested? checkpoint and return

Offline, ``offline_steps`` such steps sample from ``replay_buffer``. With a collector, they are followed by
the online phase: collect ``frames_per_batch`` env steps, extend the buffer, anneal epsilon, do
``optim_steps_per_batch`` steps, until ``total_frames`` frames (``frame_skip`` frames per env step; with
``replay_buffer=None``, online only, each step trains on the whole collected batch). The update step, metrics
and state are mixins in their own modules (:mod:`~offrl.trainers.update`, :mod:`~offrl.trainers.metrics`,
:mod:`~offrl.trainers.state`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from offrl.data.buffer import direct_draw
from offrl.errors import UserError
from offrl.trainers.collectors import is_async, seed_collector
from offrl.trainers.metrics import PHASES, TrainerMetrics
from offrl.trainers.signals import install_stop_handlers
from offrl.trainers.state import TrainerState, rng_state, set_rng_state
from offrl.trainers.update import UpdateStep, batch_scalers, tune_allocator

__all__ = ["EvalFn", "Trainer"]

#: What a trainer calls to evaluate: ``(policy, step) -> {metric: value}`` (e.g. an
#: :class:`offrl.evaluation.Evaluator`).
EvalFn = Callable[[Any, int], dict[str, float]]


def _positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return int(value)


class Trainer(UpdateStep, TrainerMetrics, TrainerState):
    """Base of the CQL and DQN trainers: validation, the offline and online loop, evaluation, stop handling.

    Subclasses define :meth:`_check_loss` and :meth:`_loss_terms` (how a loss module's outputs combine into
    the total loss and which metrics they yield). Arguments: see ``docs/contracts.md`` (Trainers).
    """

    def __init__(
        self,
        *,
        collector: Any = None,
        total_frames: int = 0,
        frame_skip: int = 1,
        optim_steps_per_batch: int = 1,
        loss_module: Any,
        optimizer: torch.optim.Optimizer | None = None,
        logger: Any = None,
        clip_grad_norm: bool = True,
        clip_norm: float | None = None,
        progress_bar: bool = True,
        seed: int | None = None,
        save_trainer_interval: int = 10000,
        log_interval: int = 10000,
        save_trainer_file: str | Path | None = None,
        replay_buffer: Any = None,
        enable_logging: bool = True,
        log_rewards: bool = True,
        log_actions: bool = False,
        log_observations: bool = False,
        target_net_updater: Any = None,
        async_collection: bool = False,
        log_timings: bool = False,
        offline_steps: int = 0,
        evaluator: EvalFn | None = None,
        eval_interval: int = 0,
        policy: Any = None,
        keep_checkpoints: bool = False,
        device: torch.device | str | None = None,
        handle_signals: bool = True,
        precision: str = "fp32",
        cuda_graph: bool = False,
        greedy_module: Any = None,
        reward_key: Any = "reward",
        done_key: Any = "done",
        episode_reward_key: Any = "reward_sum",
        action_key: Any = "action",
        observation_key: Any = "observation",
        observation_scaler: Any = None,
        reward_scaler: Any = None,
    ) -> None:
        self._check_loss(loss_module)
        self.loss_module = loss_module
        self.collector = collector
        self.total_frames = _positive_int("total_frames", total_frames, allow_zero=True)
        self.frame_skip = _positive_int("frame_skip", frame_skip)
        self.optim_steps_per_batch = _positive_int("optim_steps_per_batch", optim_steps_per_batch)
        self.offline_steps = _positive_int("offline_steps", offline_steps, allow_zero=True)
        self.log_interval = _positive_int("log_interval", log_interval)
        self.save_trainer_interval = _positive_int("save_trainer_interval", save_trainer_interval)
        self.eval_interval = _positive_int("eval_interval", eval_interval, allow_zero=True)
        if clip_norm is not None and not (isinstance(clip_norm, (int, float)) and clip_norm > 0):
            raise UserError(f"clip_norm must be a positive number or None, got {clip_norm!r}")
        if collector is None and self.offline_steps == 0:
            raise UserError("offline_steps must be > 0 when no collector is given (there is nothing else to do)")
        if collector is not None and self.total_frames == 0:
            raise UserError("total_frames must be > 0 when a collector is given")
        if replay_buffer is None and (collector is None or self.offline_steps):
            raise UserError("replay_buffer is required for offline steps (OfflineDataset.replay_buffer(batch_size)); "
                            "without one, a collector's batches are trained on as collected (offline_steps=0)")
        if async_collection and (collector is None or not is_async(collector)):
            raise UserError("async_collection=True needs an asynchronous collector (torchrl MultiAsyncCollector, "
                            "e.g. offrl.online.make_collector(..., async_collection=True)); got "
                            f"{type(getattr(collector, 'collector', collector)).__name__}")
        if precision not in ("fp32", "bf16"):
            raise UserError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if evaluator is not None and policy is None:
            raise UserError("an evaluator needs policy= (the deterministic policy, e.g. AlgoParts.policy)")
        self.replay_buffer = replay_buffer
        self._collected: TensorDictBase | None = None  # without a buffer: the batch the updates train on
        self._draw: tuple[Any, Any] | None = None  # (buffer, its direct draw or None): see _sample
        self.optimizer = optimizer if optimizer is not None else torch.optim.Adam(loss_module.parameters(), lr=3e-4)
        self.target_net_updater = target_net_updater
        self.greedy_module = greedy_module
        self.logger = logger
        self.clip_grad_norm = bool(clip_grad_norm)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.progress_bar = bool(progress_bar)
        self.seed = seed
        self.save_trainer_file = None if save_trainer_file is None else Path(save_trainer_file)
        self.keep_checkpoints = bool(keep_checkpoints)
        self.enable_logging = bool(enable_logging)
        self.log_rewards = bool(log_rewards)
        self.log_actions = bool(log_actions)
        self.log_observations = bool(log_observations)
        # with an asynchronous collector the envs keep stepping while the trainer updates; its batches may come
        # from weights one or more batches old, and runs are not reproducible bit for bit (see offrl.online)
        self.async_collection = bool(async_collection)
        self.log_timings = bool(log_timings)
        self.evaluator = evaluator
        self.policy = policy
        self.handle_signals = bool(handle_signals)
        self.reward_key, self.done_key, self.episode_reward_key = reward_key, done_key, episode_reward_key
        self.action_key, self.observation_key = action_key, observation_key
        if device is None:
            device = next(iter(loss_module.parameters())).device
        self.device = torch.device(device)
        self.observation_scaler, self.reward_scaler = batch_scalers(observation_scaler, reward_scaler, self.device,
                                                                    loss_module)  # scale sampled batches
        if self.device.type == "cpu":
            tune_allocator()  # process-wide: keeps the update's activation buffers in the heap
        # bf16: the loss forward runs under autocast (bf16 matmuls; parameters, optimizer and the critic's
        # output layer stay fp32). Opt-in: see offrl.algos.kernels and the README's precision notes.
        self.precision = precision
        # cuda_graph: forward + backward + clip + optimizer step captured once as a CUDA graph (tensordict's
        # CudaGraphModule) and replayed; on a CPU the step runs eagerly (same code, same numbers).
        self.cuda_graph = bool(cuda_graph)
        self._graphed: Callable[[TensorDictBase], TensorDictBase] | None = None

        # counters (all part of the checkpoint)
        self._step = 0
        self._frames = 0
        self._updates_left = 0  # updates still owed to the last collected batch (a stop can cut a batch)
        self._online_stats: dict[str, float] = {}  # the last collected batch's metrics (metrics.py)
        self._last_eval_step = -1
        self._saved_step = -1
        self._finite_step = 0  # the last step whose losses (and all before it) were checked finite
        self._step_t = torch.zeros((), dtype=torch.int64, device=self.device)  # the update's own counter
        self._target_fn: Callable[[], None] | None = None
        self._optimizer_fns: tuple[Any, Callable[[], None], Callable[[], None]] | None = None  # optim.py
        self._last_batch: TensorDictBase | None = None
        self._acc: dict[str, torch.Tensor] = {}
        self._acc_n = 0
        self._acc_keys: tuple[str, ...] | None = None  # with _acc_vec: the stacked fast path of _accumulate
        self._acc_vec: torch.Tensor | None = None
        self._timings: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.eval_seconds = 0.0  # time spent in the evaluator by this process (not counted in updates/s)
        self._eval_seconds_row = 0.0
        self._stop_reason: str | None = None
        self._stop_requested = False
        self._stop_acted_on = False  # a train() ended under a stop request: the next train() clears it
        self.last_row: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}

        if seed is not None:
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            if hasattr(replay_buffer, "set_rng"):
                replay_buffer.set_rng(torch.Generator().manual_seed(seed))
            seed_collector(collector, seed)

    # ----------------------------------------------------------------------------------- subclass hooks
    def _check_loss(self, loss_module: Any) -> None:
        raise NotImplementedError

    def _prepare_batch(self, batch: TensorDictBase) -> TensorDictBase:
        return batch

    # -------------------------------------------------------------------------------------- the loop
    @property
    def step(self) -> int:
        """Gradient steps done so far."""
        return self._step

    @property
    def frames(self) -> int:
        """Environment frames collected so far (online phase)."""
        return self._frames

    @property
    def saved_step(self) -> int:
        """The step of the last checkpoint this trainer wrote or loaded (-1: none)."""
        return self._saved_step

    @property
    def stopped(self) -> bool:
        return self._stop_requested

    @property
    def display_name(self) -> str:
        """The algorithm's name in the progress bar (the checkpoint's ``algo`` tag stays ``_algo_name``)."""
        return self._algo_name

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def planned_steps(self) -> int | None:
        """Total gradient steps this run will do (None when the collector's batch size is unknown)."""
        if self.collector is None:
            return self.offline_steps
        fpb = getattr(self.collector, "frames_per_batch", None) or getattr(
            self.collector, "requested_frames_per_batch", None)
        if not fpb:
            return None
        batches = math.ceil(self.total_frames / (int(fpb) * self.frame_skip))
        return self.offline_steps + batches * self.optim_steps_per_batch

    def request_stop(self, reason: str | None = None) -> None:
        """Stop at the next loop boundary, after writing a checkpoint (when ``save_trainer_file`` is set)."""
        self._stop_requested = True
        self._stop_reason = reason or "requested"

    def train(self) -> dict[str, float]:
        """Run to the end (or to a stop request); returns the last logged row."""
        for _ in self.iterate():
            pass
        return self.last_row

    def iterate(self) -> Iterator[tuple[int, dict[str, float]]]:
        """Train, yielding ``(step, row)`` for each logged row (the loop behind :meth:`train`)."""
        restore = (install_stop_handlers(self.request_stop, lambda: self._stop_requested)
                   if self.handle_signals else lambda: None)
        self._begin()
        try:
            yield from self._run()
        finally:
            self._end()
            restore()

    def _begin(self) -> None:
        """Start a training session: the stop flags that ended the previous one cleared (a stop requested
        before this session stops it at its first step, as torchrl's), the plan, the progress bar and the
        row clock."""
        from tqdm.auto import tqdm

        if self._stop_acted_on:
            self._stop_requested, self._stop_reason, self._stop_acted_on = False, None, False
        self._planned = self.planned_steps()
        self._pbar = tqdm(total=self._planned, initial=self._step, disable=not self.progress_bar,
                          desc=self.display_name, unit="step", dynamic_ncols=True, leave=False)
        self._t_row = time.perf_counter()
        self._step_row = self._step

    def _end(self) -> None:
        """End a training session (its stop request, if any, has been acted on)."""
        self._pbar.close()
        self._stop_acted_on = self._stop_requested

    def _run(self) -> Iterator[tuple[int, dict[str, float]]]:
        # offline phase
        while self._step < self.offline_steps:
            t0 = time.perf_counter()
            batch = self._sample()
            self._timings["sample"] += time.perf_counter() - t0
            yield from self._train_step(batch, "offline")
            if self._stop_requested and (self.collector is not None or self._step < self.offline_steps):
                self._checkpoint_now()
                return
        # online phase: collect, extend, train
        if self.collector is not None:
            # a run stopped in the middle of a batch's updates owes them first (resume = uninterrupted run)
            if not (yield from self._owed_updates()):
                return
            if self._frames < self.total_frames:
                for data in self.collector:
                    self._frames += data.numel() * self.frame_skip
                    if self.replay_buffer is not None:
                        self.replay_buffer.extend(data.reshape(-1))
                    else:  # torchrl's trainer without a buffer: every update of this batch trains on all of it
                        self._collected = data.reshape(-1)
                    if self.greedy_module is not None:  # annealed by frames, as torchrl's trainer
                        self.greedy_module.step(data.numel() * self.frame_skip)
                    self._online_stats = self._collect_stats(data)
                    self._updates_left = self.optim_steps_per_batch
                    if not (yield from self._owed_updates()):
                        return
                    if hasattr(self.collector, "update_policy_weights_"):
                        self.collector.update_policy_weights_()
                    if self._frames >= self.total_frames:
                        break
            if hasattr(self.collector, "shutdown"):
                self.collector.shutdown()
        yield from self._finish("online" if self.collector is not None else "offline")

    def _finish(self, phase: str) -> Iterator[tuple[int, dict[str, float]]]:
        """The end of a run: flush a partial row, a final evaluation, a final checkpoint."""
        row: dict[str, float] = {}
        if self._acc_n:
            row.update(self._flush_metrics())
            self._check_finite(row)
        if self.evaluator is not None and self.eval_interval and self._last_eval_step != self._step:
            row.update(self._evaluate(final=True))
        if row:
            self._emit(row, phase)
        self._checkpoint_now()
        if self._stop_reason in ("SIGINT", "SIGTERM"):
            # every step is done: a signal during the final evaluation or checkpoint stopped nothing
            self._stop_requested, self._stop_reason = False, None
        if row:
            yield self._step, row

    def _owed_updates(self) -> Generator[tuple[int, dict[str, float]], None, bool]:
        """The updates still owed to the last collected batch; returns False when a stop cut them short."""
        while self._updates_left > 0:
            t0 = time.perf_counter()
            batch = self._sample()
            self._timings["sample"] += time.perf_counter() - t0
            self._updates_left -= 1
            yield from self._train_step(batch, "online")
            if self._stop_requested:
                self._checkpoint_now()
                return False
        return True

    def _checkpoint_now(self) -> None:
        """Save unless there is no checkpoint file or this step is saved; never after a NaN/inf loss."""
        if self.save_trainer_file is not None and self._saved_step != self._step:
            self._check_pending()
            self.save()

    def _sample(self) -> TensorDictBase:
        if self.replay_buffer is None:
            batch = self._collected.to(self.device, non_blocking=True)  # type: ignore[union-attr]
            return self._prepare_batch(self._scaled(batch))
        draw = self._draw
        if draw is None or draw[0] is not self.replay_buffer:  # built once per buffer (it may be replaced)
            draw = self._draw = (self.replay_buffer, direct_draw(self.replay_buffer))
        batch = draw[1]() if draw[1] is not None else self.replay_buffer.sample()
        if batch.device != self.device:
            batch = batch.to(self.device, non_blocking=True)
        return self._prepare_batch(self._scaled(batch))

    def _train_step(self, batch: TensorDictBase, phase: str) -> Iterator[tuple[int, dict[str, float]]]:
        if self.log_timings and not self.cuda_graph:  # the same pieces as update(), timed one by one
            metrics = self._timed_update(batch, self._timings)
        else:
            metrics = self._update(batch)
        self._accumulate(metrics)
        yield from self._step_done(batch, phase)

    def _row_due(self, step: int) -> bool:
        """Whether gradient step ``step`` ends a logged row (every ``log_interval``, and the last step)."""
        return step % self.log_interval == 0 or step == self._planned

    def _step_done(self, batch: TensorDictBase, phase: str) -> Iterator[tuple[int, dict[str, float]]]:
        """After an update whose metrics are accumulated: count it, then log / evaluate / checkpoint as due."""
        self._last_batch = batch  # for statistics computed only when a row is logged (_row_stats)
        self._step += 1
        self._pbar.update(1)

        step = self._step
        last = step == self._planned  # the last step logs its partial interval and evaluates, in one row
        row: dict[str, float] = {}
        if self._row_due(step):
            row.update(self._flush_metrics())
            if not self._check_finite(row, raise_=False):
                self._emit(row, phase)  # the row that shows it, then stop without a checkpoint
                self._check_finite(row)
        if self.evaluator is not None and self.eval_interval and (step % self.eval_interval == 0 or last):
            row.update(self._evaluate(final=last))
        if row:
            self._emit(row, phase)
        if step % self.save_trainer_interval == 0:
            self._checkpoint_now()
        if row:
            yield step, row

    def _evaluate(self, final: bool = False) -> dict[str, float]:
        """Run the evaluator with RNG states restored after (the last evaluation: ``evaluator.final``)."""
        t0 = time.perf_counter()
        saved = rng_state()
        if self._held_rng is not None:  # a trainer of a batched group evaluates from its own RNG state
            set_rng_state(self._held_rng)
        evaluate = getattr(self.evaluator, "final", None) if final else None
        try:
            with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
                result = (evaluate or self.evaluator)(self.policy, self._step)
        finally:
            set_rng_state(saved)
        seconds = time.perf_counter() - t0
        self._timings["eval"] += seconds
        self.eval_seconds += seconds  # excluded from updates/s: throughput counts training only
        self._eval_seconds_row += seconds
        self._last_eval_step = self._step
        self.last_eval = {k: float(v) for k, v in dict(result).items()}
        return dict(self.last_eval)

    def _emit(self, row: dict[str, float], phase: str) -> None:
        t0 = time.perf_counter()
        self.last_row = dict(row)
        if self.logger is not None:
            if hasattr(self.logger, "log_row"):
                self.logger.log_row(self._step, phase, dict(row))
            else:
                for name, value in row.items():
                    self.logger.log_scalar(name, value, step=self._step)
        postfix = {k: f"{row[k]:.3g}" for k in ("loss_qvalue", "loss_actor", "loss", "loss_cql") if k in row}
        if "updates_per_s" in row:
            postfix["it/s"] = f"{row['updates_per_s']:.0f}"
        eval_key = next((k for k in ("eval_normalized_score", "eval_return_mean") if k in self.last_eval), None)
        if eval_key:
            postfix["eval"] = f"{self.last_eval[eval_key]:.1f}"
        self._pbar.set_postfix(postfix, refresh=False)
        self._timings["log"] += time.perf_counter() - t0
