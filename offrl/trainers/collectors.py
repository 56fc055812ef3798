"""What the trainer asks of the torchrl collector it is given: whether it collects asynchronously, and seeding
its envs with the trainer's seed."""

from __future__ import annotations

from typing import Any

__all__ = ["is_async", "seed_collector"]


def is_async(collector: Any) -> bool:
    """Whether a collector (or the collector an offrl GuardedCollector wraps) collects asynchronously."""
    from torchrl.collectors import MultiAsyncCollector  # imported on use: collectors load slowly

    inner = getattr(collector, "collector", collector)
    return isinstance(inner, MultiAsyncCollector)


def seed_collector(collector: Any | None, seed: int) -> None:
    """Seed the collector's envs with the trainer's seed, as torchrl's trainer does (``collector.set_seed``),
    then reset it: gymnasium envs seed by resetting, and without the collector's own reset its first
    transition would pair the observation it stored before with the step of the reseeded env. A collector
    built by :func:`offrl.online.make_collector` from an env factory of this seed already is (left as is)."""
    if collector is None or getattr(collector, "offrl_seed", None) == seed or not hasattr(collector, "set_seed"):
        return
    collector.set_seed(seed)
    if hasattr(collector, "reset"):
        collector.reset()
