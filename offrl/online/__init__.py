"""Online fine-tuning and online training through torchrl collectors (see docs/contracts.md, Online)."""

from __future__ import annotations

from offrl.online.collect import EnvFactory, GuardedCollector, env_factory, make_collector
from offrl.online.replay import AppendReplayBuffer, LinearSchedule, MixedReplayBuffer
from offrl.online.transitions import TED_KEYS, OnlineTransitions

__all__ = [
    "TED_KEYS",
    "AppendReplayBuffer",
    "EnvFactory",
    "GuardedCollector",
    "LinearSchedule",
    "MixedReplayBuffer",
    "OnlineTransitions",
    "env_factory",
    "make_collector",
]
