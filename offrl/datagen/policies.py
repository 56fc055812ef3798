"""Behaviour policies: scripted controllers for the bundled CartPole-v1 and Pendulum-v1 datasets, uniformly
random actions for any env, and trained actors (:class:`ActorPolicy`, read from the actor-only checkpoints
under ``datasets/behaviour/``) for the MuJoCo medium / medium-replay / expert recipes.

The bundled experts are classical controllers, not learned networks, so the datasets are cheap to
regenerate bit-identically and their quality is known:

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

import functools
from pathlib import Path
from typing import Protocol

import gymnasium as gym
import numpy as np

from offrl.config.algos import ACTOR_STDS
from offrl.data.envs import make_env

__all__ = [
    "ACTION_GRID",
    "ACTOR_ARITHMETIC",
    "ACTOR_FORMAT",
    "ActorPolicy",
    "CARTPOLE_LQR_GAIN",
    "PENDULUM_LQR_GAIN",
    "BehaviourPolicy",
    "CartPoleExpert",
    "PendulumExpert",
    "RandomPolicy",
    "actor_from_trainer_checkpoint",
    "dlqr",
    "fit_problem",
    "load_actor",
    "make_policy",
    "save_actor",
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


@functools.lru_cache(maxsize=32)
def _random_for(env_id: str) -> RandomPolicy:
    """A uniformly random policy over any env's action space (MuJoCo random flavours). Cached: reading the
    action space builds the env (for MuJoCo, compiles its model), and recipes ask for it once per episode;
    the policy itself holds only the bounds and draws from the caller's generator."""
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


# ------------------------------------------------------------------------------- learned (MuJoCo) actors

ACTOR_FORMAT = "offrl-actor-v1"


