"""``update_order="critic_first"`` (d3rlpy's order): the critics step on the full loss, then the actor and
temperature step on losses recomputed against the updated critics."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Categorical
from torchrl.objectives import CQLLoss

from offrl.algos import cql, discrete_cql
from offrl.errors import UserError
from offrl.trainers import CQLTrainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

OBS, BATCH = 5, 16
BOX = Bounded(-2 * torch.ones(3), 2 * torch.ones(3), (3,))


def _batch(seed: int = 1) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    terminated = torch.zeros(BATCH, 1, dtype=torch.bool)
    terminated[::5] = True
    return TensorDict({
        "observation": torch.randn(BATCH, OBS, generator=g),
        "action": torch.rand(BATCH, 3, generator=g) * 3.6 - 1.8,
        "next": {"observation": torch.randn(BATCH, OBS, generator=g), "reward": torch.randn(BATCH, 1, generator=g),
                 "done": terminated.clone(), "terminated": terminated},
    }, [BATCH])


def _parts(fused: bool = True, update_order: str = "critic_first", **cfg):
    config = cql.CQLConfig(hidden_sizes=(32, 32), num_random=3, fused=fused, update_order=update_order, **cfg)
    return cql.build(config, observation_shape=(OBS,), action_spec=BOX, seed=0)


def _trainer(parts, **kwargs) -> CQLTrainer:
    options = dict(loss_module=parts.loss_module, optimizer=parts.optimizer, target_net_updater=parts.target_net_updater,
                   replay_buffer=object(), offline_steps=5, progress_bar=False, handle_signals=False,
                   **parts.trainer_kwargs)
    options.update(kwargs)
    return CQLTrainer(**options)


def _named(params) -> dict[str, torch.Tensor]:
    return {".".join(k) if isinstance(k, tuple) else k: v.detach().clone() for k, v in params.items(True, True)}


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("lagrange", [False, True])
def test_critic_first_step_is_the_two_pass_loop(fused, lagrange):
    """One trainer step equals the loop written out: full loss, critic terms backward, step the critics (and
    alpha'); actor and temperature losses from ``actor_forward`` against the new critics, backward, step them."""
    data = _batch()
    ref, mine = _parts(fused, with_lagrange=lagrange), _parts(fused, with_lagrange=lagrange)
    assert mine.trainer_kwargs["update_order"] == "critic_first"
    trainer = _trainer(mine)
    loss, opt = ref.loss_module, ref.optimizer
    critic = {id(p) for p in loss.qvalue_network_params.values(True, True)} | (
        {id(loss.log_alpha_prime)} if lagrange else set())

    def step_only(keep: set[int]) -> None:
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) not in keep:
                    p.grad = None
        opt.step()
        opt.zero_grad(set_to_none=True)

    for step in range(3):
        torch.manual_seed(step)
        out = loss(data.clone())
        (out["loss_qvalue"] + out["loss_cql"] + (out["loss_alpha_prime"] if lagrange else 0)).backward()
        step_only(critic)
        actor_out = loss.actor_forward(data.clone())
        (actor_out["loss_actor"] + actor_out["loss_alpha"]).backward()
        step_only({id(p) for p in loss.actor_network_params.values(True, True)} | {id(loss.log_alpha)})
        ref.target_net_updater.step()
        torch.manual_seed(step)
        metrics = trainer.update(data.clone())
        torch.testing.assert_close(metrics["loss_qvalue"], out["loss_qvalue"].detach())
        torch.testing.assert_close(metrics["loss_actor"], actor_out["loss_actor"].detach())
    assert set(metrics.keys()) >= {"grad_norm_critic", "grad_norm_actor", "grad_norm_alpha", "grad_norm"}
    for key, value in ref.loss_module.state_dict().items():
        torch.testing.assert_close(mine.loss_module.state_dict()[key], value, msg=key)


def test_critic_first_differs_from_joint_only_in_the_actor():
    """From the same state and draws, both orders step the critics alike (the first pass is the joint loss);
    the actor differs, because it is stepped against the updated critics."""
    data = _batch()
    joint, first = _parts(update_order="joint"), _parts()
    t_joint, t_first = _trainer(joint), _trainer(first)
    torch.manual_seed(0)
    t_joint.update(data.clone())
    torch.manual_seed(0)
    t_first.update(data.clone())
    critics = (_named(joint.loss_module.qvalue_network_params), _named(first.loss_module.qvalue_network_params))
    for key in critics[0]:
        torch.testing.assert_close(critics[1][key], critics[0][key], msg=key)
    actors = (_named(joint.loss_module.actor_network_params), _named(first.loss_module.actor_network_params))
    assert any(not torch.allclose(actors[0][k], actors[1][k]) for k in actors[0])


