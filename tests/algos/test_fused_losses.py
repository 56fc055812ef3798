"""The fused losses compute what their reference losses compute: same losses, same gradients (issue 6,
section 5). FusedOfflineCQLLoss vs OfflineCQLLoss, FusedWeightedDiscreteCQLLoss vs WeightedDiscreteCQLLoss,
FusedDQNLoss vs torchrl's DQNLoss.

Each pair runs on the same parameters, batch and random state. In float64 they agree to ~1e-12 (the
algebra is identical); in float32 within 1e-5 relative (norm of the difference over the norm of the
reference, per loss term: element-wise ratios are meaningless for gradients that cancel to ~0).
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from tensordict.nn.distributions import NormalParamExtractor
from torchrl.data import Bounded, Categorical, Composite, OneHot
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ProbabilisticActor, QValueActor, TanhNormal, ValueOperator
from torchrl.objectives import DQNLoss

from offrl.algos import kernels as fused_module
from offrl.algos._common import ClampedExpScale
from offrl.algos.cql_loss import OfflineCQLLoss
from offrl.algos.discrete_cql_loss import WeightedDiscreteCQLLoss
from offrl.algos.fused_cql import FusedOfflineCQLLoss
from offrl.algos.fused_q import FusedDQNLoss, FusedWeightedDiscreteCQLLoss

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

OBS, ACT, HIDDEN, BATCH = 5, 3, 32, 16


@pytest.fixture(autouse=True, params=["onednn", "onednn-mm", "torch-matmul"])
def matmul_route(request, monkeypatch):
    """Every comparison runs on each route offrl.algos.routes chooses between by measuring: every float32
    CPU layer through oneDNN (weight gradients through oneDNN, or through torch's mm), and every one through
    torch's own addmm."""
    if request.param == "torch-matmul":
        monkeypatch.setattr(fused_module, "_ONEDNN", None)
        monkeypatch.setenv("OFFRL_KERNEL_ROUTE", "torch")
    else:  # every layer on this route, whatever this machine's measurements chose (offrl.algos.routes)
        monkeypatch.setenv("OFFRL_KERNEL_ROUTE", request.param)
    return request.param


def test_onednn_route_is_live_where_torch_has_onednn(matmul_route):
    if matmul_route == "torch-matmul" or not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN route off in this run (torch-matmul parameter or a torch without oneDNN)")
    assert fused_module._onednn() is not None


@pytest.mark.parametrize("relu", [True, False])
def test_onednn_linear_matches_autograd(relu, matmul_route):
    if matmul_route == "torch-matmul" or fused_module._onednn() is None:
        pytest.skip("oneDNN route off")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 40, generator=g, requires_grad=True)
    w = torch.randn(24, 40, generator=g, requires_grad=True)
    b = torch.randn(24, generator=g, requires_grad=True)
    upstream = torch.randn(300, 24, generator=g)
    y = fused_module._OneDNNLinear.apply(x, w, b, relu, matmul_route == "onednn-mm")
    grads = torch.autograd.grad(y, (x, w, b), upstream)
    y_ref = torch.nn.functional.linear(x, w, b)
    y_ref = torch.relu(y_ref) if relu else y_ref
    grads_ref = torch.autograd.grad(y_ref, (x, w, b), upstream)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _batch(n: int, obs_dim: int, action: torch.Tensor, seed: int = 1) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    dtype = torch.get_default_dtype()
    terminated = torch.zeros(n, 1, dtype=torch.bool)
    terminated[::5] = True  # some terminal transitions: the target must not bootstrap through them
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g, dtype=dtype),
            "action": action,
            "next": {
                "observation": torch.randn(n, obs_dim, generator=g, dtype=dtype),
                "reward": torch.randn(n, 1, generator=g, dtype=dtype),
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        [n],
    )


