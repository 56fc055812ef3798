"""Episodes from behaviour policies: one rollout, a recipe's episodes (every random number from the
recipe's seed), the reference returns of the scripted policies, exploration noise on an action, and the
library versions that fix a generated dataset's bytes.

Episode ``i`` of a recipe with seed ``s`` resets the env with ``s * 1_000_000 + i`` (recorded in the
episode's ``seed`` attribute), and the policy draws from ``numpy.random.default_rng(s)``. With the same
numpy / gymnasium / MuJoCo / h5py the output is byte-identical, on any CPU (trained actors compute in
float64 and round their actions: :data:`~offrl.datagen.policies.ACTION_GRID`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from offrl.data.minari_writer import Episode
from offrl.datagen.policies import ActorPolicy, BehaviourPolicy, make_policy
from offrl.datagen.recipes import Recipe, Segment

__all__ = [
    "RESET_SEED_STRIDE",
    "generator_versions",
    "noisy_action",
    "recipe_episodes",
    "reference_returns",
    "rollout",
    "segment_targets",
    "with_mujoco",
]


RESET_SEED_STRIDE = 1_000_000  # episode i of a recipe with seed s resets with s * stride + i


def rollout(env: gym.Env, policy: BehaviourPolicy, rng: np.random.Generator, reset_seed: int) -> Episode:
    """Run ``policy`` for one full episode (to termination or the time limit) from ``reset_seed``."""
    obs, _ = env.reset(seed=reset_seed)
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    while True:
        action = policy(obs, rng)
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        terminations.append(terminated)
        truncations.append(truncated)
        if terminated or truncated:
            break
    # Minari stores observations in the space's dtype and actions as the env receives them.
    action_dtype = np.int64 if isinstance(env.action_space, gym.spaces.Discrete) else env.action_space.dtype
    return Episode(
        observations=np.asarray(observations, dtype=env.observation_space.dtype),
        actions=np.asarray(actions, dtype=action_dtype),
        rewards=np.asarray(rewards, dtype=np.float64),
        terminations=np.asarray(terminations, dtype=bool),
        truncations=np.asarray(truncations, dtype=bool),
        seed=reset_seed,
    )


@functools.lru_cache(maxsize=16)
def reference_returns(env_id: str, kind: str, episodes: int, seed: int) -> tuple[float, ...]:
    """Returns of ``episodes`` episodes of the ``kind`` (``random`` / ``expert``) policy: the references."""
    env = gym.make(env_id)
    policy = make_policy(env_id, kind)
    # The two references use different streams so neither depends on the other's episode count.
    rng = np.random.default_rng([seed, 0 if kind == "random" else 1])
    returns = [float(rollout(env, policy, rng, seed + i).rewards.sum()) for i in range(episodes)]
    env.close()
    return tuple(returns)


def recipe_episodes(recipe: Recipe, env: gym.Env, actors: dict[str, ActorPolicy] | None = None) -> Iterator[Episode]:
    """The recipe's episodes: episode ``i`` resets with ``seed * 1_000_000 + i``; every random number comes
    from one ``numpy.random.default_rng(seed)`` stream."""
    rng = np.random.default_rng(recipe.seed)
    if recipe.policy == "replay":
        yield from _replay_episodes(recipe, env, actors or {}, rng)
        return
    total = recipe.episodes if recipe.episodes is not None else 0
    index = steps = 0
    while True:
        if recipe.episodes is not None and index >= recipe.episodes:
            return
        if recipe.min_transitions is not None and steps >= recipe.min_transitions:
            return
        epsilon, noise_std = recipe.noise_at(index, total)
        if recipe.policy == "checkpoint":
            assert actors is not None and recipe.checkpoint is not None
            policy: BehaviourPolicy = actors[recipe.checkpoint].with_noise(
                sample=recipe.sample, noise_std=noise_std, epsilon=epsilon)
        else:
            policy = make_policy(recipe.env_id, recipe.policy, epsilon=epsilon, noise_std=noise_std)
        episode = rollout(env, policy, rng, recipe.seed * RESET_SEED_STRIDE + index)
        steps += episode.total_steps
        index += 1
        yield episode


def segment_targets(segments: Sequence[Segment], transitions: int) -> list[int]:
    """Cumulative transition counts at which each replay segment ends: segment ``k`` records whole
    episodes until the dataset holds ``ceil(transitions * (steps_0 + ... + steps_k) / sum(steps))``."""
    total = sum(seg.steps for seg in segments)
    cumulative = np.cumsum([seg.steps for seg in segments])
    return [-(-int(transitions) * int(c) // int(total)) for c in cumulative]


def _replay_episodes(recipe: Recipe, env: gym.Env, actors: dict[str, ActorPolicy],
                     rng: np.random.Generator) -> Iterator[Episode]:
    assert recipe.segments is not None and recipe.min_transitions is not None
    index = steps = 0
    for seg, target in zip(recipe.segments, segment_targets(recipe.segments, recipe.min_transitions), strict=True):
        if seg.checkpoint is None:
            policy: BehaviourPolicy = make_policy(recipe.env_id, "random")
        else:
            policy = actors[seg.checkpoint].with_noise(sample=recipe.sample, noise_std=float(recipe.noise_std),
                                                       epsilon=float(recipe.epsilon))
        while steps < target:
            episode = rollout(env, policy, rng, recipe.seed * RESET_SEED_STRIDE + index)
            steps += episode.total_steps
            index += 1
            yield episode


def noisy_action(action: np.ndarray, space: gym.Space, noise: float, rng: np.random.Generator) -> Any:
    """``action`` with exploration ``noise``: epsilon-greedy with ``epsilon = noise`` for discrete actions,
    Gaussian noise of ``noise`` x half the action range for continuous ones (clipped to the bounds)."""
    if isinstance(space, gym.spaces.Discrete):
        a = int(np.asarray(action).reshape(-1)[0])
        return int(rng.integers(space.n)) if noise > 0 and rng.random() < noise else a
    a = np.asarray(action, dtype=space.dtype).reshape(space.shape)
    if noise > 0:
        a = a + rng.normal(0.0, noise, size=a.shape) * (space.high - space.low) / 2
    return np.clip(a, space.low, space.high).astype(space.dtype)


def generator_versions() -> dict[str, str]:
    """Versions of the libraries that determine a bundled dataset's bytes."""
    return {
        "numpy": np.__version__,
        "gymnasium": gym.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
    }


def with_mujoco(versions: dict[str, str]) -> dict[str, str]:
    """``versions`` plus MuJoCo's, which also fixes the bytes of MuJoCo datasets (when installed)."""
    try:
        import mujoco
    except ImportError:
        return versions
    return {**versions, "mujoco": str(mujoco.__version__)}
