"""The ``evaluator(policy, step) -> dict`` a trainer calls at every evaluation.

One call = the env evaluation (``eval_*`` columns) plus the off-policy diagnostics (``diag_*`` columns),
ready to be merged into the metrics row of that step. The same episode seeds are used at every step
(common random numbers), so differences between steps are the policy's, not the initial states'.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase

from offrl.evaluation.diagnostics import (
    Critic,
    critic_from_loss,
    eval_diagnostics,
    heldout_split,
    offline_diagnostics,
)
from offrl.evaluation.rollout import EvalResult, evaluate

__all__ = ["Evaluator"]


class Evaluator:
    """Evaluate a policy in the dataset's env and compute the critic diagnostics.

    ``dataset``: an OfflineDataset (env, references, ``data`` with ``mc_return``/``step``, ``info.gamma``).
    ``critic``: a torchrl loss module (CQLLoss / DiscreteCQLLoss / DQNLoss), a :class:`Critic`, or None
    (no ``diag_*`` columns). ``heldout``: the TED rows for the TD error; default: a seeded split of whole
    episodes (:func:`heldout_split`). ``env``: an env id overriding the dataset's (``--env``).
    ``episodes=0`` skips the env and returns only the diagnostics. ``final_episodes``: episodes of the
    run's last evaluation (:meth:`final`; at least ``episodes``; its first ``episodes`` seeds are the
    periodic ones), so the score a run ends with has a usable interval.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        critic: Any = None,
        episodes: int = 10,
        seed: int = 0,
        env: Any = None,
        device: str | torch.device = "cpu",
        gamma: float | None = None,
        heldout: TensorDictBase | None = None,
        ref: Any = None,
        final_episodes: int | None = None,
        observation_scaler: Any = None,
        reward_scaler: Any = None,
    ) -> None:
        self.dataset = dataset
        self.critic: Critic | None = None
        if critic is not None:  # observation_scaler: the one the run's networks were trained with
            self.critic = critic if isinstance(critic, Critic) else critic_from_loss(critic, observation_scaler)
        # a critic trained on scaled rewards (offrl.data.reward_scaling): the TD error and Q columns read in its
        # units (held-out rewards scaled), V(s0) is mapped back to the env's units beside the returns
        self.reward_scaler = reward_scaler if reward_scaler is not None else getattr(critic, "reward_scaler", None)
        self.episodes, self.seed, self.device = episodes, seed, device
        self.final_episodes = max(episodes, final_episodes or 0) if episodes > 0 else 0
        self.env = env if env is not None else dataset
        self.ref = ref if ref is not None else (dataset if env is not None else None)
        info = getattr(dataset, "info", None)
        self.gamma = float(gamma if gamma is not None else getattr(info, "gamma", None) or 0.99)
        self.last_result: EvalResult | None = None
        self.last_step: int | None = None  # the step of last_result's evaluation
        self._heldout = heldout
        self._s0: TensorDictBase | None = None
        self._s0_steps: Any = None  # with a reward scaler: each s0 row's steps to termination (inf: truncated)

    def _diag_data(self) -> tuple[TensorDictBase, TensorDictBase]:
        if self._heldout is None or self._s0 is None:
            data = self.dataset.data
            if self._heldout is None:
                _, idx = heldout_split(data, seed=self.seed)
                self._heldout = data[idx].to(self.device)
            s0_rows = torch.nonzero(data["step"].reshape(-1) == 0).reshape(-1)[:4096]
            self._s0 = data[s0_rows].to(self.device)
            if self.reward_scaler is not None:
                self._heldout = self.reward_scaler.scale_batch(self._heldout)
                self._s0_steps = _steps_to_termination(data, self._s0)
        return self._heldout, self._s0

    def final(self, policy: Any, step: int) -> dict[str, float]:
        """The run's last evaluation: ``final_episodes`` episodes instead of ``episodes``."""
        return self(policy, step, episodes=self.final_episodes)

    def __call__(self, policy: Any, step: int, *, episodes: int | None = None) -> dict[str, float]:
        episodes = self.episodes if episodes is None else episodes
        row: dict[str, float] = {}
        if self.critic is not None:
            heldout, s0 = self._diag_data()
            row.update(offline_diagnostics(self.critic, heldout, gamma=self.gamma, s0=s0))
            if self.reward_scaler is not None and "diag_v_s0" in row:
                row["diag_v_s0"] = self.reward_scaler.unscale_value(row["diag_v_s0"], self._s0_steps, self.gamma)
        if episodes > 0:
            result = evaluate(
                policy, self.env, episodes=episodes, seed=self.seed, device=self.device, ref=self.ref, gamma=self.gamma
            )
            self.last_result, self.last_step = result, int(step)
            row.update(result.metrics())
            if self.critic is not None:
                row.update(eval_diagnostics(self.critic, result))
                if self.reward_scaler is not None:
                    steps = np.where(result.terminated, result.lengths, np.inf)
                    row["diag_v_s0_eval"] = self.reward_scaler.unscale_value(row["diag_v_s0_eval"], steps, self.gamma)
        return row


def _steps_to_termination(data: TensorDictBase, s0: TensorDictBase) -> np.ndarray:
    """For each initial-state row of ``s0``: its episode's length when the episode ends in a termination,
    ``inf`` when it was truncated (the critic bootstraps past the data's end there)."""
    episode = data["episode"].reshape(-1).long()
    ids = episode - episode.min()
    lengths = torch.bincount(ids)
    terminated = torch.zeros(len(lengths), dtype=torch.long).index_add_(
        0, ids, data["next", "terminated"].reshape(-1).long()) > 0
    rows = s0["episode"].reshape(-1).long().cpu() - episode.min()
    return np.where(terminated[rows].numpy(), lengths[rows].numpy().astype(np.float64), np.inf)
