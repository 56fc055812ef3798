"""A small deterministic rollout evaluator for the trainers' ``evaluator=`` hook.

``offrl.evaluation.evaluate`` is the full evaluation (normalized scores, seeds, references); this adapter
runs a policy in a gymnasium env with no torchrl env wrapper, so trainer tests and quick runs can evaluate
with nothing but an env id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

__all__ = ["gym_evaluator"]


def gym_evaluator(env: str | Callable[[], gym.Env], *, episodes: int = 5, seed: int = 0,
                  device: torch.device | str = "cpu") -> Callable[[Any, int], dict[str, float]]:
    """An ``evaluator(policy, step)`` that plays ``episodes`` episodes (seeds ``seed + i``) and returns
    ``eval_return_mean``, ``eval_return_std`` and ``eval_length_mean``.

    ``policy`` reads ``observation`` and writes ``action`` (an int64 index for discrete envs); the trainer
    calls it under deterministic exploration and ``torch.no_grad``.
    """
    make = (lambda: gym.make(env)) if isinstance(env, str) else env

    def evaluator(policy: Any, step: int) -> dict[str, float]:
        returns, lengths = [], []
        e = make()
        try:
            discrete = isinstance(e.action_space, gym.spaces.Discrete)
            for i in range(episodes):
                obs, _ = e.reset(seed=seed + i)
                total, length, done = 0.0, 0, False
                while not done:
                    td = TensorDict({"observation": torch.as_tensor(obs, dtype=torch.float32, device=device)}, [])
                    action = policy(td).get("action").detach().cpu()
                    act = int(action.reshape(-1)[0]) if discrete else action.numpy().reshape(e.action_space.shape)
                    obs, reward, terminated, truncated, _ = e.step(act)
                    total += float(reward)
                    length += 1
                    done = terminated or truncated
                returns.append(total)
                lengths.append(length)
        finally:
            e.close()
        return {"eval_return_mean": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
                "eval_length_mean": float(np.mean(lengths))}

    return evaluator
