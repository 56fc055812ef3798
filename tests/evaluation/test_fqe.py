"""FQE against returns known without it: the bundled experts are deterministic controllers, so on their own
data the truth is the data's discounted return; off the data, a policy's truth comes from the real env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from offrl.data import load_dataset
from offrl.datagen.policies import PendulumExpert
from offrl.evaluation.fqe import fit_fqe

PENDULUM = {"action_low": [-2.0], "action_high": [2.0]}


def _first_episodes(name: str, cache, n: int = 20):
    data = load_dataset(name, cache_dir=cache).data
    return data[torch.isin(data["episode"], data["episode"].unique()[:n])]


def _batched(policy, discrete: bool):
    rng = np.random.default_rng(0)

    def act(obs: torch.Tensor) -> torch.Tensor:
        actions = np.array([policy(o.astype(np.float64), rng) for o in obs.numpy()])
        return torch.as_tensor(actions).long() if discrete else torch.as_tensor(actions, dtype=torch.float32).reshape(len(obs), -1)

    return act


def _discounted_data_return(data, gamma: float) -> float:
    returns = []
    for e in data["episode"].unique().tolist():
        r = data["next", "reward"][data["episode"] == e].reshape(-1).double().numpy()
        returns.append(float((r * gamma ** np.arange(len(r))).sum()))
    return float(np.mean(returns))


def _env_return(env_id: str, policy, gamma: float, episodes: int = 10) -> float:
    env, rng, out = gym.make(env_id), np.random.default_rng(0), []
    for i in range(episodes):
        obs, _ = env.reset(seed=5000 + i)
        total, k, done = 0.0, 0, False
        while not done:
            obs, r, term, trunc, _ = env.step(policy(obs, rng))
            total, k, done = total + gamma ** k * r, k + 1, term or trunc
        out.append(total)
    env.close()
    return float(np.mean(out))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fqe-cache")


def test_fqe_of_the_behaviour_policy_matches_its_discounted_return(cache):
    """On-policy (the Pendulum expert on its own episodes): within 10% of the truth (measured: 8% low), inside
    the 95% CI."""
    data = _first_episodes("offrl/pendulum/expert-v0", cache)
    truth = _discounted_data_return(data, 0.98)
    result = fit_fqe(data, _batched(PendulumExpert(), False), gamma=0.98, **PENDULUM)
    assert not result.diverged and result.spectral_radius < 1
    assert abs(result.value - truth) < 0.10 * abs(truth), (result.value, truth)
    assert result.ci_low <= truth <= result.ci_high, (result.ci_low, truth, result.ci_high)
    assert result.episodes == 20 and len(result.bootstrap) == 20 and result.td_error_relative < 0.05


def test_fqe_ranks_two_policies_on_noisy_data_and_stays_finite_off_the_data(cache):
    """Off-policy on the medium (65% random torque) Pendulum data: the expert above doing nothing, each near
    its env return. On CartPole expert data (no fall in it), a policy that always pushes left leaves the
    data at once: the clipped targets keep the fit finite and inside the range the rewards allow, and the
    fit is not flagged (the blind spot docs/ope.md names)."""
    data = _first_episodes("offrl/pendulum/medium-v0", cache)
    idle = lambda obs, rng: np.array([0.0], dtype=np.float32)  # noqa: E731
    expert = fit_fqe(data, _batched(PendulumExpert(), False), gamma=0.98, **PENDULUM)
    still = fit_fqe(data, _batched(idle, False), gamma=0.98, **PENDULUM)
    true_expert, true_still = _env_return("Pendulum-v1", PendulumExpert(), 0.98), _env_return("Pendulum-v1", idle, 0.98)
    assert expert.value > still.value and true_expert > true_still
    assert abs(expert.value - true_expert) < 0.25 * abs(true_expert), (expert.value, true_expert)
    assert abs(still.value - true_still) < 0.25 * abs(true_still), (still.value, true_still)
    left = fit_fqe(_first_episodes("offrl/cartpole/expert-v0", cache), _batched(lambda o, r: 0, True), gamma=0.99,
                   n_actions=2, bootstrap=0)
    assert not left.diverged and left.diverged_reason is None and -10 <= left.value <= 110
    assert np.isnan(left.ci_low)  # no bootstrap fits: no interval