def test_fused_actor_forward_matches_reference():
    """The fused loss's actor pass gives the reference's outputs and gradients from the same draws (with the
    TD3+BC regulariser on)."""
    data = _batch()
    ref, fused = _parts(False, actor_bc_weight=2.0), _parts(True, actor_bc_weight=2.0)
    assert fused.loss_module.fast_path
    outs = []
    for parts in (ref, fused):
        torch.manual_seed(4)
        out = parts.loss_module.actor_forward(data.clone())
        (out["loss_actor"] + out["loss_alpha"] + out["loss_actor_bc"]).backward()
        outs.append((out, {k: v.grad.clone() for k, v in _grads(parts.loss_module).items()}))
    for key in ("loss_actor", "loss_actor_bc", "loss_alpha", "alpha", "entropy"):
        torch.testing.assert_close(outs[1][0][key], outs[0][0][key], rtol=1e-5, atol=1e-6, msg=key)
    assert outs[0][1].keys() == outs[1][1].keys() and outs[0][1]
    for key, grad in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][key], grad, rtol=1e-4, atol=1e-6, msg=key)


def _grads(loss) -> dict[str, torch.Tensor]:
    named = dict(loss.actor_network_params.items(True, True))
    named["log_alpha"] = loss.log_alpha
    grads = {str(k): v for k, v in named.items() if v.grad is not None}
    assert not any(p.grad is not None for p in loss.qvalue_network_params.values(True, True))  # critics detached
    return grads


def test_critic_first_with_torchrls_own_loss():
    """A plain torchrl CQLLoss (no offrl actor pass) trains critic-first through its own actor losses."""
    parts = _parts(update_order="joint")
    loss = CQLLoss(parts.loss_module.actor_network, parts.loss_module.qvalue_network, loss_function="l2")
    loss.make_value_estimator(gamma=0.99)
    opt = torch.optim.Adam(loss.parameters(), lr=1e-3)
    trainer = CQLTrainer(loss_module=loss, optimizer=opt, replay_buffer=object(), offline_steps=1,
                         progress_bar=False, handle_signals=False, update_order="critic_first")
    data = _batch()
    data["action"] = data["action"].clamp(-0.99, 0.99)
    state = copy.deepcopy(loss.state_dict()), copy.deepcopy(opt.state_dict()), torch.get_rng_state()
    critic_only, actor_only = _pass_norms(trainer, data)
    loss.load_state_dict(state[0])
    opt.load_state_dict(state[1])
    torch.set_rng_state(state[2])
    before = _named(loss.actor_network_params)
    metrics = trainer.update(data)
    after = _named(loss.actor_network_params)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert torch.isfinite(metrics["loss_actor"]) and torch.isfinite(metrics["loss_qvalue"])
    # one unnamed group, stepped in both passes: its norm covers both passes' gradients
    torch.testing.assert_close(metrics["grad_norm_0"], torch.hypot(critic_only, actor_only), rtol=1e-4, atol=0)
    assert metrics["grad_norm"] == metrics["grad_norm_0"]


def _pass_norms(trainer: CQLTrainer, data: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient norm of each pass of a critic-first step, worked out by hand (the step is taken)."""
    norms = []
    for forward, only in trainer._passes():
        total, _ = forward(data)
        trainer.optimizer.zero_grad(set_to_none=True)
        total.backward()
        for p in trainer.loss_module.parameters():
            if id(p) not in only:
                p.grad = None
        grads = [p.grad for p in trainer.loss_module.parameters() if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        trainer.optimizer.step()
    return norms[0], norms[1]


def test_timed_step_equals_untimed_step():
    """log_timings times each pass's pieces and leaves the same parameters as the plain step."""
    data = _batch()
    a, b = _parts(), _parts()
    plain, timed = _trainer(a), _trainer(b, log_timings=True)
    timings = {"forward": 0.0, "backward": 0.0, "optim": 0.0, "target": 0.0}
    for step in range(2):
        torch.manual_seed(step)
        plain.update(data.clone())
        torch.manual_seed(step)
        timed._timed_update(timed._scaled(data.clone()), timings)
    for key, value in a.loss_module.state_dict().items():
        assert torch.equal(b.loss_module.state_dict()[key], value), key
    assert all(timings[k] > 0 for k in ("forward", "backward", "optim"))


def test_bad_update_order_is_refused():
    parts = _parts(update_order="joint")
    with pytest.raises(UserError, match="update_order must be one of joint, critic_first, got 'critic'"):
        _trainer(parts, update_order="critic")
    with pytest.raises(UserError, match="cuda_graph captures one joint step"):
        _trainer(parts, update_order="critic_first", cuda_graph=True)
    with pytest.raises(UserError, match="cql.update_order: must be one of joint, critic_first"):
        _parts(update_order="actor_first")
    dparts = discrete_cql.build(discrete_cql.DiscreteCQLConfig(hidden_sizes=(8,)), observation_shape=(OBS,),
                                action_spec=Categorical(3), seed=0)
    with pytest.raises(UserError, match="discrete CQL has no actor"):
        CQLTrainer(loss_module=dparts.loss_module, optimizer=dparts.optimizer, replay_buffer=object(),
                   offline_steps=1, progress_bar=False, handle_signals=False, update_order="critic_first")
