"""evaluate() on real gymnasium envs with policies whose returns we can predict or replay by hand."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.modules import ProbabilisticActor, TanhNormal

from offrl.errors import UserError
from offrl.evaluation import evaluate
from offrl.evaluation.rollout import MAX_PARALLEL_ENVS


def _td_policy(fn):
    return TensorDictModule(fn, in_keys=["observation"], out_keys=["action"])


def _balance(obs: torch.Tensor) -> torch.Tensor:
    """PD controller on the pole angle: keeps CartPole up for the full 500 steps."""
    return (obs[..., 2] + 0.5 * obs[..., 3] > 0).long()


def _weak(obs: torch.Tensor) -> torch.Tensor:
    """Reacts to the angle only: drops the pole after a seed-dependent number of steps."""
    return (obs[..., 2] > 0).long()


def _replay(env_id: str, action_fn, seed: int) -> tuple[float, int]:
    """One episode by hand, the way a person would write it."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    total, n, done = 0.0, 0, False
    while not done:
        a = action_fn(torch.as_tensor(obs, dtype=torch.float32)[None])
        a = int(a.reshape(-1)[0]) if isinstance(env.action_space, gym.spaces.Discrete) else a.reshape(-1).numpy()
        obs, r, term, trunc, _ = env.step(a)
        total, n, done = total + float(r), n + 1, term or trunc
    env.close()
    return total, n


def test_cartpole_balancer_scores_full_episodes_with_reference():
    res = evaluate(_td_policy(_balance), "CartPole-v1", episodes=4, seed=3, ref=(0.0, 500.0, "user"), gamma=0.9)
    assert res.returns.tolist() == [500.0] * 4
    assert res.lengths.tolist() == [500] * 4
    assert res.terminated.tolist() == [False] * 4  # truncated at the time limit, not terminated
    assert res.seeds == [3, 4, 5, 6]
    assert res.normalized_mean == pytest.approx(100.0)
    assert res.ref_source == "user"
    # reward 1 per step: the discounted return is a geometric series
    assert res.discounted_returns == pytest.approx([(1 - 0.9**500) / (1 - 0.9)] * 4)
    d = res.to_dict()
    assert d["normalized_mean"] == pytest.approx(100.0) and d["ref_source"] == "user" and d["episodes"] == 4


def test_each_episode_runs_to_its_own_end_and_matches_sequential_replay():
    res = evaluate(_td_policy(_weak), "CartPole-v1", episodes=6, seed=10)
    expected = [_replay("CartPole-v1", _weak, 10 + i) for i in range(6)]
    assert res.returns.tolist() == [r for r, _ in expected]
    assert res.lengths.tolist() == [n for _, n in expected]
    assert len(set(res.lengths.tolist())) > 1, "episodes of different lengths: none was cut at the first done"
    assert res.terminated.tolist() == [True] * 6  # the pole fell in each, well before the time limit
    assert np.isnan(res.normalized_mean) and res.ref_source is None
    # the same episodes through a single env instance (sequential path)
    seq = evaluate(_td_policy(_weak), gym.make("CartPole-v1"), episodes=6, seed=10)
    assert seq.returns.tolist() == res.returns.tolist()


def test_discrete_policy_may_emit_one_hot_or_index():
    index = evaluate(_td_policy(_weak), "CartPole-v1", episodes=3, seed=0)
    one_hot = evaluate(
        _td_policy(lambda o: torch.nn.functional.one_hot(_weak(o), 2)), "CartPole-v1", episodes=3, seed=0
    )
    column = evaluate(_td_policy(lambda o: _weak(o)[:, None]), "CartPole-v1", episodes=3, seed=0)
    assert index.returns.tolist() == one_hot.returns.tolist() == column.returns.tolist()


def test_pendulum_more_episodes_than_one_wave_records_every_seed():
    episodes = MAX_PARALLEL_ENVS + 3
    zero = _td_policy(lambda o: torch.zeros(o.shape[0], 1))
    res = evaluate(zero, lambda: gym.make("Pendulum-v1"), episodes=episodes, seed=100)
    assert res.seeds == list(range(100, 100 + episodes))
    assert res.lengths.tolist() == [200] * episodes  # truncated by the time limit
    for i in (0, MAX_PARALLEL_ENVS, episodes - 1):
        ret, _ = _replay("Pendulum-v1", lambda o: torch.zeros(1, 1), 100 + i)
        assert res.returns[i] == pytest.approx(ret)
    assert res.initial_observations.shape == (episodes, 3)


def test_stochastic_actor_is_evaluated_at_its_mode():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2), NormalParamExtractor())
    actor = ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -2.0, "high": 2.0},
        return_log_prob=False,
    )
    a = evaluate(actor, "Pendulum-v1", episodes=3, seed=0)
    b = evaluate(actor, "Pendulum-v1", episodes=3, seed=0)
    assert a.returns.tolist() == b.returns.tolist()  # a sampled policy would differ between the two runs
    mode = _td_policy(lambda o: 2.0 * torch.tanh(net(o)[0]))
    c = evaluate(mode, "Pendulum-v1", episodes=3, seed=0)
    assert a.returns == pytest.approx(c.returns, rel=1e-4)
    assert actor.training  # evaluation restores the module's mode


def test_unknown_env_is_a_user_error():
    with pytest.raises(UserError, match="NoSuchEnv"):
        evaluate(_td_policy(_weak), "NoSuchEnv-v0", episodes=1)
    with pytest.raises(UserError, match="episodes"):
        evaluate(_td_policy(_weak), "CartPole-v1", episodes=0)
