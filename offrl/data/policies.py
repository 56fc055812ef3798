"""Scripted behaviour policies for the bundled CartPole-v1 and Pendulum-v1 datasets.

The experts are classical controllers, not learned networks, so the datasets are cheap to regenerate
bit-identically and their quality is known:

- CartPole-v1: an infinite-horizon discrete LQR on the cart-pole linearised about the upright
  equilibrium; the continuous force ``-K x`` is turned into the env's bang-bang action by its sign.
  It keeps the pole up and the cart centred for the full 500 steps.
- Pendulum-v1: energy-shaping swing-up (pump energy ``E = ½θ̇² + (3g/2l)·cos θ`` towards its value at
  the upright rest) and a discrete LQR balance near the top, using the env's own semi-implicit dynamics.

Noise makes the weaker flavours: with probability ``epsilon`` a step takes a uniformly random action
(so a CartPole expert drops the pole once the random pushes pile up), and ``noise_std`` adds Gaussian
noise to the Pendulum torque. All randomness comes from the ``numpy.random.Generator`` the caller passes,
never from global state, so a recipe's seed fixes the data exactly.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = [
    "CARTPOLE_LQR_GAIN",
    "PENDULUM_LQR_GAIN",
    "BehaviourPolicy",
    "CartPoleExpert",
    "PendulumExpert",
    "RandomPolicy",
    "dlqr",
    "make_policy",
]


class BehaviourPolicy(Protocol):
    """A policy that maps one observation to one action, drawing any randomness from ``rng``."""

    def __call__(self, observation: np.ndarray, rng: np.random.Generator) -> np.ndarray | int: ...


def dlqr(a: np.ndarray, b: np.ndarray, q: np.ndarray, r: np.ndarray, iters: int = 10_000) -> np.ndarray:
    """Gain ``K`` of the infinite-horizon discrete LQR (``u = -K x``), by iterating the Riccati equation.

    A plain fixed-point iteration is enough for these 2- and 4-state systems and avoids a scipy dependency.
    """
    p = q.copy()
    for _ in range(iters):
        k = np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
        p_next = q + a.T @ p @ (a - b @ k)
        if np.allclose(p_next, p, rtol=0.0, atol=1e-10):
            p = p_next
            break
        p = p_next
    return np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)


# ---------------------------------------------------------------------------------------------- CartPole


def _cartpole_gain() -> np.ndarray:
    """LQR gain for CartPole-v1 (gymnasium's constants and explicit-Euler step, tau = 0.02 s)."""
    gravity, masscart, masspole, half_length, tau = 9.8, 1.0, 0.1, 0.5, 0.02
    total_mass = masscart + masspole
    # Linearised about theta = 0: thetaacc = (g*theta - F/M) / (l*(4/3 - mp/M)); xacc = F/M - mp*l*thetaacc/M
    denom = half_length * (4.0 / 3.0 - masspole / total_mass)
    th_th, th_f = gravity / denom, -1.0 / (total_mass * denom)
    x_th = -masspole * half_length * th_th / total_mass
    x_f = 1.0 / total_mass - masspole * half_length * th_f / total_mass
    jac_x = np.array([[0, 1, 0, 0], [0, 0, x_th, 0], [0, 0, 0, 1], [0, 0, th_th, 0]], dtype=np.float64)
    jac_u = np.array([[0.0], [x_f], [0.0], [th_f]])
    a = np.eye(4) + tau * jac_x
    b = tau * jac_u
    # Pole angle matters most; the cart terms keep it away from the +-2.4 m edges over 500 steps.
    return dlqr(a, b, q=np.diag([1.0, 1.0, 10.0, 1.0]), r=np.array([[0.1]]))


CARTPOLE_LQR_GAIN: np.ndarray = _cartpole_gain()


class CartPoleExpert:
    """LQR balance for CartPole-v1; with probability ``epsilon`` a uniformly random action instead."""

    def __init__(self, epsilon: float = 0.0) -> None:
        self.epsilon = float(epsilon)

    def __call__(self, observation: np.ndarray, rng: np.random.Generator) -> int:
        # Draw both numbers every step so the random stream does not depend on the branch taken.
        explore, random_action = rng.random(), int(rng.integers(2))
        if explore < self.epsilon:
            return random_action
        force = -(CARTPOLE_LQR_GAIN @ observation.astype(np.float64))[0]
        return int(force > 0.0)  # action 1 pushes the cart right (positive force)


# ---------------------------------------------------------------------------------------------- Pendulum

_PENDULUM_G, _PENDULUM_DT, _PENDULUM_MAX_TORQUE = 10.0, 0.05, 2.0
_PENDULUM_W2 = 3.0 * _PENDULUM_G / 2.0  # theta_ddot = W2 * sin(theta) + 3 * u  (m = l = 1)


def _pendulum_gain() -> np.ndarray:
    """LQR gain for Pendulum-v1 about the top, on the env's semi-implicit Euler step and its own cost."""
    dt, w2 = _PENDULUM_DT, _PENDULUM_W2
    # thdot' = thdot + (w2*th + 3u) dt ; th' = th + thdot' dt
    a = np.array([[1.0 + w2 * dt * dt, dt], [w2 * dt, 1.0]])
    b = np.array([[3.0 * dt * dt], [3.0 * dt]])
    return dlqr(a, b, q=np.diag([1.0, 0.1]), r=np.array([[0.001]]))


PENDULUM_LQR_GAIN: np.ndarray = _pendulum_gain()


class PendulumExpert:
    """Energy-shaping swing-up plus LQR balance for Pendulum-v1, with optional torque noise.

    ``epsilon``: probability of a uniformly random torque on a step; ``noise_std``: Gaussian noise added
    to the controller's torque (clipped to the +-2 limit afterwards).
    """

    def __init__(self, epsilon: float = 0.0, noise_std: float = 0.0, balance_cos: float = 0.8) -> None:
        self.epsilon = float(epsilon)
        self.noise_std = float(noise_std)
        self.balance_cos = float(balance_cos)  # switch to LQR when cos(theta) exceeds this

    def control(self, observation: np.ndarray) -> float:
        """The noise-free torque."""
        cos_th, sin_th, thdot = (float(v) for v in observation)
        theta = np.arctan2(sin_th, cos_th)
        energy = 0.5 * thdot * thdot + _PENDULUM_W2 * cos_th
        target = _PENDULUM_W2  # upright at rest
        if cos_th > self.balance_cos and energy < target * 1.35:
            u = -(PENDULUM_LQR_GAIN @ np.array([theta, thdot]))[0]
        else:
            # dE/dt = 3 u thdot: push along the motion to add energy, against it to remove it.
            direction = np.sign((target - energy) * thdot)
            if direction == 0.0:
                direction = 1.0  # at rest at the bottom: start the swing somewhere
            u = _PENDULUM_MAX_TORQUE * direction
        return float(np.clip(u, -_PENDULUM_MAX_TORQUE, _PENDULUM_MAX_TORQUE))

    def __call__(self, observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        explore = rng.random()
        random_u = rng.uniform(-_PENDULUM_MAX_TORQUE, _PENDULUM_MAX_TORQUE)
        noise = rng.standard_normal()
        if explore < self.epsilon:
            u = random_u
        else:
            u = self.control(observation) + self.noise_std * noise
        return np.array([np.clip(u, -_PENDULUM_MAX_TORQUE, _PENDULUM_MAX_TORQUE)], dtype=np.float32)


class RandomPolicy:
    """Uniformly random actions from the env's action space, drawn from the caller's generator.

    CartPole-v1 and Pendulum-v1 keep their original draws (the bundled datasets depend on them); any other
    env needs its ``low``/``high`` box bounds (or ``n`` discrete actions), as :func:`make_policy` reads them.
    """

    def __init__(self, env_id: str, *, low: np.ndarray | None = None, high: np.ndarray | None = None,
                 n: int | None = None) -> None:
        self.env_id = env_id
        self.low, self.high, self.n = low, high, n

    def __call__(self, observation: np.ndarray, rng: np.random.Generator) -> np.ndarray | int:
        if self.env_id.startswith("CartPole"):
            return int(rng.integers(2))
        if self.env_id.startswith("Pendulum"):
            return rng.uniform(-_PENDULUM_MAX_TORQUE, _PENDULUM_MAX_TORQUE, size=(1,)).astype(np.float32)
        if self.n is not None:
            return int(rng.integers(self.n))
        assert self.low is not None and self.high is not None
        return rng.uniform(self.low, self.high).astype(np.float32)


def make_policy(env_id: str, kind: str, *, epsilon: float = 0.0, noise_std: float = 0.0) -> BehaviourPolicy:
    """The behaviour policy of a recipe: ``kind`` is ``"random"`` or ``"expert"`` (noisy via the knobs)."""
    if kind == "random" and env_id not in ("CartPole-v1", "Pendulum-v1"):
        return _random_for(env_id)
    if env_id not in ("CartPole-v1", "Pendulum-v1"):
        raise ValueError(f"no scripted policy for {env_id!r}; bundled envs are CartPole-v1 and Pendulum-v1")
    if kind == "random":
        return RandomPolicy(env_id)
    if kind != "expert":
        raise ValueError(f"unknown policy kind {kind!r}; use 'random' or 'expert'")
    if env_id == "CartPole-v1":
        if noise_std:
            raise ValueError("CartPole-v1 has discrete actions: use epsilon, not noise_std")
        return CartPoleExpert(epsilon)
    return PendulumExpert(epsilon, noise_std)


def _random_for(env_id: str) -> RandomPolicy:
    """A uniformly random policy over any env's action space (MuJoCo random flavours)."""
    import gymnasium as gym

    from offrl.data.catalog import make_env

    env = make_env(env_id)
    try:
        space = env.action_space
        if isinstance(space, gym.spaces.Discrete):
            return RandomPolicy(env_id, n=int(space.n))
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"{env_id}: random policies cover Box and Discrete action spaces, not {space}")
        return RandomPolicy(env_id, low=np.asarray(space.low, dtype=np.float64),
                            high=np.asarray(space.high, dtype=np.float64))
    finally:
        env.close()
