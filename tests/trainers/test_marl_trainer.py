"""DQNTrainer's multi-agent seed parameters: mixing_strategy (QMIX / VDN through torchrl's QMixerLoss,
IQL through DQNLoss on per-agent keys), reward aggregation, the keys that reach the loss, the errors."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.objectives.multiagent import QMixerLoss

from offrl.algos import dqn, marl
from offrl.config.marl import MixingConfig
from offrl.errors import UserError
from offrl.trainers import DQNTrainer
from tests.helpers.engine import ListLogger

B, N, D, A, S = 64, 3, 5, 4, 7
SMALL = MixingConfig(hidden_sizes=(16, 16), mixing_embed_dim=8, tau=0.1)
AGG = {"aggregated_reward_key": "reward", "aggregated_episode_reward_key": "episode_reward"}
MA_KEYS = {"reward_key": ("agents", "reward"), "episode_reward_key": ("agents", "episode_reward"),
           "action_key": ("agents", "action"), "observation_key": ("agents", "observation")}


def ma_batch(n: int = B, *, per_agent_flags: bool = False, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    done = torch.rand(n, 1, generator=g) < 0.1
    td = TensorDict({
        ("agents", "observation"): torch.randn(n, N, D, generator=g),
        ("agents", "action"): torch.randint(A, (n, N), generator=g),
        "state": torch.randn(n, S, generator=g),
        ("next", "agents", "observation"): torch.randn(n, N, D, generator=g),
        ("next", "state"): torch.randn(n, S, generator=g),
        ("next", "agents", "reward"): torch.randn(n, N, 1, generator=g),
        ("next", "agents", "episode_reward"): torch.randn(n, N, 1, generator=g),
        ("next", "done"): done, ("next", "terminated"): done.clone(),
    }, [n])
    if per_agent_flags:
        td.set(("next", "agents", "done"), done.unsqueeze(-2).expand(n, N, 1).clone())
        td.set(("next", "agents", "terminated"), done.unsqueeze(-2).expand(n, N, 1).clone())
    return td


def buffer(td: TensorDict, batch_size: int = 16) -> TensorDictReplayBuffer:
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(td.shape[0]), batch_size=batch_size)
    rb.extend(td)
    return rb


def make(strategy: str, *, cfg: MixingConfig = SMALL, state_dim: int | None = S, data: TensorDict | None = None,
         **kwargs):
    parts = marl.build(cfg, strategy=strategy, n_agents=N, observation_dim=D, n_actions=A, state_dim=state_dim,
                       seed=0)
    options = dict(loss_module=parts.loss_module, optimizer=parts.optimizer, target_net_updater=parts.target_net_updater,
                   replay_buffer=buffer(data if data is not None else ma_batch()), mixing_strategy=strategy,
                   progress_bar=False, seed=0, offline_steps=4, log_interval=2, policy=parts.policy,
                   greedy_module=parts.greedy_module, **MA_KEYS)
    if strategy != "iql":
        options.update(AGG)
    options.update(kwargs)
    return DQNTrainer(**options), parts


@pytest.mark.parametrize("strategy", ["qmix", "vdn"])
def test_mixing_averages_rewards_over_agents_into_the_aggregated_keys(strategy):
    trainer, parts = make(strategy)
    assert isinstance(parts.loss_module, QMixerLoss)
    assert parts.loss_module.tensor_keys.reward == "reward"  # the loss reads the aggregated reward
    batch = ma_batch(4)
    out = trainer._prepare_batch(batch.clone())
    torch.testing.assert_close(out.get(("next", "reward")), batch.get(("next", "agents", "reward")).mean(-2))
    torch.testing.assert_close(out.get(("next", "episode_reward")),
                               batch.get(("next", "agents", "episode_reward")).mean(-2))
    log = ListLogger()
    trainer.logger = log
    trainer.train()
    row = log.rows[-1][2]
    assert {"loss", "loss_cql", "cql_gap", "q_data_mean", "reward_mean"} <= set(row)
    assert row["loss_cql"] == 0.0  # min_q_weight 0: no penalty in the loss, the gap still logged
    assert trainer.display_name == strategy


def test_aggregated_key_may_overwrite_the_source_in_place():
    """torchrl: aggregated_reward_key = reward_key overwrites the per-agent source with the team mean."""
    data = ma_batch()
    data.set(("next", "team_reward"), data.get(("next", "agents", "reward")).clone())
    trainer, parts = make("vdn", data=data, reward_key="team_reward", aggregated_reward_key="team_reward")
    out = trainer._prepare_batch(data[:2].clone())
    torch.testing.assert_close(out.get(("next", "team_reward")), data[:2].get(("next", "agents", "reward")).mean(-2))
    assert parts.loss_module.tensor_keys.reward == "team_reward"
    trainer.train()
    assert trainer.step == 4


@pytest.mark.parametrize("strategy,missing", [("qmix", "aggregated_reward_key"),
                                              ("vdn", "aggregated_episode_reward_key")])
def test_missing_aggregated_key_is_an_error(strategy, missing):
    with pytest.raises(UserError) as err:
        make(strategy, **{missing: None})
    assert str(err.value) == (f"mixing_strategy={strategy!r} needs aggregated_reward_key and "
                              "aggregated_episode_reward_key (where the agent-averaged rewards go); set both")


def test_team_keys_reach_the_mixing_loss():
    data = ma_batch()
    data.rename_key_(("next", "done"), ("next", "d"))
    data.rename_key_(("next", "terminated"), ("next", "t"))
    trainer, parts = make("qmix", data=data, done_key="d", terminated_key="t")
    keys = parts.loss_module.tensor_keys
    assert (keys.done, keys.terminated, keys.reward) == ("d", "t", "reward")
    trainer.train()
    assert trainer.step == 4


def test_iql_broadcasts_team_flags_and_reward_to_the_agents():
    trainer, parts = make("iql", reward_key="reward")  # data with a team reward only
    keys = parts.loss_module.tensor_keys
    assert (keys.done, keys.terminated, keys.reward, keys.action) == (
        ("agents", "done"), ("agents", "terminated"), ("agents", "reward"), ("agents", "action"))
    batch = ma_batch(4)
    batch.set(("next", "reward"), torch.arange(4.0).unsqueeze(-1))
    batch.del_(("next", "agents", "reward"))
    out = trainer._prepare_batch(batch.clone())
    for team, agent in ((("next", "done"), ("next", "agents", "done")),
                        (("next", "terminated"), ("next", "agents", "terminated")),
                        (("next", "reward"), ("next", "agents", "reward"))):
        assert out.get(agent).shape == (4, N, 1)
        assert torch.equal(out.get(agent), batch.get(team).unsqueeze(-2).expand(4, N, 1))
    # per-agent flags already there are kept as they are
    own = ma_batch(4, per_agent_flags=True)
    own.set(("next", "agents", "done"), torch.zeros(4, N, 1, dtype=torch.bool))
    assert not trainer._prepare_batch(own.clone()).get(("next", "agents", "done")).any()
    trainer.replay_buffer = buffer(ma_batch().exclude(("next", "agents", "reward")).set(("next", "reward"),
                                                                                           torch.randn(B, 1)))
    trainer.train()
    assert trainer.step == 4


@pytest.mark.parametrize("strategy", ["qmix", "vdn", "iql"])
def test_loss_the_strategy_cannot_drive_is_refused(strategy, cartpole_medium):
    if strategy == "iql":  # a QMixerLoss without mixing
        parts = marl.build(SMALL, strategy="vdn", n_agents=N, observation_dim=D, n_actions=A, seed=0)
        with pytest.raises(UserError, match="mixing_strategy='qmix'/'vdn' for QMixerLoss"):
            DQNTrainer(loss_module=parts.loss_module, replay_buffer=buffer(ma_batch()), offline_steps=1)
        return
    parts = dqn.build_from_dataset(dqn.DQNConfig(hidden_sizes=(8,)), cartpole_medium, seed=0)
    with pytest.raises(UserError, match=f"mixing_strategy='{strategy}' drives torchrl's QMixerLoss"):
        DQNTrainer(loss_module=parts.loss_module, replay_buffer=cartpole_medium.replay_buffer(8), offline_steps=1,
                   mixing_strategy=strategy, **AGG)


def test_shared_and_per_agent_parameters():
    shared = marl.build(SMALL, strategy="vdn", n_agents=N, observation_dim=D, n_actions=A, seed=0)
    own = marl.build(MixingConfig(hidden_sizes=(16, 16), share_params=False), strategy="vdn", n_agents=N,
                     observation_dim=D, n_actions=A, seed=0)
    count = lambda p: sum(x.numel() for x in p.loss_module.local_value_network_params.values(True, True))  # noqa: E731
    assert count(own) == N * count(shared)
    # per-agent networks answer differently to the same observation
    obs = torch.randn(1, 1, D).expand(1, N, D)
    q = own.policy(TensorDict({("agents", "observation"): obs}, [1])).get(("agents", "action_value"))
    assert not torch.allclose(q[0, 0], q[0, 1])
    q = shared.policy(TensorDict({("agents", "observation"): obs}, [1])).get(("agents", "action_value"))
    torch.testing.assert_close(q[0, 0], q[0, 1])


def _q(parts, td, target: bool):
    loss = parts.loss_module
    net = loss.local_value_network if hasattr(loss, "local_value_network") else loss.value_network
    name = "local_value_network" if hasattr(loss, "local_value_network") else "value_network"
    params = getattr(loss, ("target_" if target else "") + name + "_params")
    with torch.no_grad(), params.to_module(net):
        return net(td.select(("agents", "observation")).clone()).get(("agents", "action_value"))


@pytest.mark.parametrize("double_q", [False, True])
@pytest.mark.parametrize("strategy", ["vdn", "iql"])
def test_td_target_and_cql_penalty_by_hand(strategy, double_q):
    """VDN: Q_tot = sum_i Q_i, target r + gamma (1 - terminated) sum_i max target Q_i; IQL per agent; with
    double_q the target Q_i is read at the online network's argmax instead of its own; the penalty is mean
    over batch and agents of logsumexp Q_i - Q_i(a_i), times min_q_weight."""
    cfg = MixingConfig(hidden_sizes=(16,), min_q_weight=2.5, gamma=0.9, double_q=double_q)
    trainer, parts = make(strategy, cfg=cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a target network that differs from the online one (and ranks actions differently)
        for p in parts.loss_module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    batch = trainer._prepare_batch(ma_batch(8, per_agent_flags=True))
    batch.set(("next", "reward"), torch.randn(8, 1))
    out = parts.loss_module(batch.clone())
    q_all = _q(parts, batch, target=False)
    q_data = q_all.gather(-1, batch.get(("agents", "action")).unsqueeze(-1)).squeeze(-1)
    next_target = _q(parts, batch.get("next"), target=True)
    next_online = _q(parts, batch.get("next"), target=False)
    assert not torch.equal(next_target.argmax(-1), next_online.argmax(-1))  # the two bootstraps differ here
    pick = next_online.argmax(-1, keepdim=True) if double_q else next_target.argmax(-1, keepdim=True)
    next_max = next_target.gather(-1, pick).squeeze(-1)
    live = (~batch.get(("next", "terminated"))).float()
    if strategy == "vdn":
        target = batch.get(("next", "reward")) + 0.9 * live * next_max.sum(-1, keepdim=True)
        td = (q_data.sum(-1, keepdim=True) - target).pow(2).mean()
    else:
        target = batch.get(("next", "agents", "reward")).squeeze(-1) + 0.9 * live * next_max
        td = (q_data - target).pow(2).mean()
    torch.testing.assert_close(out["loss"], td, rtol=1e-5, atol=1e-6)
    gap = (torch.logsumexp(q_all, -1) - q_data).mean()
    torch.testing.assert_close(out["cql_gap"], gap)
    torch.testing.assert_close(out["loss_cql"], 2.5 * gap)


def test_qmix_without_state_mixes_with_the_observations():
    data = ma_batch().exclude("state", ("next", "state"))
    trainer, parts = make("qmix", state_dim=None, data=data)
    assert ("agents", "observation") in parts.loss_module.mixer_network.in_keys
    trainer.train()
    assert trainer.step == 4


def test_exploration_acts_per_agent():
    parts = marl.build(MixingConfig(eps_init=1.0, eps_end=1.0), strategy="qmix", n_agents=N, observation_dim=D,
                       n_actions=A, state_dim=S, seed=0)
    td = ma_batch(256).exclude(("agents", "action"))
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    with set_exploration_type(ExplorationType.RANDOM):
        act = parts.exploration_policy(td.clone()).get(("agents", "action"))
    greedy = parts.policy(td.clone()).get(("agents", "action"))
    assert act.shape == (256, N) and set(act.unique().tolist()) == set(range(A))
    assert (act != greedy).float().mean() > 0.5  # epsilon 1: uniform over the actions, each agent alone
