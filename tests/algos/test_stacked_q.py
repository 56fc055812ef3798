"""The batched loss of several seeds (offrl.algos.stacked_q) against each seed's own loss: per seed, the same
loss values and the same gradients (1e-5 relative, float32), and parameters that stay each seed's own."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Categorical

from offrl.algos import discrete_cql, dqn
from offrl.algos.stacked_q import StackedQLoss

SEEDS = (0, 1, 5)
B, OBS = 64, 4


def _losses(kind: str, **cfg):
    if kind == "dqn":
        config = dqn.DQNConfig(hidden_sizes=(32, 24), **cfg)
        return [dqn.build(config, observation_shape=(OBS,), action_spec=Categorical(3), seed=s).loss_module
                for s in SEEDS]
    config = discrete_cql.DiscreteCQLConfig(hidden_sizes=(32, 24), min_q_weight=2.5, **cfg)
    return [discrete_cql.build(config, observation_shape=(OBS,), action_spec=Categorical(3), seed=s).loss_module
            for s in SEEDS]


def _batch(gen: torch.Generator, n: int) -> TensorDict:
    """``n`` seeds' batches [n, B]: random transitions, some terminated, some truncated."""
    terminated = torch.rand(n, B, 1, generator=gen) < 0.2
    truncated = (torch.rand(n, B, 1, generator=gen) < 0.1) & ~terminated
    return TensorDict({
        "observation": torch.randn(n, B, OBS, generator=gen),
        "action": torch.randint(0, 3, (n, B), generator=gen),
        "next": {"observation": torch.randn(n, B, OBS, generator=gen),
                 "reward": torch.randn(n, B, 1, generator=gen),
                 "terminated": terminated, "truncated": truncated, "done": terminated | truncated},
    }, batch_size=[n, B])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


CASES = [("dqn", {"double_dqn": True}), ("dqn", {"double_dqn": False, "loss_function": "smooth_l1"}),
         ("discrete-cql", {}), ("discrete-cql", {"loss_function": "l1"})]


@pytest.mark.parametrize(("kind", "cfg"), CASES, ids=[f"{k}-{c}" for k, c in CASES])
def test_each_seed_gets_its_own_loss_and_gradients(kind, cfg):
    gen = torch.Generator().manual_seed(7)
    losses = _losses(kind, **cfg)
    # targets apart from the online networks, so a mix-up of the two would show
    for loss in losses:
        for t in loss.target_value_network_params.values(True, True):
            t.data.add_(0.05 * torch.randn(t.shape, generator=gen))
    before = [{k: v.detach().clone() for k, v in loss.state_dict().items()} for loss in losses]
    stacked = StackedQLoss(losses)
    # stacking leaves every seed's values as they were: its parameters now view its slice
    for loss, saved in zip(losses, before, strict=True):
        for key, value in loss.state_dict().items():
            assert torch.equal(value, saved[key]), key
    batch = _batch(gen, len(SEEDS))

    total, metrics, _ = stacked(batch)
    grads = torch.autograd.grad(total, stacked.params)

    for i, loss in enumerate(losses):
        own = batch[i].clone()
        out = loss(own)
        if kind == "dqn":
            reference, ref_metrics = out["loss"], {"loss": out["loss"]}
        else:
            reference = out["loss_qvalue"] + out["loss_cql"]
            ref_metrics = {k: out[k] for k in ("loss_qvalue", "loss_cql", "cql_gap", "target_value")}
        ref_metrics["td_error"] = own.get(loss.tensor_keys.priority).mean()
        for key, value in ref_metrics.items():
            assert _rel(metrics[key][i], value.reshape(())) < 1e-5, key
        own_params = [loss.value_network_params.get(k) for k in stacked.keys]
        ref_grads = torch.autograd.grad(reference, own_params)
        for key, g, ref in zip(stacked.keys, grads, ref_grads, strict=True):
            assert _rel(g[i], ref) < 1e-5, (i, key)
    # the seeds really differ (initialisation from their own seeds): the test can tell them apart
    assert _rel(grads[0][0], grads[0][1]) > 1e-2


