"""Hyperparameters of each algorithm: frozen dataclasses, one per algorithm, with the source of every default.

They live in the config stage (no torch import) so a config can be composed and checked before anything
heavy loads; :mod:`offrl.algos` builds networks and losses from them.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How a Gaussian actor maps its raw std outputs to a std (``CQLConfig.actor_std``; docs/cql.md).
ACTOR_STDS = ("softplus", "exp")
#: The action the TD target bootstraps from at s': a policy sample (torchrl, CORL) or the mean (d3rlpy).
BACKUP_ACTIONS = ("sample", "mean")
#: When the actor and temperature step relative to the critics (``CQLConfig.update_order``; docs/cql.md).
UPDATE_ORDERS = ("joint", "critic_first")

__all__ = ["CQLConfig", "DQNConfig", "DiscreteCQLConfig"]


@dataclass(frozen=True)
class CQLConfig:
    """Continuous CQL hyperparameters: the defaults a dataset without a bundled config gets; sources in the
    comments. They are d3rlpy's ``CQLConfig`` defaults where CORL's are tuned for 1M steps (3x256 nets, actor
    lr 3e-5, alpha 10): those learn little in the tens of thousands of steps a CPU affords (docs/cql.md).

    CORL = tinkoff-ai/CORL ``algorithms/offline/cql.py``; paper = Kumar et al. 2020, appendix F;
    d3rlpy = d3rlpy 2.8 ``CQLConfig``.
    """

    hidden_sizes: tuple[int, ...] = (256, 256)  # d3rlpy VectorEncoderFactory (CORL: 3 x 256 for 1M steps)
    activation: str = "relu"  # paper / CORL
    orthogonal_init: bool = False  # torch's default init, as d3rlpy and the authors (CORL: True); reports/ablations/
    actor_lr: float = 1e-4  # d3rlpy actor_learning_rate; the paper's text (CORL and the authors' code: 3e-5)
    critic_lr: float = 3e-4  # CORL qf_lr; paper
    alpha_lr: float = 3e-4  # entropy temperature lr (torchrl sota-implementations/cql)
    alpha_prime_lr: float = 3e-4  # Lagrange multiplier lr (CORL uses qf_lr)
    gamma: float = 0.99  # CORL discount
    tau: float = 5e-3  # CORL soft_target_update_rate (SoftUpdate every step)
    alpha_init: float = 1.0  # SAC/CQL initial temperature
    fixed_alpha: bool = False  # False = automatic entropy tuning (CORL use_automatic_entropy_tuning)
    target_entropy: float | None = None  # None = -action_dim (SAC heuristic)
    min_q_weight: float = 5.0  # CQL alpha; d3rlpy conservative_weight (paper: 5 or 10 on gym; CORL 10)
    temperature: float = 1.0  # CQL(H) log-sum-exp temperature; CORL cql_temp
    num_random: int = 10  # actions sampled per state for the penalty; CORL cql_n_actions, paper
    with_lagrange: bool = False  # CORL cql_lagrange (paper uses it on AntMaze/Adroit)
    target_action_gap: float = 5.0  # Lagrange threshold tau; paper 5.0 (AntMaze), 10.0 (Kitchen)
    max_q_backup: bool = False  # CORL cql_max_target_backup
    deterministic_backup: bool = True  # no entropy in the target; CORL backup_entropy=False
    backup_action: str = "sample"  # "sample": a' ~ pi(s') (CORL, torchrl); "mean": tanh(mu(s')) (d3rlpy)
    # TD3+BC regulariser on the actor's mean (Fujimoto & Gu 2021). None = auto from the dataset's coverage
    # (offrl.data.coverage): 5.0 (offrl.algos.cql.NARROW_BC_WEIGHT) on narrow (expert-like) data, else 0; docs/cql.md
    actor_bc_weight: float | None = None
    bc_steps: int = 0  # behaviour-cloning warm start (paper policy_eval_start; CORL bc_steps, default 0)
    loss_function: str = "l2"  # MSE TD loss as in CORL (torchrl's default is smooth_l1)
    scale_lb: float = 1e-4  # lower bound of the actor's std
    # actor std from its raw output: "softplus" (torchrl's biased_softplus_1.0, floor 0.01) or "exp":
    # exp(clamp(raw, -20, 2)) (d3rlpy NormalPolicy, the authors' rlkit policy); docs/cql.md
    actor_std: str = "softplus"
    # "joint": every loss from the same parameters, one backward (the authors, CORL, torchrl); "critic_first":
    # the critics step, then the actor and temperature losses are taken against the updated critics (d3rlpy)
    update_order: str = "joint"
    fused: bool = True  # FusedOfflineCQLLoss: the same loss within 1e-5 (tests/algos/test_fused_losses.py), ~1.5-2x faster
    # "none" (d3rlpy's CQLConfig default, the authors' gym code), "standard" (CORL's state normalization) or
    # "min_max": fitted on the dataset's observations (offrl.data.scaling; docs/cql.md)
    observation_scaler: str = "none"
    # rewards -> reward_scale * T(r) + reward_bias, T = "none" | "standard" | "min_max" | "return_based" fitted on
    # the dataset (d3rlpy's reward scalers; reward_scale/bias: CORL's and the authors'); offrl.data.reward_scaling
    reward_scaler: str = "none"
    reward_scale: float = 1.0
    reward_bias: float = 0.0


@dataclass(frozen=True)
class DiscreteCQLConfig:
    """Discrete CQL hyperparameters. Sources: d3rlpy ``DiscreteCQLConfig`` (alpha=1, lr 6.25e-5 for Atari,
    target_update_interval=8000), the CQL paper's Atari setup (App. F: alpha 1.0 or 4.0)."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    dueling: bool = False  # dueling head (Wang et al. 2016)
    lr: float = 3e-4  # Adam; d3rlpy's Atari default is 6.25e-5, 3e-4 suits low-dimensional tasks
    gamma: float = 0.99
    min_q_weight: float = 1.0  # CQL alpha; d3rlpy DiscreteCQLConfig.alpha, paper App. F
    loss_function: str = "l2"  # torchrl default (d3rlpy uses Huber)
    target_update: str = "hard"  # "hard" (d3rlpy, DQN) or "soft"
    target_update_interval: int = 1000  # gradient steps between hard copies (d3rlpy: 8000 for Atari)
    tau: float = 5e-3  # soft update rate when target_update="soft"
    fused: bool = True  # FusedWeightedDiscreteCQLLoss: the same loss within 1e-5, fewer kernels per step
    observation_scaler: str = "none"  # d3rlpy's default; "standard" or "min_max" (offrl.data.scaling)
    reward_scaler: str = "none"  # as cql.reward_scaler (offrl.data.reward_scaling)
    reward_scale: float = 1.0
    reward_bias: float = 0.0


