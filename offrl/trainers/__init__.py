"""Trainers: the offline/online training loop with torchrl's trainer API, checkpoints and exact resume."""

from __future__ import annotations

from offrl.trainers.base import Evaluator, OfflineTrainer
from offrl.trainers.checkpoint import ckpt_backend, load_checkpoint, save_checkpoint
from offrl.trainers.cql import CQLTrainer
from offrl.trainers.dqn import DQNTrainer

__all__ = [
    "CQLTrainer",
    "DQNTrainer",
    "Evaluator",
    "OfflineTrainer",
    "ckpt_backend",
    "load_checkpoint",
    "save_checkpoint",
]