def test_a_step_on_the_stack_moves_each_seeds_own_parameters():
    losses = _losses("dqn")
    stacked = StackedQLoss(losses)
    policy_param = losses[1].value_network_params.get(stacked.keys[0])
    with torch.no_grad():
        stacked.params[0][1].add_(1.0)
        stacked.targets[0][2].sub_(1.0)
    assert torch.equal(policy_param, stacked.params[0][1])
    assert torch.equal(losses[2].target_value_network_params.get(stacked.keys[0]), stacked.targets[0][2])
    # loading a seed's state writes into its slice of the stack
    state = losses[0].state_dict()
    losses[0].load_state_dict({k: torch.zeros_like(v) for k, v in state.items()})
    assert float(stacked.params[0][0].detach().abs().sum()) == 0.0 and float(stacked.params[0][1].detach().abs().sum()) > 0


@pytest.mark.parametrize(("cfg", "message"), [({"fused": False}, "fused"), ({"dueling": True}, "MLP")])
def test_refuses_what_it_cannot_batch(cfg, message):
    with pytest.raises(ValueError, match=message):
        StackedQLoss(_losses("dqn", **cfg))
    mixed = _losses("dqn")[:1] + _losses("discrete-cql")[1:]
    with pytest.raises(ValueError, match="same algorithm"):
        StackedQLoss(mixed)


def _swap_activations(losses, activation) -> None:
    """Replace the Q-networks' ReLUs by ``activation()`` (then the losses' plans are rebuilt)."""
    for loss in losses:
        mlp = next(m for m in loss.value_network.modules() if type(m).__name__ == "MLP")
        for name, child in mlp.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(mlp, name, activation())
        loss._init_fast_path()


MANUAL_CASES = CASES + [("dqn", {"double_dqn": False, "loss_function": "l2"}),
                        ("discrete-cql", {"loss_function": "smooth_l1", "activation": "tanh"})]


@pytest.mark.parametrize(("kind", "cfg"), MANUAL_CASES, ids=[f"{k}-{c}" for k, c in MANUAL_CASES])
def test_gradients_without_autograd_equal_autograds(kind, cfg):
    """``gradients`` (closed-form loss derivative, layer backward as batched matmuls) writes into ``.grad`` what
    autograd computes from ``__call__``'s loss, and returns the same metrics and Q."""
    gen = torch.Generator().manual_seed(3)
    activation = cfg.pop("activation", None)
    losses = _losses(kind, **cfg)
    if activation == "tanh":  # swap the MLP's ReLUs for Tanh before stacking
        _swap_activations(losses, torch.nn.Tanh)
    for loss in losses:
        for t in loss.target_value_network_params.values(True, True):
            t.data.add_(0.05 * torch.randn(t.shape, generator=gen))
    stacked = StackedQLoss(losses)
    assert stacked.manual
    if activation == "tanh":
        assert torch.tanh in stacked.steps
    batch = _batch(gen, len(SEEDS))
    total, ref_metrics, ref_q = stacked(batch)
    ref_grads = torch.autograd.grad(total, stacked.params)
    metrics, q = stacked.gradients(batch)
    assert torch.equal(q, ref_q)
    assert list(metrics) == list(ref_metrics)
    for key, value in metrics.items():
        assert _rel(value, ref_metrics[key]) < 1e-6, key
    for key, p, ref in zip(stacked.keys, stacked.params, ref_grads, strict=True):
        assert p.grad is not None and _rel(p.grad, ref) < 1e-5, key
    # a second call overwrites (does not add to) the gradients
    stacked.gradients(batch)
    for p, ref in zip(stacked.params, ref_grads, strict=True):
        assert _rel(p.grad, ref) < 1e-5


def test_an_activation_without_a_known_backward_falls_back_to_autograd():
    losses = _losses("dqn")
    _swap_activations(losses, torch.nn.ELU)
    stacked = StackedQLoss(losses)
    assert not stacked.manual
