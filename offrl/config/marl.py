"""Hyperparameters of the multi-agent Q-learners (QMIX, VDN, independent Q-learning): the ``mixing``
section of a ``DQNTrainerConfig`` whose ``algo`` is ``qmix``, ``vdn`` or ``iql``.

Sources: torchrl's ``sota-implementations/multiagent/qmix_vdn.py`` and ``iql.py`` (MultiAgentMLP with
shared parameters, QMixer embedding 32, soft target updates), PyMARL's QMIX defaults (RMSprop lr 5e-4,
epsilon 1 -> 0.05 over 50k steps, scaled down here to CPU-sized runs) and OG-MARL's ``+cql`` baselines
(a per-agent CQL penalty on the local Q-values, weight ``min_q_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MARL_ALGOS", "MARL_KEYS", "MixingConfig"]

#: The multi-agent algorithms; each is ``DQNTrainer(mixing_strategy=<algo>)``.
MARL_ALGOS = ("qmix", "vdn", "iql")

#: torchrl's multi-agent key layout (per-agent entries under ``agents``), as dotted config strings: the
#: DQNTrainer keys a multi-agent run sets unless the config says otherwise.
MARL_KEYS = {
    "reward_key": "agents.reward",
    "episode_reward_key": "agents.episode_reward",
    "aggregated_reward_key": "reward",
    "aggregated_episode_reward_key": "episode_reward",
    "action_key": "agents.action",
    "observation_key": "agents.observation",
}


@dataclass(frozen=True)
class MixingConfig:
    """QMIX / VDN / IQL hyperparameters (one section for the three: they share the per-agent Q-network)."""

    hidden_sizes: tuple[int, ...] = (64, 64)  # torchrl multiagent examples (depth 2, 256 cells on VMAS)
    activation: str = "relu"  # torchrl examples use tanh; relu learned faster on simple_spread here
    share_params: bool = True  # one Q-network for all agents (parameter sharing, torchrl's default)
    mixing_embed_dim: int = 32  # QMIX hypernetwork width (Rashid et al. 2018; torchrl example)
    lr: float = 5e-4  # PyMARL QMIX
    gamma: float = 0.99
    double_q: bool = False  # bootstrap with the target Q at the online argmax (PyMARL QMIX's double_q)
    loss_function: str = "l2"  # QMixerLoss default
    target_update: str = "soft"  # torchrl example: SoftUpdate(eps=0.995)
    target_update_interval: int = 200  # gradient steps between hard copies when target_update="hard"
    tau: float = 5e-3  # 1 - 0.995 (torchrl example)
    eps_init: float = 1.0  # PyMARL epsilon_start
    eps_end: float = 0.05  # PyMARL epsilon_finish
    annealing_num_steps: int = 5_000  # frames (PyMARL 50k; CPU-sized)
    min_q_weight: float = 0.0  # per-agent CQL penalty weight (0 = off; OG-MARL's +cql baselines use 2-10)
