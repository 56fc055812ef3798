"""offrl: offline reinforcement learning experiments on datasets (CQL, discrete CQL, DQN) on torchrl."""

from __future__ import annotations

__version__ = "0.1.0"

from offrl.errors import UserError

__all__ = [
    "UserError",
    "__version__",
]
