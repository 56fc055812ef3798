"""Collectors for the online phase: torchrl envs from offrl's env resolution, sync or async torchrl
collectors, and a guard that turns env failures into a clean, checkpointed stop.

Synchronous (default): torchrl ``Collector`` — collection and updates alternate in one process, so a run
is reproducible from its seed. Asynchronous (``async_collection``): torchrl ``MultiAsyncCollector`` with
``num_workers`` processes; the workers keep stepping their envs while the trainer updates, with the policy
weights sent to them after each batch (``update_policy_weights_``). What that changes: a batch may have
been collected by weights one or more batches old (slightly off-policy), results depend on process timing
(not reproducible bit for bit), and a resumed run continues from the checkpoint's buffer and counters but
not the exact batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector, MultiAsyncCollector
from torchrl.envs import EnvBase, GymWrapper

from offrl.data import catalog
from offrl.errors import UserError

__all__ = ["EnvFactory", "GuardedCollector", "make_collector", "env_factory"]


class EnvFactory:
    """A picklable ``() -> torchrl EnvBase`` (worker processes of an async collector call it)."""

    def __init__(self, target: Any, *, seed: int | None = None, device: str = "cpu") -> None:
        self.target, self.seed, self.device = target, seed, device

    def gym(self) -> Any:
        """The gymnasium env (offrl's catalog: version drift notes and missing-extra errors)."""
        return catalog.make_env(self.target)

    def __call__(self) -> EnvBase:
        env = GymWrapper(self.gym(), categorical_action_encoding=True, device=self.device)
        if self.seed is not None:
            env.set_seed(int(self.seed))
        return env


def env_factory(dataset: Any = None, env_id: str | None = None, *, seed: int | None = None,
                device: str = "cpu") -> EnvFactory:
    """The online env: ``env_id`` if given, else the dataset's (its ``env_spec`` or the name map)."""
    if dataset is not None:
        resolution = dataset.env_resolution(env_id)
        if resolution is None:
            raise UserError(f"{dataset.name}: no env known for online fine-tuning; pass one with --env "
                            "(or --set dataset.env_id=ENV_ID)")
        target = resolution
    elif env_id is not None:
        target = catalog.resolve_env(override=env_id) or env_id
    else:
        raise UserError("online training needs an env: pass --env ENV_ID or a --dataset that names one")
    return EnvFactory(target, seed=seed, device=device)


def make_collector(factory: EnvFactory, policy: Any, *, frames_per_batch: int, async_collection: bool = False,
                   num_workers: int = 1, device: str = "cpu", init_random_frames: int = 0) -> Any:
    """A torchrl collector that never stops on its own (``total_frames=-1``: the trainer counts frames).

    ``init_random_frames``: the first frames come from uniformly random actions (torchrl's option), which
    seeds a from-scratch run's buffer."""
    if int(frames_per_batch) <= 0:
        raise UserError(f"online.frames_per_batch: must be a positive integer, got {frames_per_batch}")
    common = dict(frames_per_batch=int(frames_per_batch), total_frames=-1, device=device,
                  init_random_frames=int(init_random_frames) or None)
    if async_collection:
        if int(num_workers) <= 0:
            raise UserError(f"online.num_workers: must be a positive integer, got {num_workers}")
        # each worker builds its own env, seeded apart; MultiAsyncCollector's set_seed does that for us
        collector = MultiAsyncCollector([EnvFactory(factory.target, device=factory.device)] * int(num_workers),
                                        policy, **common)
        if factory.seed is not None:
            collector.set_seed(int(factory.seed))
        return collector
    return Collector(factory(), policy, auto_register_policy_transforms=False, **common)


def _nonfinite(data: TensorDictBase) -> str | None:
    """Name of the first observation/reward entry holding NaN or inf, else None."""
    for key in ("observation", ("next", "observation"), ("next", "reward")):
        value = data.get(key, None)
        if value is None:
            continue
        leaves = value.values(True, True) if isinstance(value, TensorDictBase) else [value]
        for leaf in leaves:
            if torch.is_floating_point(leaf) and not bool(torch.isfinite(leaf).all()):
                return key if isinstance(key, str) else "/".join(key)
    return None


class GuardedCollector:
    """Wraps a torchrl collector for the trainer: batches pass through unchanged, but an env that raises or
    returns a non-finite observation/reward ends the iteration after calling ``on_error(message)`` (the
    trainer's ``request_stop``: it checkpoints and exits cleanly). ``hooks`` run on every good batch.

    ``error`` holds the message afterwards. Attribute access falls through to the collector
    (``frames_per_batch``, ``update_policy_weights_``, ``shutdown``...).
    """

    def __init__(self, collector: Any, *, on_error: Callable[[str], None] | None = None,
                 hooks: tuple[Callable[[TensorDictBase], None], ...] = ()) -> None:
        self.collector = collector
        self.on_error = on_error
        self.hooks = list(hooks)
        self.error: str | None = None
        self.batches = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["collector"], name)

    @property
    def frames_per_batch(self) -> int:
        c = self.collector
        return int(getattr(c, "frames_per_batch", None) or c.requested_frames_per_batch)

    def _fail(self, message: str) -> None:
        self.error = message
        if self.on_error is not None:
            self.on_error(message)

    def __iter__(self) -> Iterator[TensorDictBase]:
        it = iter(self.collector)
        while True:
            try:
                data = next(it)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - any env failure stops the run cleanly
                self._fail(f"env error during online collection after {self.batches} batches: "
                           f"{type(exc).__name__}: {exc}")
                self.shutdown()
                return
            bad = _nonfinite(data)
            if bad is not None:
                self._fail(f"env error during online collection after {self.batches} batches: non-finite "
                           f"values in {bad!r} (NaN or inf from the env); the batch was discarded")
                self.shutdown()
                return
            self.batches += 1
            for hook in self.hooks:
                hook(data)
            yield data

    def shutdown(self) -> None:
        try:
            self.collector.shutdown()
        except Exception:  # noqa: BLE001 - shutting down a collector whose env already failed
            pass
