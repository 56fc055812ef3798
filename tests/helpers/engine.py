"""Shared builders for the trainer tests: bundled datasets loaded once, small networks, a list logger."""

from __future__ import annotations

from typing import Any

import torch

from offrl.algos import cql, discrete_cql, dqn
from offrl.trainers import CQLTrainer, DQNTrainer

SMALL_CQL = cql.CQLConfig(hidden_sizes=(32, 32), num_random=2, actor_lr=1e-3, critic_lr=1e-3)
SMALL_DCQL = discrete_cql.DiscreteCQLConfig(hidden_sizes=(32, 32), target_update_interval=5)
SMALL_DQN = dqn.DQNConfig(hidden_sizes=(32, 32), target_update_interval=5, annealing_num_steps=100)

# metrics that measure time, so differ between otherwise identical runs
TIMING_KEYS = ("updates_per_s",)


def stop_after(trainer: Any, stop_at: int) -> None:
    """Make ``trainer`` request a stop right after update ``stop_at`` (where a Ctrl-C lands: between
    updates, possibly in the middle of a collected batch's updates)."""
    step = trainer._train_step

    def train_step(batch: Any, phase: str) -> Any:
        yield from step(batch, phase)
        if trainer.step == stop_at:
            trainer.request_stop("test")

    trainer._train_step = train_step


class ListLogger:
    """A logger with offrl's ``log_row``: keeps every row."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, dict[str, float]]] = []

    def log_row(self, step: int, phase: str, metrics: dict[str, float]) -> None:
        self.rows.append((step, phase, dict(metrics)))

    def comparable(self) -> list[tuple[int, str, dict[str, float]]]:
        return [(s, p, {k: v for k, v in m.items() if k not in TIMING_KEYS and not k.startswith("time_")})
                for s, p, m in self.rows]


class ScalarLogger:
    """A torchrl-style logger (``log_scalar`` only)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, int]] = []

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        self.calls.append((name, value, step))


def make_trainer(kind: str, dataset: Any, *, seed: int = 0, batch_size: int = 32, build_seed: int | None = None,
                 **kwargs: Any) -> tuple[Any, Any]:
    """A trainer over ``dataset`` with small networks; returns ``(trainer, parts)``. A ``device`` builds the
    networks and the replay buffer there too."""
    build_seed = seed if build_seed is None else build_seed
    device = kwargs.get("device") or "cpu"
    if kind == "cql":
        parts = cql.build_from_dataset(kwargs.pop("cfg", SMALL_CQL), dataset, seed=build_seed, device=device)
        cls: Any = CQLTrainer
    elif kind == "dcql":
        parts = discrete_cql.build_from_dataset(kwargs.pop("cfg", SMALL_DCQL), dataset, seed=build_seed,
                                                device=device)
        cls = CQLTrainer
    else:
        parts = dqn.build_from_dataset(kwargs.pop("cfg", SMALL_DQN), dataset, seed=build_seed, device=device)
        cls = DQNTrainer
        kwargs.setdefault("greedy_module", parts.greedy_module)
    options: dict[str, Any] = dict(
        loss_module=parts.loss_module, optimizer=parts.optimizer, target_net_updater=parts.target_net_updater,
        replay_buffer=dataset.replay_buffer(batch_size, seed=seed, device=device), seed=seed, progress_bar=False,
        policy=parts.policy, **parts.trainer_kwargs,
    )
    options.update(kwargs)
    return cls(**options), parts


def weights(loss_module: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loss_module.state_dict().items()}
