"""Data layer: read D4RL-style / d3rlpy HDF5 files and Minari datasets, convert them once into a cached,
memmapped TED TensorDict, check their health, and serve them through torchrl replay buffers."""

from __future__ import annotations

from offrl.data.buffer import DatasetStorage, make_replay_buffer
from offrl.data.convert import CONVERTER_VERSION, cache_root
from offrl.data.dataset import DatasetInfo, OfflineDataset, load_dataset, resolve_source
from offrl.data.health import check

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
