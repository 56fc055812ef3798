"""The discrete Q losses' closed-form gradients (offrl.algos.q_grad) against autograd on the same loss: the fused
losses take the closed-form path where they can, give the same values and gradients (each loss term on its own
too), and fall back to autograd where it cannot apply."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Categorical, Composite, OneHot
from torchrl.modules import MLP, QValueActor

from offrl.algos.fused_q import FusedDQNLoss, FusedWeightedDiscreteCQLLoss

B, OBS = 48, 5


def _loss(kind: str, action_space: str = "categorical", activation=None, **cfg):
    torch.manual_seed(2)
    spec = OneHot(3) if action_space == "one-hot" else Categorical(3)
    qnet = QValueActor(module=MLP(in_features=OBS, num_cells=[16, 12], out_features=3,
                                  activation_class=torch.nn.ReLU),
                       spec=Composite(action=spec), in_keys=["observation"])
    if kind == "dqn":
        loss = FusedDQNLoss(qnet, delay_value=True, action_space=action_space, **cfg)
    else:
        loss = FusedWeightedDiscreteCQLLoss(qnet, delay_value=True, action_space=action_space, min_q_weight=3.0, **cfg)
    loss.make_value_estimator(gamma=0.97)
    if activation is not None:
        mlp = next(m for m in loss.value_network.modules() if type(m).__name__ == "MLP")
        for name, child in mlp.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(mlp, name, activation())
        loss._init_fast_path()
        loss.__dict__.pop("_step_cache", None)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for t in loss.target_value_network_params.values(True, True):
            t.add_(0.1 * torch.randn(t.shape, generator=g))
    return loss


def _batch(action_space: str) -> TensorDict:
    g = torch.Generator().manual_seed(9)
    idx = torch.randint(0, 3, (B,), generator=g)
    terminated = torch.rand(B, 1, generator=g) < 0.25
    return TensorDict({
        "observation": torch.randn(B, OBS, generator=g),
        "action": torch.nn.functional.one_hot(idx, 3) if action_space == "one-hot" else idx,
        "next": {"observation": torch.randn(B, OBS, generator=g), "reward": torch.randn(B, 1, generator=g),
                 "terminated": terminated, "done": terminated.clone()},
    }, batch_size=[B])


def _terms(kind: str) -> list[str]:
    return ["loss"] if kind == "dqn" else ["loss_qvalue", "loss_cql"]


def _grads(loss, batch, keys):
    td = batch.clone()
    out = loss(td)
    params = list(loss.value_network_params.values(True, True))
    grads = {k: torch.autograd.grad(out[k], params, retain_graph=True) for k in keys}
    total = sum(out[k] for k in keys)
    grads["total"] = torch.autograd.grad(total, params)
    return out, grads, td


CASES = [("dqn", "categorical", None, {"double_dqn": True, "loss_function": "l1"}),
         ("dqn", "one-hot", None, {"double_dqn": False, "loss_function": "smooth_l1"}),
         ("dqn", "categorical", torch.nn.Tanh, {"loss_function": "l2"}),
         ("discrete-cql", "categorical", None, {"loss_function": "l1"}),
         ("discrete-cql", "one-hot", torch.nn.Tanh, {"loss_function": "smooth_l1"}),
         ("discrete-cql", "categorical", None, {"loss_function": "l2"})]


@pytest.mark.parametrize(("kind", "action_space", "activation", "cfg"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2].__name__ if c[2] else 'relu'}-{c[3]}" for c in CASES])
def test_closed_form_equals_autograd(kind, action_space, activation, cfg, monkeypatch):
    loss = _loss(kind, action_space, activation, **cfg)
    batch = _batch(action_space)
    keys = _terms(kind)
    out, grads, td = _grads(loss, batch, keys)
    assert all(type(out[k].grad_fn).__name__ == "ClosedFormLossBackward" for k in keys)
    monkeypatch.setattr(type(loss), "_closed_form", lambda self, td: False)
    ref_out, ref_grads, ref_td = _grads(loss, batch, keys)
    assert all(type(ref_out[k].grad_fn).__name__ != "ClosedFormLossBackward" for k in keys)
    assert set(out.keys()) == set(ref_out.keys())
    for key in out.keys():
        torch.testing.assert_close(out[key].detach(), ref_out[key].detach(), rtol=1e-6, atol=1e-7)
    for name in ("td_error", "pred_val"):
        if ref_td.get(name, None) is not None:
            torch.testing.assert_close(td.get(name).detach(), ref_td.get(name).detach(), rtol=1e-6, atol=1e-7)
    for key, ref in ref_grads.items():
        for g, r in zip(grads[key], ref, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)
    assert any(float(g.abs().max()) > 0 for g in grads["total"])


def test_closed_form_accumulates_like_autograd():
    """``backward()`` twice adds, as autograd does (the optimizer reads ``.grad``)."""
    loss = _loss("discrete-cql")
    batch = _batch("categorical")
    params = list(loss.value_network_params.values(True, True))
    out = loss(batch.clone())
    (out["loss_qvalue"] + out["loss_cql"]).backward()
    once = [p.grad.clone() for p in params]
    out = loss(batch.clone())
    (out["loss_qvalue"] + out["loss_cql"]).backward()
    for p, g in zip(params, once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g)


def test_where_it_cannot_apply_autograd_runs():
    batch = _batch("categorical")
    elu = _loss("dqn", activation=torch.nn.ELU)
    assert type(elu(batch.clone())["loss"].grad_fn).__name__ != "ClosedFormLossBackward"
    loss = _loss("dqn")
    with torch.no_grad():
        assert not loss(batch.clone())["loss"].requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(loss(batch.clone())["loss"].grad_fn).__name__ != "ClosedFormLossBackward"
    assert type(loss(batch.clone())["loss"].grad_fn).__name__ == "ClosedFormLossBackward"


def test_closed_form_follows_the_parameters_when_they_are_replaced(monkeypatch):
    """``.double()`` replaces the parameters: the steps the closed form reads are looked up again (gradients in
    float64, equal to autograd's)."""
    loss = _loss("discrete-cql")
    batch = _batch("categorical")
    loss(batch.clone())  # caches the float32 steps
    loss.double()
    batch64 = batch.apply(lambda t: t.double() if t.is_floating_point() else t)
    out, grads, _ = _grads(loss, batch64, _terms("discrete-cql"))
    assert out["loss_qvalue"].dtype == torch.float64
    assert type(out["loss_cql"].grad_fn).__name__ == "ClosedFormLossBackward"
    monkeypatch.setattr(type(loss), "_closed_form", lambda self, td: False)
    _, ref, _ = _grads(loss, batch64, _terms("discrete-cql"))
    for g, r in zip(grads["total"], ref["total"], strict=True):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
