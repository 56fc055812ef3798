"""Trainers: the offline/online training loop with torchrl's trainer API, checkpoints and exact resume.

:class:`Trainer` (the loop, :mod:`~offrl.trainers.loop`) is built from the update step
(:mod:`~offrl.trainers.update`), the metrics (:mod:`~offrl.trainers.metrics`) and the state
(:mod:`~offrl.trainers.state`, :mod:`~offrl.trainers.checkpoint`); :class:`CQLTrainer` and
:class:`DQNTrainer` say how their losses combine. :class:`VectorizedSeeds` (:mod:`~offrl.trainers.vectorized`)
drives several seeds' trainers as one batched model.
"""

from __future__ import annotations

from offrl.trainers.checkpoint import ckpt_backend, load_checkpoint, save_checkpoint
from offrl.trainers.cql import CQLTrainer
from offrl.trainers.dqn import DQNTrainer
from offrl.trainers.loop import EvalFn, Trainer
from offrl.trainers.metrics import NonFiniteLossError
from offrl.trainers.vectorized import VectorizedSeeds

__all__ = [
    "CQLTrainer",
    "DQNTrainer",
    "EvalFn",
    "NonFiniteLossError",
    "Trainer",
    "VectorizedSeeds",
    "ckpt_backend",
    "load_checkpoint",
    "save_checkpoint",
]