def _cql_nets(critic=None, tail=None):
    torch.manual_seed(0)
    spec = Bounded(-torch.ones(ACT), torch.ones(ACT), (ACT,))
    actor_net = torch.nn.Sequential(
        MLP(num_cells=[HIDDEN, HIDDEN], out_features=2 * ACT, activation_class=torch.nn.ReLU),
        tail if tail is not None else NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1),
    )
    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high, "tanh_loc": False},
        default_interaction_type=ExplorationType.RANDOM,
    )
    qvalue = ValueOperator(
        in_keys=["observation", "action"], out_keys=["state_action_value"],
        module=critic if critic is not None else MLP(num_cells=[HIDDEN, HIDDEN], out_features=1,
                                                     activation_class=torch.nn.ReLU),
    )
    g = torch.Generator().manual_seed(2)
    data = _batch(BATCH, OBS, torch.rand(BATCH, ACT, generator=g, dtype=torch.get_default_dtype()) * 1.8 - 0.9)
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        td0 = data[:4].clone()
        actor(td0)
        qvalue(td0)
    return actor, qvalue, data


def _pair(ref_cls, fused_cls, nets, kwargs, gamma=0.99):
    """The same loss twice (reference, fused) with identical parameters and perturbed targets."""
    losses = []
    for cls in (ref_cls, fused_cls):
        loss = cls(*copy.deepcopy(nets), **kwargs)
        loss.make_value_estimator(gamma=gamma)
        losses.append(loss)
    losses[1].load_state_dict(losses[0].state_dict())
    for loss in losses:  # make target and online parameters differ, identically on both
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for name, buf in sorted(loss.named_buffers()):
                if name.startswith("target_") and buf.is_floating_point():
                    buf.add_(0.05 * torch.randn(buf.shape, generator=g, dtype=buf.dtype))
    return losses


def _run(loss, data, keys, seed=123):
    """Outputs and per-term gradients (zeros where a term does not reach a parameter)."""
    torch.manual_seed(seed)
    td = data.clone()
    out = loss(td)
    params = list(loss.parameters())
    grads = {}
    for key in keys:
        g = torch.autograd.grad(out[key], params, retain_graph=True, allow_unused=True)
        grads[key] = torch.cat([(torch.zeros_like(p) if gi is None else gi).flatten() for gi, p in zip(g, params, strict=True)])
    return out, grads, td


def _assert_same(ref, fused, rtol):
    (o1, g1, td1), (o2, g2, td2) = ref, fused
    assert set(o1.keys()) == set(o2.keys())
    for key in o1.keys():
        torch.testing.assert_close(o2[key], o1[key], rtol=rtol, atol=rtol * (1 + o1[key].abs().max().item()))
    for key, g in g1.items():
        assert g.norm() > 0, key
        rel = ((g2[key] - g).norm() / g.norm()).item()
        assert rel <= rtol, f"gradient of {key}: relative difference {rel:.2e}"
    torch.testing.assert_close(td2["td_error"], td1["td_error"], rtol=rtol, atol=rtol)


CQL_CASES = list(itertools.product([True, False], [False, True], [False, True]))


def test_cql_smooth_l1_and_temperature():
    actor, qvalue, data = _cql_nets()
    kwargs = dict(loss_function="smooth_l1", num_random=3, temperature=0.7, min_q_weight=2.0, with_lagrange=True,
                  lagrange_thresh=1.0)
    ref, fused = _pair(OfflineCQLLoss, FusedOfflineCQLLoss, (actor, qvalue), kwargs)
    keys = ["loss_actor", "loss_qvalue", "loss_cql", "loss_alpha", "loss_alpha_prime"]
    _assert_same(_run(ref, data, keys), _run(fused, data, keys), 1e-5)


