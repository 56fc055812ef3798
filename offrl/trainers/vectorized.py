"""Several seeds trained as one batched model in one process (``offrl train --seeds N --vectorize``).

:class:`VectorizedSeeds` takes N ordinary trainers (CQL, discrete CQL or DQN, offline, built as usual: each
with its own seed, replay buffer, logger, evaluator and checkpoint file) and drives them in lockstep. Their
networks, target networks and Adam moments become slices of stacked ``[N, ...]`` tensors
(:class:`~offrl.algos.stacked_q.StackedQLoss`, :class:`~offrl.algos.stacked_cql.StackedCQLLoss`). Continuous
CQL also samples actions in its loss: each seed draws them from its own ``torch.Generator``, started at the
RNG state its trainer holds and written back into it after every step, so its checkpoint records its stream
as its separate run's would. One step is then

    each seed's sampler draws its batch (its own generator) -> one [N, B] gather -> one batched forward and
    backward (the sum of the seeds' mean losses) -> per-seed gradient norms and clipping -> one Adam step over
    the stacked tensors (Adam is elementwise: N Adams) -> one target update -> each trainer's own
    bookkeeping: its metrics row, evaluation and checkpoint when due (:meth:`Trainer._step_done`)

so each seed's metrics.csv, checkpoints (its own parameters, moments, sampler state and RNG state, nothing of
the others') and evaluations are what its own run writes, and any of them resumes on its own with
``offrl train --resume``. The batched arithmetic equals each seed's own step within float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.objectives import HardUpdate, SoftUpdate

from offrl.algos.stacked_cql import StackedCQLLoss, stackable_cql_reason
from offrl.algos.stacked_q import StackedQLoss, stackable_reason
from offrl.data.buffer import StackedSampler
from offrl.errors import UserError
from offrl.trainers.loop import Trainer
from offrl.trainers.metrics import NonFiniteLossError
from offrl.trainers.optim import fast_optimizer_step, fast_zero_grad
from offrl.trainers.signals import install_stop_handlers

__all__ = ["VectorizedSeeds", "vectorize_reason"]

_SAME = ("offline_steps", "log_interval", "save_trainer_interval", "eval_interval", "clip_grad_norm", "clip_norm",
         "log_rewards", "log_actions", "log_observations", "reward_key", "action_key", "observation_key", "device")


def vectorize_reason(trainers: Sequence[Trainer]) -> str | None:
    """Why ``trainers`` cannot be driven as one batched group (None when they can)."""
    if not trainers:
        return "no trainers"
    first = trainers[0]
    for t in trainers:
        if type(t) is not type(first):
            return "every seed must use the same trainer"
        if t.collector is not None:
            return "only offline training is batched (no online phase: drop --online-steps)"
        if getattr(t, "mixing_strategy", None) is not None:
            return "multi-agent Q-learning is not batched"
        if t.precision != "fp32" or t.cuda_graph or t.log_timings:
            return "the batched step runs in fp32, eagerly, untimed (drop precision, cuda_graph, log_timings)"
        if any(getattr(t, a) != getattr(first, a) for a in _SAME) or t.step != first.step:
            return "every seed must use the same settings and be at the same step"
        if t.replay_buffer.batch_size != first.replay_buffer.batch_size:
            return "every seed must use the same batch size"
        if not _same_scaler(t.observation_scaler, first.observation_scaler):
            return "every seed must scale observations the same way"
        if t.reward_scaler != first.reward_scaler:
            return "every seed must scale rewards the same way"
        if type(t.target_net_updater) not in (SoftUpdate, HardUpdate) or \
                type(t.target_net_updater) is not type(first.target_net_updater):
            return "the batched step needs a soft or hard target update, the same for every seed"
        upd, upd0 = t.target_net_updater, first.target_net_updater
        if (getattr(upd, "eps", None), getattr(upd, "value_network_update_interval", None),
                getattr(upd, "counter", None)) != (getattr(upd0, "eps", None),
                                                   getattr(upd0, "value_network_update_interval", None),
                                                   getattr(upd0, "counter", None)):
            return "every seed must use the same target update (and be at the same point of it)"
        if type(t.optimizer) not in (torch.optim.Adam, torch.optim.AdamW) or type(t.optimizer) is not type(
                first.optimizer):
            return "the batched step needs the same Adam optimizer for every seed"
    if _continuous_cql(first):
        if any(t.update_order != "joint" for t in trainers):
            return "the batched step runs update_order=joint only; run the seeds without --vectorize"
        if any(t.bc_steps != first.bc_steps for t in trainers):
            return "every seed must use the same bc_steps"
        return stackable_cql_reason([t.loss_module for t in trainers])
    return stackable_reason([t.loss_module for t in trainers])


def _same_scaler(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return a.kind == b.kind and torch.equal(a.loc, b.loc) and torch.equal(a.scale, b.scale)


def _continuous_cql(trainer: Trainer) -> bool:
    return trainer.display_name == "cql"


def _generator(trainer: Trainer, device: torch.device) -> torch.Generator:
    """A generator at the trainer's held RNG state (its own random stream in a batched group)."""
    gen = torch.Generator(device=device)
    held = trainer._held_rng
    if device.type == "cuda":
        gen.set_state(held["cuda"][device.index or 0])
    else:
        gen.set_state(torch.as_tensor(held["torch"], dtype=torch.uint8))
    return gen