class ActorPolicy:
    """A trained offrl CQL/SAC actor as a numpy behaviour policy (the MuJoCo recipes' medium / expert /
    medium-replay behaviour), read from an actor-only checkpoint (:func:`load_actor`).

    The network is the one :func:`offrl.algos.cql.build` makes: an MLP ``observation -> (loc, scale_param)``,
    ``scale = softplus(scale_param + inv_softplus(1 - 0.01)) + 0.01`` (tensordict's ``biased_softplus_1.0``,
    ``actor_std="softplus"``) or ``exp(clip(scale_param, -20, 2))`` (``actor_std="exp"``, d3rlpy's), floored at
    ``scale_lb``, a TanhNormal on ``[-1, 1]``, and the box rescaling of ``ActionRescale``.

    - ``sample=False``: the deterministic action ``tanh(loc)`` (what ``offrl eval`` runs);
      ``sample=True``: ``tanh(loc + scale * N(0, 1))``, the policy's own exploration (what its training
      run collected; D4RL's SAC datasets sample their policies too).
    - ``noise_std``: Gaussian noise of that many half action ranges added after the squashing, then clipped
      to the box (``offrl datasets make --policy --noise``); ``epsilon``: probability of a uniformly random
      action on a step.

    Every step draws the same numbers whatever the branch taken, from the caller's generator only.
    Computed in float64 numpy (no torch), each squashed action rounded to a multiple of
    :data:`ACTION_GRID`, so that a rollout takes the same actions on every CPU (datasets/README.md).
    """

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], *, low: np.ndarray, high: np.ndarray,
                 activation: str = "relu", scale_lb: float = 1e-4, sample: bool = False, noise_std: float = 0.0,
                 epsilon: float = 0.0, meta: dict | None = None, actor_std: str = "softplus") -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; use one of {sorted(_ACTIVATIONS)}")
        if actor_std not in ACTOR_STDS:
            raise ValueError(f"unknown actor_std {actor_std!r}; use one of {', '.join(ACTOR_STDS)}")
        self.actor_std = actor_std
        self.layers = [(np.asarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32)) for w, b in layers]
        self.low = np.asarray(low, dtype=np.float32).reshape(-1)
        self.high = np.asarray(high, dtype=np.float32).reshape(-1)
        self.activation = activation
        self.scale_lb = float(scale_lb)
        self.sample, self.noise_std, self.epsilon = bool(sample), float(noise_std), float(epsilon)
        self.meta = dict(meta or {})
        self.obs_dim = self.layers[0][0].shape[1]
        self.act_dim = self.layers[-1][0].shape[0] // 2
        self._center = (self.high + self.low) / 2
        self._layers64 = [(w.astype(np.float64), b.astype(np.float64)) for w, b in self.layers]
        self._half = (self.high - self.low) / 2

    def with_noise(self, *, sample: bool | None = None, noise_std: float | None = None,
                   epsilon: float | None = None) -> ActorPolicy:
        """The same network with other exploration settings."""
        return ActorPolicy(self.layers, low=self.low, high=self.high, activation=self.activation,
                           scale_lb=self.scale_lb, actor_std=self.actor_std,
                           sample=self.sample if sample is None else sample,
                           noise_std=self.noise_std if noise_std is None else noise_std,
                           epsilon=self.epsilon if epsilon is None else epsilon, meta=self.meta)

    def dist_params(self, observation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(loc, scale)`` of the pre-tanh Normal, float64, for one observation or a batch."""
        h = np.asarray(observation, dtype=np.float64)
        act = _ACTIVATIONS[self.activation]
        for i, (w, b) in enumerate(self._layers64):
            h = h @ w.T + b
            if i < len(self._layers64) - 1:
                h = act(h)
        loc, scale_param = h[..., : self.act_dim], h[..., self.act_dim:]
        if self.actor_std == "exp":
            scale = np.exp(np.clip(scale_param, -20.0, 2.0))
        else:
            scale = np.logaddexp(0.0, scale_param + _SOFTPLUS_BIAS) + 0.01
        return loc, np.maximum(scale, self.scale_lb)

    def unit_action(self, observation: np.ndarray, eps: np.ndarray | None = None) -> np.ndarray:
        """The squashed action in ``[-1, 1]``: ``tanh(loc)`` or, with ``eps``, ``tanh(loc + scale * eps)``,
        rounded to a multiple of :data:`ACTION_GRID` (float64)."""
        loc, scale = self.dist_params(observation)
        unit = np.tanh(loc if eps is None else loc + scale * np.asarray(eps, dtype=np.float64))
        return np.round(unit / ACTION_GRID) * ACTION_GRID

    def act(self, observation: np.ndarray) -> np.ndarray:
        """The deterministic action in env units."""
        return (self._center + self._half * self.unit_action(observation)).astype(np.float32)

    def __call__(self, observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        explore = rng.random()
        random_action = rng.uniform(self.low, self.high)
        eps = rng.standard_normal(self.act_dim)
        noise = rng.standard_normal(self.act_dim)
        if explore < self.epsilon:
            action = random_action
        else:
            unit = self.unit_action(observation, eps if self.sample else None).astype(np.float64)
            action = self._center + self._half * (unit + self.noise_std * noise)
        return np.clip(action, self.low, self.high).astype(np.float32)


_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
}
# tensordict's biased_softplus(1.0, min_val=0.01): softplus(x + inv_softplus(1.0 - 0.01)) + 0.01
_SOFTPLUS_BIAS = float(np.log(np.expm1(1.0 - 0.01)))

#: A trained actor's squashed actions are rounded to multiples of this (2^-16): float64 results still differ in
#: their last bits between CPUs (OpenBLAS and numpy pick kernels by ISA; up to 2e-14 on an action), which
#: MuJoCo would amplify into other episodes; rounded, they agree on every CPU (datasets/README.md).
ACTION_GRID = 2.0 ** -16
#: How a trained actor's actions are computed, recorded in the metadata of the datasets it generates.
ACTOR_ARITHMETIC = "float64, squashed actions rounded to multiples of 2^-16"


def load_actor(path: str | Path, *, what: str = "behaviour checkpoint") -> ActorPolicy:
    """Read an actor-only checkpoint (``.npz`` written by :func:`save_actor`); anything wrong with it is a
    one-line :class:`~offrl.errors.UserError` naming the file."""
    import json
    import zipfile

    from offrl.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found; restore it (git checkout datasets/behaviour) or pass an "
                        "existing file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable {what} ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                        "restore the file (git checkout datasets/behaviour) or re-export it") from None
    fmt = str(arrays.get("format", ""))
    if fmt != ACTOR_FORMAT:
        raise UserError(f"{path}: not an offrl actor checkpoint (format {fmt or 'missing'!r}, expected "
                        f"{ACTOR_FORMAT!r}); pass a file written by 'offrl datasets export-actor'")
    try:
        n = int(arrays["layers"])
        layers = [(arrays[f"w{i}"], arrays[f"b{i}"]) for i in range(n)]
        meta = json.loads(str(arrays["meta"]))
        low, high = arrays["action_low"], arrays["action_high"]
        activation = str(arrays["activation"])
        scale_lb = float(arrays["scale_lb"])
        actor_std = str(arrays["actor_std"]) if "actor_std" in arrays else "softplus"  # older files: no entry
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: damaged actor checkpoint (missing or bad entry {exc}); restore or re-export "
                        "it") from None
    ok = n >= 1 and all(w.ndim == 2 and b.shape == (w.shape[0],) for w, b in layers) and all(
        layers[i + 1][0].shape[1] == layers[i][0].shape[0] for i in range(n - 1))
    ok = ok and layers[-1][0].shape[0] == 2 * low.size == 2 * high.size
    if not ok or not all(np.isfinite(w).all() and np.isfinite(b).all() for w, b in layers):
        raise UserError(f"{path}: damaged actor checkpoint (inconsistent or non-finite weights); restore or "
                        "re-export it")
    try:
        return ActorPolicy(layers, low=low, high=high, activation=activation, scale_lb=scale_lb, meta=meta,
                           actor_std=actor_std)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None


def fit_problem(actor: ActorPolicy, env: gym.Env) -> str | None:
    """Why ``actor`` cannot drive ``env`` (observation / action sizes, action bounds), or None."""
    obs_space, act_space = env.observation_space, env.action_space
    env_name = env.spec.id if env.spec is not None else type(env).__name__
    if not isinstance(act_space, gym.spaces.Box) or obs_space.shape != (actor.obs_dim,) or (
            act_space.shape != (actor.act_dim,)):
        return (f"actor for {actor.obs_dim}-dim observations and {actor.act_dim}-dim actions does not fit "
                f"{env_name} (observations {obs_space.shape}, actions {act_space})")
    if not (np.allclose(actor.low, act_space.low) and np.allclose(actor.high, act_space.high)):
        return f"actor's action bounds differ from {env_name}'s"
    return None


def save_actor(path: str | Path, policy: ActorPolicy) -> None:
    """Write ``policy``'s network as an actor-only checkpoint (atomic; ``meta`` stored as JSON)."""
    import io
    import json

    from offrl.fsio import write_bytes_atomic

    arrays: dict[str, np.ndarray] = {
        "format": np.array(ACTOR_FORMAT), "layers": np.array(len(policy.layers)),
        "activation": np.array(policy.activation), "scale_lb": np.array(policy.scale_lb),
        "actor_std": np.array(policy.actor_std),
        "action_low": policy.low, "action_high": policy.high,
        "meta": np.array(json.dumps(policy.meta, sort_keys=True)),
    }
    for i, (w, b) in enumerate(policy.layers):
        arrays[f"w{i}"], arrays[f"b{i}"] = w, b
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def actor_from_trainer_checkpoint(checkpoint: str | Path, *, low: np.ndarray | None = None,
                                  high: np.ndarray | None = None, activation: str = "relu",
                                  scale_lb: float = 1e-4, meta: dict | None = None,
                                  actor_std: str = "softplus") -> ActorPolicy:
    """The actor of an offrl CQL trainer checkpoint (``checkpoints/latest.pt`` / ``step_N.pt``): the
    ``actor_network_params`` linear layers, and the action box from the loss's ``action_center`` /
    ``action_half`` unless ``low``/``high`` are given."""
    import re

    from offrl.errors import UserError
    from offrl.trainers.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    loss = state.get("loss_module") if isinstance(state, dict) else None
    if not loss or state.get("algo") != "cql":
        raise UserError(f"{checkpoint}: not an offrl continuous-CQL trainer checkpoint (algo "
                        f"{state.get('algo') if isinstance(state, dict) else None!r}); export an actor from a "
                        "'--algo cql' run")
    found: dict[int, dict[str, np.ndarray]] = {}
    for key, value in loss.items():
        m = re.fullmatch(r"actor_network_params\..*?(\d+)\.(weight|bias)", key)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = value.detach().cpu().numpy()
    layers = [(found[i]["weight"], found[i]["bias"]) for i in sorted(found)]
    if not layers:
        raise UserError(f"{checkpoint}: no actor weights in the checkpoint's loss_module")
    if low is None or high is None:
        center = loss["action_center"].cpu().numpy()
        half = loss["action_half"].cpu().numpy()
        low, high = center - half, center + half
    return ActorPolicy(layers, low=np.asarray(low), high=np.asarray(high), activation=activation,
                       scale_lb=scale_lb, meta=meta, actor_std=actor_std)
