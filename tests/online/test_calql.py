"""Cal-QL: the clamp of the pushed-down policy Q-values by the Monte-Carlo return, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from offrl.algos import cql
from offrl.algos.calql import CalQLLoss, build_from_dataset, calibrate
from offrl.errors import UserError

CFG = cql.CQLConfig(hidden_sizes=(16, 16), num_random=1, min_q_weight=2.0, fused=False)


def test_calibrate_hand_numbers():
    q = torch.tensor([[[1.0, -2.0, 3.0], [-5.0, 0.5, 0.0]]])  # [critics=1, B=2, n=3]
    clamped, rate = calibrate(q, torch.tensor([[0.0], [1.0]]))
    assert clamped.tolist() == [[[1.0, 0.0, 3.0], [1.0, 1.0, 1.0]]]
    assert float(rate) == pytest.approx(4 / 6)
    q.requires_grad_(True)
    clamped, _ = calibrate(q, torch.tensor([0.0, 1.0]))
    clamped.sum().backward()  # clamped entries pass no gradient to the critic
    assert q.grad.tolist() == [[[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]]


def test_matches_cql_when_the_clamp_is_inactive(pendulum_medium):
    base = cql.build_from_dataset(CFG, pendulum_medium, seed=0).loss_module
    cal = build_from_dataset(CFG, pendulum_medium, seed=0).loss_module
    assert isinstance(cal, CalQLLoss) and isinstance(cal, cql.OfflineCQLLoss)
    batch = pendulum_medium.data[:32].to_tensordict()
    low = batch.clone()
    low["mc_return"] = torch.full((32, 1), -1e9)  # every Q-value is above this bound
    torch.manual_seed(0)
    expected = base(batch.clone())
    torch.manual_seed(0)
    got = cal(low)
    for key in expected.keys():
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    assert float(got["calql_bound_rate"]) == 0.0
    cal.calibrated = False  # off: the parent's penalty whatever the returns
    batch["mc_return"] = torch.full((32, 1), 1e9)
    torch.manual_seed(0)
    torch.testing.assert_close(cal(batch)["loss_cql"], expected["loss_cql"], rtol=0, atol=0)


def test_clamp_by_hand_on_a_constant_critic(pendulum_medium):
    """Critics that output Q = 0 everywhere, one state, one proposal per source (Pendulum: 1-d actions).

    Unclamped gap: g0 = log(e^{0 + log 2} + e^{-lp1} + e^{-lp2}) - 0 = log(2 + S), S = e^{-lp1} + e^{-lp2}
    (uniform density 1/2, policy log-densities lp1, lp2). With a bound M > 0 both policy values become M:
    gM = log(2 + e^M S) = log(2 + e^M (e^{g0} - 2)). With M < 0 nothing changes."""
    loss = build_from_dataset(CFG, pendulum_medium, seed=0).loss_module
    with torch.no_grad():
        for p in loss.qvalue_network_params.values(True, True):
            p.zero_()
    row = pendulum_medium.data[5:6].to_tensordict()

    def gaps(mc):
        td = loss._unit_actions(row.clone())
        td["mc_return"] = torch.full((1, 1), mc)
        loss.q_loss(td)
        torch.manual_seed(7)
        return loss.cql_gaps(td)

    loss.calibrated = False
    g0 = gaps(0.0)
    loss.calibrated = True
    m = 1.5
    expected = math.log(2 + math.exp(m) * (math.exp(float(g0[0].detach())) - 2))
    torch.testing.assert_close(gaps(m), torch.full((2,), expected), rtol=1e-5, atol=1e-5)
    assert float(loss._bound_rate) == 1.0  # both policy proposals were below the bound
    torch.testing.assert_close(gaps(-1.5), g0)  # Q = 0 >= -1.5: inactive
    assert float(loss._bound_rate) == 0.0


def test_needs_mc_return(pendulum_medium):
    loss = build_from_dataset(CFG, pendulum_medium, seed=0).loss_module
    with pytest.raises(UserError, match="mc_return"):
        loss(pendulum_medium.data[:4].to_tensordict().exclude("mc_return"))



def test_fused_loss_becomes_calql_with_the_same_outputs(pendulum_medium):
    """The default CQL loss is the fused one; Cal-QL turns it into FusedCalQLLoss, which runs the plain
    (calibrated) forward: with an inactive clamp it matches the fused loss (same math, 1e-5)."""
    fused_cfg = cql.CQLConfig(hidden_sizes=(16, 16), num_random=1, fused=True)
    base = cql.build_from_dataset(fused_cfg, pendulum_medium, seed=0).loss_module
    cal = build_from_dataset(fused_cfg, pendulum_medium, seed=0).loss_module
    assert type(cal).__name__ == "FusedCalQLLoss" and isinstance(cal, CalQLLoss)
    batch = pendulum_medium.data[:32].to_tensordict()
    batch["mc_return"] = torch.full((32, 1), -1e9)
    torch.manual_seed(0)
    expected = base(batch.clone())
    torch.manual_seed(0)
    got = cal(batch.clone())
    for key in ("loss_qvalue", "loss_cql", "loss_actor", "cql_gap"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5)
    batch["mc_return"] = torch.full((32, 1), 1e3)
    assert float(cal(batch)["calql_bound_rate"]) == 1.0