@dataclass(frozen=True)
class DQNConfig:
    """DQN hyperparameters. Sources: CleanRL ``dqn.py`` (lr 2.5e-4, target every 500 steps, eps 1 -> 0.05,
    gamma 0.99 on CartPole) and torchrl's DQNTrainer example (HardUpdate)."""

    hidden_sizes: tuple[int, ...] = (120, 84)  # CleanRL dqn.py
    activation: str = "relu"
    dueling: bool = False
    double_dqn: bool = True  # van Hasselt et al. 2016
    lr: float = 2.5e-4  # CleanRL
    gamma: float = 0.99
    loss_function: str = "l2"  # CleanRL uses MSE
    target_update: str = "hard"
    target_update_interval: int = 500  # CleanRL target_network_frequency (in gradient steps here)
    tau: float = 5e-3
    eps_init: float = 1.0  # CleanRL start_e
    eps_end: float = 0.05  # CleanRL end_e
    annealing_num_steps: int = 10_000  # frames over which epsilon decays (CleanRL: 0.5 * total steps)
    fused: bool = True  # FusedDQNLoss: the same loss within 1e-5 (tests/algos/test_fused_losses.py)
    observation_scaler: str = "none"  # CleanRL: none; "standard" or "min_max" (offrl.data.scaling)
    reward_scaler: str = "none"  # as cql.reward_scaler (offrl.data.reward_scaling)
    reward_scale: float = 1.0
    reward_bias: float = 0.0


#: Where each algorithm's general defaults come from (the per-key sources are comments in offrl/config/algos.py).
DEFAULT_SOURCES = {
    "cql": "d3rlpy 2.8 CQLConfig's values (2x256 nets, actor lr 1e-4, critic lr 3e-4, CQL alpha 5, torch's default "
           "init), for budgets "
           "of tens of thousands of steps (CORL's 3x256 / actor lr 3e-5 / alpha 10 are tuned for 1M steps)",
    "discrete-cql": "d3rlpy DiscreteCQLConfig (alpha 1), lr 3e-4 for low-dimensional states",
    "dqn": "CleanRL dqn.py (120x84 nets, lr 2.5e-4), double DQN",
}