class VectorizedSeeds:
    """N trainers of the same configuration, one per seed, trained as one batched model (module docstring).

    Build each trainer as usual (and load its checkpoint to resume it), call ``trainer.hold_rng()`` right
    after, then pass them here; :meth:`train` runs them all to the end (or to a stop request: every seed
    checkpoints). A trainer that is not given its own RNG state holds the process state at construction.
    """

    def __init__(self, trainers: Sequence[Trainer], *, handle_signals: bool = True) -> None:
        reason = vectorize_reason(trainers)
        if reason is not None:
            raise UserError(f"--vectorize: {reason}")
        self.trainers = list(trainers)
        self.n = len(self.trainers)
        self.handle_signals = handle_signals
        first = self.trainers[0]
        if _continuous_cql(first) and any(t._held_rng is None for t in self.trainers):
            # held now, every seed would start from this one process state: the same action noise for all
            raise UserError("--vectorize: continuous CQL draws each seed's actions from its own random stream; call "
                            "trainer.hold_rng() right after building (or loading) each trainer")
        for t in self.trainers:
            if t._held_rng is None:
                t.hold_rng()
        self._generators: list[torch.Generator] = []
        if _continuous_cql(first):  # the loss samples actions: each seed draws from its own stream
            device = first.device
            self._generators = [_generator(t, device) for t in self.trainers]
            self.loss: StackedQLoss | StackedCQLLoss = StackedCQLLoss([t.loss_module for t in self.trainers],
                                                                      self._generators)
        else:
            self.loss = StackedQLoss([t.loss_module for t in self.trainers])
        self.optimizer = self._stack_optimizers()
        self._zero_grad, self._optimizer_step = fast_zero_grad(self.optimizer), fast_optimizer_step(self.optimizer)
        self._target_fn = self._target_step()
        steps = torch.stack([t._step_t for t in self.trainers])
        for i, t in enumerate(self.trainers):
            t._step_t = steps[i]  # each trainer's update counter, a view: one add for all
        self._steps_t = steps
        self._acc: torch.Tensor | None = None  # the metric sums of the current row, [N, metrics]
        self._acc_rows: list[torch.Tensor] = []
        self._keys: list[str] | None = None
        stats = [(first.log_rewards, "reward", ("next", first.reward_log_key)),
                 (first.log_actions, "action", first.action_key),
                 (first.log_observations, "observation", first.observation_key)]
        self._stats = [(name, key) for enabled, name, key in stats if enabled and first.enable_logging]

    # ------------------------------------------------------------------------------------- building
    def _stack_optimizers(self) -> torch.optim.Optimizer:
        """One optimizer over the stacked parameters, the seeds' own states becoming slices of its state."""
        opts = [t.optimizer for t in self.trainers]
        maps = [self.loss.seed_params(i) for i in range(self.n)]
        first = opts[0]
        groups = []
        if any(len(opt.param_groups) != len(first.param_groups) for opt in opts):
            raise UserError("--vectorize: every seed's optimizer must have the same parameter groups")
        for g, group in enumerate(first.param_groups):
            hyper = {k: v for k, v in group.items() if k != "params"}
            stacked = [maps[0].get(id(p)) for p in group["params"]]
            for i, opt in enumerate(opts):
                other = opt.param_groups[g]
                same = {k: v for k, v in other.items() if k != "params"} == hyper
                if not same or [maps[i].get(id(p)) for p in other["params"]] != stacked:
                    raise UserError("--vectorize: every seed's optimizer must cover its networks with the same "
                                    "settings")
            if any(s is None for s in stacked):
                raise UserError("--vectorize: the optimizer holds parameters outside the loss's networks")
            groups.append({**hyper, "params": stacked})
        optimizer = type(first)(groups, **first.defaults)
        for g, group in enumerate(optimizer.param_groups):
            for j, leaf in enumerate(group["params"]):
                own = [opt.param_groups[g]["params"][j] for opt in opts]
                states = [opt.state.get(p, {}) for opt, p in zip(opts, own, strict=True)]
                optimizer.state[leaf] = state = self._stack_state(states, leaf, group)
                for i, (opt, p) in enumerate(zip(opts, own, strict=True)):  # each seed's state: its slice
                    opt.state[p] = {k: (v if k == "step" else v[i]) for k, v in state.items()}
        return optimizer

    @staticmethod
    def _stack_state(states: list[dict[str, Any]], leaf: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """Adam's state for a stacked leaf: the seeds' states stacked, or a fresh state (as Adam makes it)."""
        moments = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group.get("amsgrad") else [])
        if not any(states):
            fused = bool(group.get("fused")) or bool(group.get("capturable"))
            step = (torch.zeros((), dtype=torch.float32, device=leaf.device) if fused
                    else torch.tensor(0.0, dtype=torch.get_default_dtype()))
            return {"step": step, **{k: torch.zeros_like(leaf, memory_format=torch.preserve_format) for k in moments}}
        if not all(states) or any(float(s["step"]) != float(states[0]["step"]) for s in states):
            raise UserError("--vectorize: the seeds' optimizers are at different steps; resume each run on its own")
        return {"step": states[0]["step"].clone(), **{k: torch.stack([s[k] for s in states]) for k in moments}}

    def _target_step(self) -> Any:
        updaters = [t.target_net_updater for t in self.trainers]
        sources = [p.data for p in self.loss.target_sources]
        targets = self.loss.targets
        if type(updaters[0]) is SoftUpdate:
            weight = 1 - updaters[0].eps  # fast_target_step's arithmetic

            def soft() -> None:
                torch._foreach_lerp_(targets, sources, weight)

            return soft
        interval = updaters[0].value_network_update_interval

        def hard() -> None:  # HardUpdate.step: copy when the counter reaches the interval, then count
            counter = updaters[0].counter
            if counter == interval:
                torch._foreach_copy_(targets, sources)
            for u in updaters:
                u.counter = 0 if counter == interval else counter + 1

        return hard

    # ------------------------------------------------------------------------------------- the step
    def _optim(self) -> dict[str, torch.Tensor]:
        """Per-seed gradient norms (before clipping), each seed clipped over all its groups at once (the
        trainer's torchrl semantics), then the Adam step."""
        first = self.trainers[0]
        norms: dict[str, torch.Tensor] = {}
        stepped: list[torch.Tensor] = []
        for i, group in enumerate(self.optimizer.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            per_tensor = torch.stack([torch.linalg.vector_norm(p.grad.reshape(p.grad.shape[0], -1), dim=1)
                                      for p in params])
            norms[f"grad_norm_{group.get('name', i)}"] = torch.linalg.vector_norm(per_tensor, dim=0)  # [N]
            stepped += params
        values = list(norms.values())
        total = values[0] if len(values) == 1 else torch.stack(values).pow(2).sum(0).sqrt()
        if stepped and first.clip_norm is not None:
            if first.clip_grad_norm:  # clip_grad_norm_'s arithmetic, per seed
                coef = (first.clip_norm / (total + 1e-6)).clamp(max=1.0)
                torch._foreach_mul_([p.grad for p in stepped],
                                    [coef.view(-1, *([1] * (p.ndim - 1))) for p in stepped])
            else:
                torch.nn.utils.clip_grad_value_(stepped, first.clip_norm)
        norms["grad_norm"] = total
        self._optimizer_step()
        return norms

    def _update(self, batch: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of every seed; returns the metrics ``[N, K]`` (keys: ``self._keys``) and Q ``[N, B, A]``."""
        if isinstance(self.loss, StackedQLoss) and self.loss.manual:  # the gradients without autograd
            metrics, q = self.loss.gradients(batch)
        else:
            first = self.trainers[0]
            total, metrics, q = (self.loss(batch, bc_phase=first._step_t < first.bc_steps) if self._generators
                                 else self.loss(batch))
            self._zero_grad()
            total.backward()
        for name, key in self._stats:  # the trainers' _batch_stats, per seed
            std, mean = torch.std_mean(batch.get(key).detach().flatten(1).float(), dim=1)
            metrics[f"{name}_mean"], metrics[f"{name}_std"] = mean, std
        metrics.update(self._optim())
        self._target_fn()
        self._steps_t += 1
        self._keep_streams()
        if self._keys is None:
            self._keys = list(metrics)
        return torch.stack(list(metrics.values()), 1).detach(), q

    def _keep_streams(self) -> None:
        """Each trainer's held RNG state follows its seed's generator, so its checkpoint records where the
        seed's stream stands (and a resume, batched or on its own, continues it)."""
        for t, gen in zip(self.trainers, self._generators, strict=False):
            if gen.device.type == "cuda":
                t._held_rng["cuda"][gen.device.index or 0] = gen.get_state()
            else:
                t._held_rng["torch"] = gen.get_state()

    def _accumulate(self, values: torch.Tensor) -> None:
        """Add a step's metrics to every trainer's row sums: one add into the stacked sums that the
        trainers' own accumulators view, or (after a resume mid-row) each trainer's own accumulation."""
        trainers, keys = self.trainers, tuple(self._keys or ())
        if self._acc is not None and all(t._acc_vec is r for t, r in zip(trainers, self._acc_rows, strict=True)):
            self._acc.add_(values)
        elif all(t._acc_n == 0 and not t._acc and t._acc_vec is None for t in trainers):
            self._acc = values.clone()
            self._acc_rows = list(self._acc.unbind(0))
            for t, row in zip(trainers, self._acc_rows, strict=True):
                t._acc_keys, t._acc_vec = keys, row
        else:
            for t, row in zip(trainers, values.unbind(0), strict=True):
                t._accumulate(dict(zip(keys, row.unbind(0), strict=True)))
            return
        for t in trainers:
            t._acc_n += 1

    def _seed_batch(self, batch: TensorDictBase, q: torch.Tensor, i: int) -> TensorDictBase:
        """Seed ``i``'s batch as its own loss would leave it (for the statistics of a logged row)."""
        own = batch[i]
        if self.loss.discrete_cql:
            own.set(self.trainers[i].loss_module.tensor_keys.pred_val, q[i])
        return own

    # ------------------------------------------------------------------------------------- the loop
    def request_stop(self, reason: str | None = None) -> None:
        """Stop every seed at the next step boundary, after each writes its checkpoint."""
        for t in self.trainers:
            t.request_stop(reason)

    @property
    def stopped(self) -> bool:
        return any(t.stopped for t in self.trainers)

    def train(self) -> None:
        """Train every seed to the end (or to a stop request). A seed whose loss becomes NaN/inf stops the
        group: the others checkpoint and stop, and its :class:`NonFiniteLossError` is raised."""
        for _ in self.iterate():
            pass

    def iterate(self) -> Iterator[tuple[int, int, dict[str, float]]]:
        """Train, yielding ``(seed index, step, row)`` for each row a seed logs."""
        restore = (install_stop_handlers(self.request_stop, lambda: self.stopped) if self.handle_signals
                   else lambda: None)
        for t in self.trainers:
            t._begin()
        try:
            yield from self._run()
        finally:
            for t in self.trainers:
                t._end()
            restore()

    def _hooks(self, i: int, rows: Iterator[tuple[int, dict[str, float]]]) -> Iterator[tuple[int, int, dict]]:
        """Seed ``i``'s rows, with its evaluation time excluded from every other seed's throughput too (they
        wait for it)."""
        t = self.trainers[i]
        before = t.eval_seconds
        for step, row in rows:
            yield i, step, row
        spent = t.eval_seconds - before
        if spent:
            for other in self.trainers:
                if other is not t:
                    other._t_row += spent
                    other.eval_seconds += spent

    def _run(self) -> Iterator[tuple[int, int, dict[str, float]]]:
        trainers = self.trainers
        first = trainers[0]
        sampler = StackedSampler([t.replay_buffer for t in trainers])
        while first.step < first.offline_steps:
            batch = first._scaled(sampler.sample())  # every seed's scaler is the same (vectorize_reason)
            values, q = self._update(batch)
            self._accumulate(values)
            failed: NonFiniteLossError | None = None
            for i, t in enumerate(trainers):
                own = self._seed_batch(batch, q, i) if t._row_due(t.step + 1) else None
                try:
                    yield from self._hooks(i, t._step_done(own, "offline"))
                except NonFiniteLossError as err:  # the other seeds finish this step, then stop
                    failed = failed or err
            if failed is not None:
                for t in trainers:
                    if t.stop_reason != "diverged":
                        t.request_stop("another seed diverged")
                        t._checkpoint_now()
                raise failed
            if self.stopped and first.step < first.offline_steps:
                for t in trainers:
                    t._checkpoint_now()
                return
        for i, t in enumerate(trainers):
            yield from self._hooks(i, t._finish("offline"))
        for t in trainers:  # every step is done: a signal during a seed's final evaluation stopped nothing
            if t.stop_reason in ("SIGINT", "SIGTERM"):
                t._stop_requested, t._stop_reason = False, None
