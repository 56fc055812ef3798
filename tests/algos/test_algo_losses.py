"""The algorithm builders and offrl's loss fixes over torchrl 0.14."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Categorical, OneHot
from torchrl.envs.utils import ExplorationType, set_exploration_type

from offrl.algos import AlgoParts, CQLConfig, DiscreteCQLConfig, DQNConfig, cql, discrete_cql, dqn
from offrl.algos._spec import action_spec_from_dataset
from offrl.errors import UserError

BOX2 = Bounded(low=-2 * torch.ones(1), high=2 * torch.ones(1), shape=(1,))


def _batch(n=16, obs_dim=3, action=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    td = TensorDict({
        "observation": torch.randn(n, obs_dim, generator=g),
        ("next", "observation"): torch.randn(n, obs_dim, generator=g),
        ("next", "reward"): torch.randn(n, 1, generator=g),
        ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
        ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
    }, [n])
    td["next", "terminated"][:3] = True
    td["next", "done"][:3] = True
    td["action"] = action if action is not None else (torch.rand(n, 1, generator=g) * 4 - 2)
    return td


def _grads(loss_value, params):
    grads = torch.autograd.grad(loss_value, params, allow_unused=True, retain_graph=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]


def test_cql_build_parts_and_policy_scale():
    parts = cql.build(CQLConfig(hidden_sizes=(16, 16)), observation_shape=(3,), action_spec=BOX2, seed=0)
    assert isinstance(parts, AlgoParts)
    assert [g["name"] for g in parts.optimizer.param_groups] == ["actor", "critic", "alpha"]
    assert parts.trainer_kwargs == {"bc_steps": 0, "update_order": "joint"}
    td = _batch(256)
    with set_exploration_type(ExplorationType.RANDOM):
        actions = parts.policy(td.select("observation"))["action"]
    # actor in [-1, 1], policy rescaled to the env's [-2, 2]
    assert actions.abs().max() <= 2.0 and actions.abs().max() > 1.0


def test_cql_bc_loss_finite_at_action_bounds():
    parts = cql.build(CQLConfig(hidden_sizes=(16,)), observation_shape=(3,), action_spec=BOX2, seed=0)
    td = _batch(8, action=torch.tensor([[-2.0], [2.0]] * 4))  # datasets clip to the bounds exactly
    out = parts.loss_module(td)
    assert all(torch.isfinite(out[k]) for k in out.keys())


def test_cql_penalty_is_logsumexp_over_all_sampled_actions():
    """With a critic constant in the action, Q(s,.) = c(s): the penalty has a closed form that only holds
    when the log-sum-exp runs over all 3 * num_random proposals of a state (the authors' CQL(H))."""
    parts = cql.build(CQLConfig(hidden_sizes=(16,), num_random=5), observation_shape=(3,), action_spec=BOX2,
                      seed=0)
    loss = parts.loss_module
    with torch.no_grad():  # zero the action's input weights of both critics: Q depends on s only
        loss.qvalue_network_params["module", "0", "weight"][..., 3:] = 0.0
    td = loss._unit_actions(_batch(4))
    loss.q_loss(td)
    torch.manual_seed(0)
    gaps = loss.cql_gaps(td)
    torch.manual_seed(0)  # the same proposals again, to compute the closed form
    curr_td, curr_logp = loss._get_policy_actions(td.copy(), loss.actor_network_params, 5)
    _, next_logp = loss._get_policy_actions(td.get("next").copy(), loss.actor_network_params, 5)
    log_w = torch.cat([torch.full((4, 5), math.log(2.0)), -curr_logp.reshape(4, 5), -next_logp.reshape(4, 5)], -1)
    expected = torch.logsumexp(log_w, -1)  # E_s[lse(c - log mu)] - c = E_s[lse(-log mu)]
    assert torch.allclose(gaps, expected.mean().expand(2), atol=1e-4)


def test_cql_lagrange_scales_penalty_and_separates_gradients():
    cfg = CQLConfig(hidden_sizes=(16,), with_lagrange=True, target_action_gap=1.0, min_q_weight=2.0)
    parts = cql.build(cfg, observation_shape=(3,), action_spec=BOX2, seed=0)
    loss = parts.loss_module
    assert [g["name"] for g in parts.optimizer.param_groups][-1] == "alpha_prime"
    td = _batch(8)
    torch.manual_seed(1)
    out1 = loss(td.clone())
    with torch.no_grad():
        loss.log_alpha_prime.fill_(math.log(3.0))
    torch.manual_seed(1)
    out3 = loss(td.clone())
    assert out3["loss_cql"].item() == pytest.approx(3 * out1["loss_cql"].item(), rel=1e-4)
    assert out3["alpha_prime"].item() == pytest.approx(3.0)
    critic = list(loss.qvalue_network_params.values(True, True))
    # alpha' learns from the penalty, the critics do not learn from alpha''s loss, and vice versa
    assert all(g.abs().sum() == 0 for g in _grads(out3["loss_alpha_prime"], critic))
    assert _grads(out3["loss_cql"], [loss.log_alpha_prime])[0].abs().sum() == 0
    assert _grads(out3["loss_alpha_prime"], [loss.log_alpha_prime])[0].abs().sum() > 0


def test_cql_rejects_discrete_or_unbounded_actions():
    with pytest.raises(UserError, match="continuous"):
        cql.build(CQLConfig(), observation_shape=(3,), action_spec=Categorical(2))
    unbounded = Bounded(low=-torch.ones(1) * math.inf, high=torch.ones(1) * math.inf, shape=(1,))
    with pytest.raises(UserError, match="finite"):
        cql.build(CQLConfig(), observation_shape=(3,), action_spec=unbounded)


def test_cql_fused_switch_uses_the_fused_offline_loss():
    from offrl.algos.fused_cql import FusedOfflineCQLLoss

    fused = cql.build(CQLConfig(hidden_sizes=(16,), fused=True), observation_shape=(3,), action_spec=BOX2, seed=0)
    plain = cql.build(CQLConfig(hidden_sizes=(16,), fused=False), observation_shape=(3,), action_spec=BOX2, seed=0)
    assert isinstance(fused.loss_module, FusedOfflineCQLLoss)
    assert type(plain.loss_module) is cql.OfflineCQLLoss
    td = _batch(8)
    torch.manual_seed(0)
    out_f = fused.loss_module(td.clone())
    torch.manual_seed(0)
    out_p = plain.loss_module(td.clone())
    assert torch.allclose(out_f["loss_qvalue"], out_p["loss_qvalue"], rtol=1e-4)


def test_discrete_cql_target_uses_the_target_network():
    parts = discrete_cql.build(DiscreteCQLConfig(hidden_sizes=(16,)), observation_shape=(3,), action_spec=4,
                               seed=0)
    loss = parts.loss_module
    td = _batch(16, action=torch.randint(0, 4, (16,)))
    with torch.no_grad():
        for p in loss.value_network_params.values(True, True):
            p.add_(0.5)  # online != target now
        out = loss(td.clone())
        with loss.target_value_network_params.to_module(loss.value_network):
            next_q = loss.value_network(td["next"].select("observation").clone())["action_value"]
    not_term = (~td["next", "terminated"]).float().squeeze(-1)
    expected = td["next", "reward"].squeeze(-1) + 0.99 * not_term * next_q.max(-1).values
    assert out["target_value"].item() == pytest.approx(expected.mean().item(), rel=1e-5)


def test_discrete_cql_weight_scales_penalty():
    td = _batch(16, action=torch.randint(0, 2, (16,)))
    outs = [discrete_cql.build(DiscreteCQLConfig(hidden_sizes=(16,), min_q_weight=w), observation_shape=(3,),
                               action_spec=OneHot(2), seed=0).loss_module(td.clone()) for w in (1.0, 4.0)]
    assert outs[1]["loss_cql"].item() == pytest.approx(4 * outs[0]["loss_cql"].item(), rel=1e-5)
    assert outs[1]["cql_gap"].item() == pytest.approx(outs[0]["cql_gap"].item(), rel=1e-5)


@pytest.mark.parametrize("dueling", [False, True])
def test_dqn_build_double_dueling_and_greedy(dueling):
    parts = dqn.build(DQNConfig(hidden_sizes=(16, 16), dueling=dueling, annealing_num_steps=10),
                      observation_shape=(4,), action_spec=Categorical(2), seed=0)
    assert parts.loss_module.double_dqn is True
    td = _batch(8, obs_dim=4, action=torch.randint(0, 2, (8,)))
    out = parts.loss_module(td.clone())
    assert torch.isfinite(out["loss"])
    action = parts.policy(td.select("observation").clone())["action"]
    assert action.dtype == torch.int64 and action.shape == (8,)
    parts.greedy_module.step(5)
    assert float(parts.greedy_module.eps) == pytest.approx(1.0 - 0.95 * 0.5)


def test_builders_reject_bad_spaces_and_options():
    with pytest.raises(UserError, match="discrete"):
        dqn.build(DQNConfig(), observation_shape=(3,), action_spec=BOX2)
    with pytest.raises(UserError, match="flat observations"):
        discrete_cql.build(DiscreteCQLConfig(), observation_shape=(3, 3), action_spec=2)
    with pytest.raises(UserError, match="target_update"):
        dqn.build(DQNConfig(target_update="sometimes"), observation_shape=(3,), action_spec=2)
    with pytest.raises(UserError, match="eps_end"):
        dqn.build(DQNConfig(eps_init=0.1, eps_end=0.5), observation_shape=(3,), action_spec=2)


def test_seeded_builds_are_identical_and_leave_global_rng_alone():
    state = torch.get_rng_state()
    a = cql.build(CQLConfig(hidden_sizes=(8,)), observation_shape=(3,), action_spec=BOX2, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    b = cql.build(CQLConfig(hidden_sizes=(8,)), observation_shape=(3,), action_spec=BOX2, seed=7)
    c = cql.build(CQLConfig(hidden_sizes=(8,)), observation_shape=(3,), action_spec=BOX2, seed=8)
    sa, sb, sc = (p.loss_module.state_dict() for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    # each critic copy gets its own weights (torch's default init), the target starts equal to them
    w = sa["qvalue_network_params.module.0.weight"]
    assert not torch.equal(w[0], w[1])
    assert torch.equal(w, sa["target_qvalue_network_params.module.0.weight"])
    # with CORL's orthogonal init too: every copy re-initialised orthogonally, the targets copied after it
    o = cql.build(CQLConfig(hidden_sizes=(8,), orthogonal_init=True), observation_shape=(3,), action_spec=BOX2,
                  seed=7).loss_module.state_dict()
    ow = o["qvalue_network_params.module.0.weight"]
    assert not torch.equal(ow[0], ow[1]) and not torch.equal(ow, w)
    assert torch.equal(ow, o["target_qvalue_network_params.module.0.weight"])
    # 8 outputs x fewer inputs (observation + action), orthogonal with gain sqrt(2): W^T W = 2 I
    assert ow.shape[1] == 8 and ow.shape[2] < 8
    assert torch.allclose(ow[0].T @ ow[0], 2 * torch.eye(ow.shape[2]), atol=1e-5)
    assert torch.count_nonzero(o["qvalue_network_params.module.0.bias"]) == 0


def test_cql_actor_std_option_builds_d3rlpys_std():
    """cql.actor_std: "exp" puts exp(clamp(raw, -20, 2)) (floored at scale_lb) after the actor's MLP, with the
    same weights as "softplus" (one seed, same init); a bad value is a UserError naming the key."""
    from tensordict import TensorDict

    from offrl.errors import UserError

    built = {std: cql.build(CQLConfig(hidden_sizes=(8,), actor_std=std), observation_shape=(3,), action_spec=BOX2,
                            seed=7) for std in ("softplus", "exp")}
    mlp = built["exp"].loss_module.actor_network.module[0].module[0]
    obs = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 20
    td = TensorDict({"observation": obs}, [64])
    with torch.no_grad():
        out = mlp(obs)
        raw = out[:, out.shape[1] // 2:]
        scales = {std: p.loss_module.actor_network.get_dist_params(td.clone())["scale"] for std, p in built.items()}
    torch.testing.assert_close(scales["exp"], raw.clamp(-20, 2).exp().clamp_min(1e-4))
    assert not torch.allclose(scales["exp"], scales["softplus"])
    assert torch.equal(mlp[0].weight, built["softplus"].loss_module.actor_network.module[0].module[0][0].weight)
    with pytest.raises(UserError, match="cql.actor_std: must be one of softplus, exp"):
        cql.build(CQLConfig(actor_std="log"), observation_shape=(3,), action_spec=BOX2, seed=0)


def test_specs_from_bundled_datasets(tmp_path):
    from offrl.data import load_dataset

    cart = load_dataset("offrl/cartpole/random-v0", cache_dir=tmp_path)
    spec = action_spec_from_dataset(cart)
    assert isinstance(spec, Categorical) and spec.space.n == 2
    pend = load_dataset("offrl/pendulum/random-v0", cache_dir=tmp_path)
    spec = action_spec_from_dataset(pend)
    assert spec.space.low.tolist() == [-2.0] and spec.space.high.tolist() == [2.0]
    parts = dqn.build_from_dataset(DQNConfig(hidden_sizes=(8,)), cart, seed=0)
    assert torch.isfinite(parts.loss_module(cart.replay_buffer(4, seed=0).sample())["loss"])