class _Critic(torch.nn.Module):
    """Not an MLP: the fused loss must fall back to torchrl's forward."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(OBS + ACT, 1)

    def forward(self, obs, act):
        return self.linear(torch.cat([obs, act], -1))


def test_cql_falls_back_outside_the_fast_path():
    actor, qvalue, data = _cql_nets(critic=_Critic())
    ref, fused = _pair(OfflineCQLLoss, FusedOfflineCQLLoss, (actor, qvalue), dict(num_random=3))
    assert not fused.fast_path
    keys = ["loss_actor", "loss_qvalue", "loss_cql"]
    _assert_same(_run(ref, data, keys), _run(fused, data, keys), 1e-7)


def _q_nets(action_space: str, action: torch.Tensor):
    torch.manual_seed(0)
    spec = OneHot(3) if action_space == "one-hot" else Categorical(3)
    qnet = QValueActor(
        module=MLP(in_features=OBS, num_cells=[HIDDEN, HIDDEN], out_features=3, activation_class=torch.nn.ReLU),
        spec=Composite(action=spec), in_keys=["observation"],
    )
    data = _batch(BATCH, OBS, action)
    with torch.no_grad():
        qnet(data[:4].clone())
    return qnet, data


def _discrete_action(action_space: str) -> torch.Tensor:
    idx = torch.randint(0, 3, (BATCH,), generator=torch.Generator().manual_seed(3))
    return torch.nn.functional.one_hot(idx, 3) if action_space == "one-hot" else idx


@pytest.mark.parametrize("action_space", ["one-hot", "categorical"])
@pytest.mark.parametrize("loss_function", ["l2", "smooth_l1"])
def test_dqn_matches_torchrl(action_space, loss_function):
    qnet, data = _q_nets(action_space, _discrete_action(action_space))
    ref, fused = _pair(DQNLoss, FusedDQNLoss, (qnet,), dict(loss_function=loss_function, delay_value=True))
    assert fused.fast_path
    _assert_same(_run(ref, data, ["loss"]), _run(fused, data, ["loss"]), 1e-5)


@pytest.mark.parametrize("action_space", ["one-hot", "categorical"])
def test_double_dqn_matches_torchrl(action_space):
    """Double DQN (offrl's default) is on the fast path: the online network picks the next action, the
    target network scores it, as torchrl's DQNLoss(double_dqn=True) does (target and online differ here)."""
    qnet, data = _q_nets(action_space, _discrete_action(action_space))
    ref, fused = _pair(DQNLoss, FusedDQNLoss, (qnet,), dict(delay_value=True, double_dqn=True))
    assert fused.fast_path
    plain = _pair(DQNLoss, FusedDQNLoss, (qnet,), dict(delay_value=True))[1]
    out = _run(fused, data, ["loss"])
    _assert_same(_run(ref, data, ["loss"]), out, 1e-5)
    assert not torch.allclose(out[0]["loss"], _run(plain, data, ["loss"])[0]["loss"])  # not plain DQN's target


def test_discrete_cql_target_network_bootstrap_is_half_dqn():
    """The fused discrete CQL bootstraps from the target network: its TD part is DQN's, halved as torchrl does."""
    qnet, data = _q_nets("categorical", _discrete_action("categorical"))
    dqn, dcql = _pair(DQNLoss, FusedWeightedDiscreteCQLLoss, (qnet,), dict(delay_value=True, action_space="categorical"))
    (o1, g1, _), (o2, g2, _) = _run(dqn, data, ["loss"]), _run(dcql, data, ["loss_qvalue"])
    torch.testing.assert_close(o2["loss_qvalue"], 0.5 * o1["loss"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g2["loss_qvalue"], 0.5 * g1["loss"], rtol=1e-5, atol=1e-7)


def test_bf16_autocast_keeps_outputs_fp32_and_close():
    """bf16 runs the critics' hidden matmuls in bfloat16 only: losses stay float32 and near fp32's."""
    actor, qvalue, data = _cql_nets()
    loss = FusedOfflineCQLLoss(actor, qvalue, num_random=3, with_lagrange=True, lagrange_thresh=5.0)
    loss.make_value_estimator(gamma=0.99)
    assert loss.fast_path
    torch.manual_seed(0)
    ref = loss(data.clone())
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(data.clone())
    for key in ("loss_qvalue", "loss_cql", "loss_actor", "loss_alpha_prime"):
        assert low[key].dtype == torch.float32
        torch.testing.assert_close(low[key], ref[key], rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("with_lagrange,max_q_backup,deterministic_backup", CQL_CASES)
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_offline_cql_matches_offrl_loss(request, with_lagrange, max_q_backup, deterministic_backup, precision):
    """FusedOfflineCQLLoss = offrl's OfflineCQLLoss (authors' penalty, rescaled actions), fused."""
    if precision == "float64":
        request.getfixturevalue("float64")
    actor, qvalue, data = _cql_nets()
    data["action"] = data["action"] * 2.0  # a [-2, 2] box, rescaled inside the loss
    bound = 2.0 * torch.ones(ACT)
    kwargs = dict(loss_function="l2", num_random=4, with_lagrange=with_lagrange, lagrange_thresh=5.0,
                  max_q_backup=max_q_backup, deterministic_backup=deterministic_backup, min_q_weight=5.0,
                  action_low=-bound, action_high=bound)
    ref, fused = _pair(OfflineCQLLoss, FusedOfflineCQLLoss, (actor, qvalue), kwargs)
    assert fused.fast_path and fused._actor is not None  # the actor runs as a plan on its parameters too
    keys = ["loss_actor", "loss_actor_bc", "loss_qvalue", "loss_cql", "loss_alpha"]
    if with_lagrange:
        keys.append("loss_alpha_prime")
    rtol = 1e-5 if precision == "float32" else 1e-10
    r, f = _run(ref, data, keys), _run(fused, data, keys)
    _assert_same(r, f, rtol)
    torch.testing.assert_close(f[2]["pred_q1"], r[2]["pred_q1"], rtol=rtol, atol=rtol)


class _ActorNet(torch.nn.Module):
    """Distribution parameters from a module that is not Sequential(MLP, extractor): the actor runs as
    torchrl runs it."""

    def __init__(self):
        super().__init__()
        self.mlp = MLP(num_cells=[HIDDEN], out_features=2 * ACT, activation_class=torch.nn.ReLU)
        self.extract = NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1)

    def forward(self, obs):
        return self.extract(self.mlp(obs))


def test_cql_actor_of_another_layout_runs_as_torchrl_runs_it():
    actor, qvalue, data = _cql_nets()
    spec = actor.spec["action"] if "action" in actor.spec.keys() else actor.spec
    other = ProbabilisticActor(
        TensorDictModule(_ActorNet(), in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal,
        distribution_kwargs={"low": -torch.ones(ACT), "high": torch.ones(ACT), "tanh_loc": False},
        default_interaction_type=ExplorationType.RANDOM,
    )
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        other(data[:4].clone())
    ref, fused = _pair(OfflineCQLLoss, FusedOfflineCQLLoss, (other, qvalue), dict(num_random=3, with_lagrange=True))
    assert fused.fast_path and fused._actor is None
    keys = ["loss_actor", "loss_actor_bc", "loss_qvalue", "loss_cql", "loss_alpha_prime"]
    _assert_same(_run(ref, data, keys), _run(fused, data, keys), 1e-5)


def test_cql_critic_reading_action_first_uses_the_plain_path():
    """A critic whose MLP reads (action, observation) cannot split its first layer; still fused, same numbers."""
    actor, _, data = _cql_nets()
    qvalue = ValueOperator(in_keys=["action", "observation"], out_keys=["state_action_value"],
                           module=MLP(num_cells=[HIDDEN, HIDDEN], out_features=1, activation_class=torch.nn.ReLU))
    with torch.no_grad():
        qvalue(data[:4].clone())
    ref, fused = _pair(OfflineCQLLoss, FusedOfflineCQLLoss, (actor, qvalue), dict(num_random=3, with_lagrange=True))
    assert fused.fast_path and not fused._split_first
    keys = ["loss_actor", "loss_qvalue", "loss_cql", "loss_alpha_prime"]
    _assert_same(_run(ref, data, keys), _run(fused, data, keys), 1e-5)


@pytest.mark.parametrize("action_space", ["one-hot", "categorical"])
def test_weighted_discrete_cql_matches_offrl_loss(action_space):
    """FusedWeightedDiscreteCQLLoss = offrl's WeightedDiscreteCQLLoss (target-network TD, weighted penalty)."""
    qnet, data = _q_nets(action_space, _discrete_action(action_space))
    kwargs = dict(loss_function="l2", delay_value=True, action_space=action_space, min_q_weight=4.0)
    ref, fused = _pair(WeightedDiscreteCQLLoss, FusedWeightedDiscreteCQLLoss, (qnet,), kwargs)
    assert fused.fast_path
    keys = ["loss_qvalue", "loss_cql"]
    r, f = _run(ref, data, keys), _run(fused, data, keys)
    _assert_same(r, f, 1e-5)
    torch.testing.assert_close(f[2]["pred_val"], r[2]["pred_val"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("deterministic_backup", [True, False])
def test_cql_mean_backup_action_matches_and_changes_the_target(deterministic_backup):
    """backup_action="mean" (d3rlpy's backup at tanh(mu(s'))): fused = reference, and with the same
    parameters only the TD loss differs from the sampled backup's (same random stream: same penalty, actor)."""
    actor, qvalue, data = _cql_nets()
    keys = ["loss_actor", "loss_qvalue", "loss_cql", "loss_alpha"]
    outs, state = {}, None
    for backup in ("sample", "mean"):
        kwargs = dict(num_random=3, min_q_weight=5.0, backup_action=backup, deterministic_backup=deterministic_backup)
        ref, fused = _pair(OfflineCQLLoss, FusedOfflineCQLLoss, (actor, qvalue), kwargs)
        if state is None:
            state = ref.state_dict()
        ref.load_state_dict(state)
        fused.load_state_dict(state)
        r, f = _run(ref, data, keys), _run(fused, data, keys)
        _assert_same(r, f, 1e-5)
        outs[backup] = r[0]
    assert not torch.allclose(outs["mean"]["loss_qvalue"], outs["sample"]["loss_qvalue"])
    for key in ("loss_actor", "loss_cql", "loss_alpha"):
        torch.testing.assert_close(outs["mean"][key], outs["sample"][key])


def test_cql_exp_actor_std_matches():
    """cql.actor_std=exp (d3rlpy's std, exp of a log std clamped to [-20, 2]) as the actor's tail: fused =
    reference, and the actor's losses differ from the softplus tail's on the same weights."""
    keys = ["loss_actor", "loss_qvalue", "loss_cql", "loss_alpha"]
    kwargs = dict(num_random=3, min_q_weight=5.0)
    outs = {}
    for name, tail in (("exp", ClampedExpScale(scale_lb=0.1)), ("softplus", None)):
        actor, qvalue, data = _cql_nets(tail=tail)
        ref, fused = _pair(OfflineCQLLoss, FusedOfflineCQLLoss, (actor, qvalue), kwargs)
        r = _run(ref, data, keys)
        _assert_same(r, _run(fused, data, keys), 1e-5)
        outs[name] = r[0]
    assert not torch.allclose(outs["exp"]["loss_actor"], outs["softplus"]["loss_actor"])


def test_clamped_exp_scale_is_d3rlpys_std():
    raw = torch.tensor([[0.3, -25.0, 0.0, 3.0], [-1.0, 1.5, -0.5, -9.5]])
    loc, scale = ClampedExpScale(scale_lb=1e-4)(raw)
    torch.testing.assert_close(loc, raw[:, :2])
    torch.testing.assert_close(scale, torch.tensor([[1.0, 7.38905609], [0.60653066, 1e-4]]))
    raw.requires_grad_(True)
    ClampedExpScale()(raw)[1].sum().backward()  # no gradient where the clamp holds
    torch.testing.assert_close(raw.grad[:, 2:], torch.tensor([[1.0, 0.0], [0.60653066, math.exp(-9.5)]]))


def test_cql_backup_action_is_checked():
    actor, qvalue, _ = _cql_nets()
    with pytest.raises(ValueError, match="backup_action"):
        OfflineCQLLoss(actor, qvalue, backup_action="max")


def test_cql_actor_bc_weight_matches_and_adds_the_td3bc_term():
    """actor_bc_weight: fused = reference, and loss_actor grows by w * mean|Q(s,a)| * mse(tanh(mu(s)), a)."""
    actor, qvalue, data = _cql_nets()
    keys = ["loss_actor", "loss_qvalue", "loss_cql"]
    outs, state = {}, None
    for weight in (0.0, 0.4):
        ref, fused = _pair(OfflineCQLLoss, FusedOfflineCQLLoss, (actor, qvalue), dict(num_random=3, actor_bc_weight=weight))
        state = state or ref.state_dict()
        ref.load_state_dict(state)
        fused.load_state_dict(state)
        r, f = _run(ref, data, keys), _run(fused, data, keys)
        _assert_same(r, f, 1e-5)
        outs[weight] = r
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        mean_action = actor(data.clone())["action"]
    q = torch.stack([outs[0.4][2]["pred_q1"], outs[0.4][2]["pred_q2"]])
    expected = 0.4 * q.abs().mean() * (mean_action - data["action"]).pow(2).mean()
    torch.testing.assert_close(outs[0.4][0]["loss_actor"] - outs[0.0][0]["loss_actor"], expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="actor_bc_weight"):
        OfflineCQLLoss(actor, qvalue, actor_bc_weight=-1.0)
