"""The trainer's metrics: per-step batch statistics, their accumulation into one logged row (means since
the last row, one device sync per row), throughput and phase timings, and the Q statistics the CQL and
DQN trainers share."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from tensordict import TensorDictBase

from offrl.errors import UserError

__all__ = ["PHASES", "NonFiniteLossError", "TrainerMetrics", "q_stats"]

PHASES = ("sample", "forward", "backward", "optim", "target", "eval", "log")


def q_stats(q: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean, std, max and min of the Q-values of the dataset actions (``q_data_*``)."""
    q = q.detach().float()
    return {"q_data_mean": q.mean(), "q_data_std": q.std(), "q_data_max": q.max(), "q_data_min": q.min()}


class NonFiniteLossError(UserError):
    """A loss became NaN or inf: the run stops without checkpointing that state (one line, exit 2)."""


class TrainerMetrics:
    """Metrics of a :class:`~offrl.trainers.Trainer` (a mixin: ``self`` is the trainer)."""

    @property
    def reward_log_key(self) -> Any:
        """The reward ``reward_mean`` / ``reward_std`` describe (DQNTrainer: the team reward when mixing)."""
        return self.reward_key

    def _batch_stats(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """The sampled batch's reward / action / observation statistics (torchrl's metric hooks: none without
        ``enable_logging``)."""
        stats: dict[str, torch.Tensor] = {}
        if not self.enable_logging:
            return stats
        pairs = [(self.log_rewards, "reward", ("next", self.reward_log_key)),
                 (self.log_actions, "action", self.action_key),
                 (self.log_observations, "observation", self.observation_key)]
        for enabled, name, key in pairs:
            value = batch.get(key, None) if enabled else None
            if isinstance(value, torch.Tensor):
                std, mean = torch.std_mean(value.detach().float())  # one kernel for both
                stats[f"{name}_mean"] = mean
                stats[f"{name}_std"] = std
        return stats


    def _row_stats(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """Statistics too costly for every step, computed once per logged row on the last batch."""
        return {}

    def _accumulate(self, metrics: dict[str, torch.Tensor]) -> None:
        """Add this step's metrics to the row's sums: one stacked add when the metric set repeats (the
        usual case; one op instead of one per metric), per key otherwise."""
        keys = tuple(metrics)
        values = list(metrics.values())
        stackable = all(v.ndim == 0 and v.dtype == values[0].dtype for v in values)
        if stackable and self._acc_vec is not None and keys == self._acc_keys:
            self._acc_vec.add_(torch.stack(values))
        elif stackable and self._acc_n == 0 and not self._acc:
            self._acc_keys, self._acc_vec = keys, torch.stack(values)
        else:
            acc = self._acc_sums()
            for key, value in metrics.items():
                acc[key] = acc[key] + value if key in acc else value.clone()
            self._acc, self._acc_keys, self._acc_vec = acc, None, None
        self._acc_n += 1

    def _acc_sums(self) -> dict[str, torch.Tensor]:
        """The row's sums so far, per metric."""
        if self._acc_vec is None:
            return dict(self._acc)
        return {**self._acc, **dict(zip(self._acc_keys, self._acc_vec.unbind(0), strict=True))}

    def _flush_metrics(self) -> dict[str, float]:
        """Means since the last row (one device sync here, none per step), timings, throughput."""
        n = max(self._acc_n, 1)
        row = {key: float(value) / n for key, value in self._acc.items()}
        if self._acc_vec is not None:  # one device sync for the whole stacked row
            row.update({key: value / n for key, value in zip(self._acc_keys, self._acc_vec.tolist(), strict=True)})
        if self._last_batch is not None:
            row.update({key: float(value) for key, value in self._row_stats(self._last_batch).items()})
        now = time.perf_counter()
        steps = self._step - self._step_row
        row["updates_per_s"] = steps / max(now - self._t_row - self._eval_seconds_row, 1e-9)
        self._eval_seconds_row = 0.0
        if self.log_timings:
            for phase in PHASES:
                row[f"time_{phase}"] = self._timings[phase] / max(steps, 1)
            self._timings = dict.fromkeys(PHASES, 0.0)
        if self.collector is not None and self._frames:
            row["frames"] = float(self._frames)
            row.update(self._online_stats)
        if self.greedy_module is not None:
            row["epsilon"] = float(self.greedy_module.eps)
        self._acc, self._acc_n, self._acc_keys, self._acc_vec = {}, 0, None, None
        self._t_row, self._step_row = now, self._step
        return row

    def _collect_stats(self, data: TensorDictBase) -> dict[str, float]:
        """A collected batch's metrics (torchrl's metric hooks, none without ``enable_logging``): the share of
        its steps that ended an episode (``done_percentage``) and, with ``log_rewards``, the mean return of
        the episodes that ended in it (``episode_reward_mean``, needs a RewardSum transform)."""
        done = data.get(("next", self.done_key), None)
        if not self.enable_logging or done is None:
            return {}
        stats = {"done_percentage": float(done.float().mean())}
        returns = self._episode_returns(data, done) if self.log_rewards and bool(done.any()) else None
        if returns is not None:
            stats["episode_reward_mean"] = float(returns.float().mean())
        return stats

    def _episode_returns(self, data: TensorDictBase, done: torch.Tensor) -> torch.Tensor | None:
        """The returns of the episodes that ended in ``data`` (None without an episode reward key)."""
        ep_reward = data.get(("next", self.episode_reward_key), None)
        return None if ep_reward is None else ep_reward[done]

    def _check_pending(self) -> None:
        """:meth:`_check_finite` on the loss sums since the last row (one device sync)."""
        if self._acc_n:
            self._check_finite({k: float(v) for k, v in self._acc_sums().items() if k.startswith("loss")})

    def _check_finite(self, values: dict[str, float], raise_: bool = True) -> bool:
        """Raise :class:`NonFiniteLossError` when a loss in ``values`` (a row, or the sums since it) is NaN/inf
        (with ``raise_=False``: return False instead)."""
        bad = next((k for k, v in values.items() if k.startswith("loss") and not math.isfinite(v)), None)
        if bad is None:
            self._finite_step = self._step
            return True
        if not raise_:
            return False
        if self.save_trainer_file is not None and self.save_trainer_file.exists():
            kept = f"{self.save_trainer_file} holds the last checkpoint before it"
        else:
            kept = "no checkpoint was written before it"
        self._stop_reason = "diverged"
        raise NonFiniteLossError(
            f"{bad} became {values[bad]} between step {self._finite_step} and step {self._step}; the run stopped "
            f"and {kept}: lower the learning rates or scale the rewards (a config change needs --resume --force)")
