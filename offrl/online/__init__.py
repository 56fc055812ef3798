"""Online fine-tuning and online training through torchrl collectors (docs/contracts.md, "Online").

* :mod:`~offrl.online.replay`: offline + online replay (mixed per batch with an annealed offline fraction,
  or appended into one buffer), checkpointed with the trainer.
* :mod:`~offrl.online.transitions`: collector batches -> dataset-layout rows (episode, step, mc_return)
  and the online episode statistics (returns, normalized score, cumulative regret).
* :mod:`~offrl.online.collect`: envs, sync/async torchrl collectors, and the env-error guard.
* :mod:`~offrl.online.setup`: the ``online`` config section and :func:`build_online`.
"""

from __future__ import annotations

from offrl.online.collect import EnvFactory, GuardedCollector, env_factory, make_collector
from offrl.online.replay import AppendReplayBuffer, LinearSchedule, MixedReplayBuffer
from offrl.online.setup import (
    OnlineConfig,
    OnlineMetricsLogger,
    OnlineParts,
    build_online,
    build_parts_for_env,
    prepare_online,
)
from offrl.online.transitions import TED_KEYS, OnlineTransitions

__all__ = [
    "TED_KEYS",
    "AppendReplayBuffer",
    "EnvFactory",
    "GuardedCollector",
    "LinearSchedule",
    "MixedReplayBuffer",
    "OnlineConfig",
    "OnlineMetricsLogger",
    "OnlineParts",
    "OnlineTransitions",
    "build_online",
    "build_parts_for_env",
    "env_factory",
    "make_collector",
    "prepare_online",
]
