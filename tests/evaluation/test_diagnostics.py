"""Off-policy diagnostics: hand-computed values with plain callables, and real torchrl loss modules."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.data import Bounded, OneHot
from torchrl.modules import MLP, ProbabilisticActor, QValueActor, TanhNormal, ValueOperator
from torchrl.objectives import CQLLoss, DiscreteCQLLoss, DQNLoss

from offrl.evaluation import (
    Critic,
    Evaluator,
    critic_from_loss,
    eval_diagnostics,
    heldout_split,
    offline_diagnostics,
)


def _ted(n: int, obs_dim: int, action: torch.Tensor, *, episodes: int = 1) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    per = n // episodes
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g),
            "action": action,
            "next": {
                "observation": torch.randn(n, obs_dim, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "terminated": torch.arange(n).reshape(n, 1) % per == per - 1,
            },
            "episode": torch.arange(n) // per,
            "step": torch.arange(n) % per,
            "mc_return": torch.randn(n, 1, generator=g),
        },
        batch_size=[n],
    )


def test_plain_callables_give_hand_computed_values():
    # Q(s, a) = s0 + a, V(s) = 2 s0 (the "policy" picks a = s0)
    critic = Critic(q=lambda o, a: o[:, 0] + a[:, 0], v=lambda o: 2 * o[:, 0])
    td = TensorDict(
        {
            "observation": torch.tensor([[1.0], [2.0]]),
            "action": torch.tensor([[0.5], [-1.0]]),
            "next": {
                "observation": torch.tensor([[3.0], [4.0]]),
                "reward": torch.tensor([[1.0], [0.0]]),
                "terminated": torch.tensor([[False], [True]]),
            },
        },
        batch_size=[2],
    )
    s0 = TensorDict({"observation": torch.tensor([[1.0], [3.0]]), "mc_return": torch.tensor([[5.0], [7.0]])}, [2])
    out = offline_diagnostics(critic, td, gamma=0.5, s0=s0)
    # q_data = [1.5, 1.0]; targets = [1 + 0.5 * 6, 0 + 0] = [4, 0]; errors² = [6.25, 1.0]
    assert out["diag_td_error"] == pytest.approx((6.25 + 1.0) / 2)
    assert out["diag_q_data"] == pytest.approx(1.25)
    assert out["diag_q_policy"] == pytest.approx(3.0)
    assert out["diag_v_s0"] == pytest.approx(4.0)
    assert out["diag_mc_return_s0"] == pytest.approx(6.0)


def test_dqn_and_discrete_cql_losses_read_their_value_network():
    torch.manual_seed(0)
    net = MLP(in_features=4, out_features=2, num_cells=[16])
    actor = QValueActor(net, in_keys=["observation"], spec=OneHot(2))
    td = _ted(32, 4, torch.randint(0, 2, (32,)))
    expected_av = net(td["observation"])
    for loss in (DQNLoss(actor, action_space="categorical"), DiscreteCQLLoss(actor, action_space="categorical")):
        critic = critic_from_loss(loss)
        q = critic.q(td["observation"], td["action"])
        assert torch.allclose(q, expected_av.gather(1, td["action"][:, None]).squeeze(1))
        assert torch.allclose(critic.v(td["observation"]), expected_av.max(1).values)
        one_hot = torch.nn.functional.one_hot(td["action"], 2)
        assert torch.allclose(critic.q(td["observation"], one_hot), q)
        out = offline_diagnostics(loss, td, gamma=0.99, s0=td[td["step"] == 0])
        assert out["diag_q_policy"] >= out["diag_q_data"]  # max over actions >= any action
        assert all(np.isfinite(v) for v in out.values())


def _cql_loss() -> tuple[CQLLoss, torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    anet = torch.nn.Sequential(MLP(in_features=3, out_features=2, num_cells=[16]), NormalParamExtractor())
    actor = ProbabilisticActor(
        TensorDictModule(anet, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -2.0, "high": 2.0},
    )
    qnet = MLP(in_features=4, out_features=1, num_cells=[16])
    qvalue = ValueOperator(qnet, in_keys=["observation", "action"])
    return CQLLoss(actor, qvalue, action_spec=Bounded(-2.0, 2.0, (1,))), anet, qnet


def test_cql_loss_critic_is_min_over_the_ensemble_at_the_actor_mode():
    loss, anet, _ = _cql_loss()
    critic = critic_from_loss(loss)
    td = _ted(16, 3, torch.rand(16, 1) * 4 - 2)
    qs = []
    for i in range(2):
        with loss.qvalue_network_params[i].to_module(loss.qvalue_network):
            qs.append(loss.qvalue_network(td.select("observation", "action").clone())["state_action_value"])
    expected = torch.stack(qs).min(0).values.reshape(-1)
    assert not torch.allclose(qs[0], qs[1])  # two distinct critics, so min matters
    assert torch.allclose(critic.q(td["observation"], td["action"]), expected)
    mode = 2.0 * torch.tanh(anet(td["observation"])[0])
    assert torch.allclose(critic.v(td["observation"]), critic.q(td["observation"], mode), atol=1e-5)
    # after an optimizer step the critic follows the loss module's current parameters
    before = critic.q(td["observation"], td["action"]).clone()
    with torch.no_grad():
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(1.0)
    assert not torch.allclose(critic.q(td["observation"], td["action"]), before)


class _Info:
    gamma = 0.9
    ref_min_score, ref_max_score, ref_source = -1500.0, -150.0, "dataset metadata"
    env_id = "Pendulum-v1"


class _DatasetLike:
    """The slice of OfflineDataset the evaluator uses: data, info, make_env."""

    def __init__(self) -> None:
        self.data = _ted(400, 3, torch.rand(400, 1) * 4 - 2, episodes=4)
        self.info = _Info()

    def make_env(self, env_id: str | None = None) -> gym.Env:
        return gym.make(env_id or "Pendulum-v1")


def test_evaluator_row_has_eval_and_diag_columns():
    loss, _, _ = _cql_loss()
    evaluator = Evaluator(_DatasetLike(), critic=loss, episodes=2, seed=0)
    row = evaluator(loss.actor_network, step=100)
    for key in ("eval_return_mean", "eval_return_std", "eval_length_mean", "eval_normalized_score",
                "diag_td_error", "diag_q_data", "diag_q_policy", "diag_v_s0", "diag_mc_return_s0",
                "diag_v_s0_eval", "diag_achieved_return_s0"):
        assert np.isfinite(row[key]), key
    res = evaluator.last_result
    assert res.ref_source == "dataset metadata" and res.gamma == 0.9
    assert row["eval_normalized_score"] == pytest.approx(100 * (res.mean + 1500) / 1350)
    assert row == {**row, **eval_diagnostics(loss, res)}


def test_heldout_split_keeps_whole_episodes_apart():
    data = _ted(1000, 2, torch.zeros(1000, 1), episodes=20)
    train, held = heldout_split(data, fraction=0.1, seed=1)
    assert len(train) + len(held) == 1000 and len(held) == 100
    assert set(data["episode"][held].tolist()).isdisjoint(data["episode"][train].tolist())
    assert torch.equal(heldout_split(data, fraction=0.1, seed=1)[1], held)
