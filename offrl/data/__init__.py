"""Data layer: read D4RL-style / d3rlpy HDF5 files and Minari datasets, convert them once into a cached,
memmapped TED TensorDict, check their health, and serve them through torchrl replay buffers.

Names are imported lazily (PEP 562): ``import offrl.data.references`` or a CLI error path does not pay for
importing torch and torchrl.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "CONVERTER_VERSION",
    "DatasetInfo",
    "DatasetStorage",
    "OfflineDataset",
    "cache_root",
    "check",
    "load_dataset",
    "make_replay_buffer",
    "resolve_source",
]

_WHERE = {
    "CONVERTER_VERSION": "offrl.data.convert",
    "cache_root": "offrl.data.convert",
    "DatasetInfo": "offrl.data.dataset",
    "OfflineDataset": "offrl.data.dataset",
    "load_dataset": "offrl.data.dataset",
    "resolve_source": "offrl.data.dataset",
    "DatasetStorage": "offrl.data.buffer",
    "make_replay_buffer": "offrl.data.buffer",
    "check": "offrl.data.health",
}

if TYPE_CHECKING:
    from offrl.data.buffer import DatasetStorage, make_replay_buffer
    from offrl.data.convert import CONVERTER_VERSION, cache_root
    from offrl.data.dataset import DatasetInfo, OfflineDataset, load_dataset, resolve_source
    from offrl.data.health import check


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'offrl.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
