"""The batched continuous CQL loss of several seeds (offrl.algos.stacked_cql) against each seed's own fused
loss: with each seed's generator where its own process generator stands, the same random draws, loss values,
metrics and gradients per seed (1e-5 relative, float32), on the configurations offrl trains."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded

from offrl.algos import cql
from offrl.algos.stacked_cql import StackedCQLLoss, stackable_cql_reason

SEEDS = (0, 1, 5)
B, OBS, ACT = 32, 3, 2


def _parts(**cfg):
    config = cql.CQLConfig(hidden_sizes=(24, 16), num_random=3, **cfg)
    spec = Bounded(low=-2 * torch.ones(ACT), high=2 * torch.ones(ACT), shape=(ACT,))
    return [cql.build(config, observation_shape=(OBS,), action_spec=spec, seed=s) for s in SEEDS]


def _batch(gen: torch.Generator, n: int) -> TensorDict:
    terminated = torch.rand(n, B, 1, generator=gen) < 0.2
    truncated = (torch.rand(n, B, 1, generator=gen) < 0.1) & ~terminated
    return TensorDict({
        "observation": torch.randn(n, B, OBS, generator=gen),
        "action": (torch.rand(n, B, ACT, generator=gen) * 4 - 2).clamp(-2, 2),
        "next": {"observation": torch.randn(n, B, OBS, generator=gen),
                 "reward": torch.randn(n, B, 1, generator=gen),
                 "terminated": terminated, "truncated": truncated, "done": terminated | truncated},
    }, batch_size=[n, B])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))


CASES = [
    {},
    {"with_lagrange": True, "backup_action": "mean", "actor_bc_weight": 2.5, "deterministic_backup": False},
    {"fixed_alpha": True, "loss_function": "smooth_l1", "temperature": 0.5},
    {"min_q_weight": 0.0},  # SAC: the penalty's critic pass is skipped, its draws are not
]


@pytest.mark.parametrize("cfg", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("bc_phase", [False, True])
def test_each_seed_gets_its_own_draws_losses_and_gradients(cfg, bc_phase):
    gen = torch.Generator().manual_seed(3)
    parts = _parts(**cfg)
    refs = [copy.deepcopy(p.loss_module) for p in parts]  # separate copies: the reference losses
    for ref, part in zip(refs, parts, strict=True):  # targets apart from the critics, the same in both copies
        for t_ref, t in zip(ref.target_qvalue_network_params.values(True, True),
                            part.loss_module.target_qvalue_network_params.values(True, True), strict=True):
            noise = 0.05 * torch.randn(t.shape, generator=gen)
            t_ref.data.add_(noise)
            t.data.add_(noise)
    losses = [p.loss_module for p in parts]
    assert stackable_cql_reason(losses) is None
    generators = [torch.Generator().manual_seed(100 + i) for i in range(len(SEEDS))]
    stacked = StackedCQLLoss(losses, generators)
    batch = _batch(gen, len(SEEDS))
    total, metrics, _ = stacked(batch, bc_phase=bc_phase)
    grads = torch.autograd.grad(total, stacked.params)
    by_leaf = dict(zip(map(id, stacked.params), grads, strict=True))

    for i, ref in enumerate(refs):
        torch.manual_seed(100 + i)  # the seed's own stream, as its separate run would draw it
        out = ref(batch[i].clone())
        actor = out["loss_actor_bc"] if bc_phase else out["loss_actor"]
        ref_total = actor + out["loss_qvalue"] + out["loss_cql"] + out["loss_alpha"]
        if "loss_alpha_prime" in out.keys():
            ref_total = ref_total + out["loss_alpha_prime"]
        # the stream is where the separate run leaves it
        assert torch.equal(generators[i].get_state(), torch.get_rng_state())
        for key in [k for k in out.keys() if k != "cql_gap"]:
            assert _rel(metrics[key][i], out[key].reshape(())) < 1e-5, key
        if cfg.get("min_q_weight") == 0.0:
            assert torch.isnan(metrics["cql_gap"][i]) and torch.isnan(out["cql_gap"])
        else:
            assert _rel(metrics["cql_gap"][i], out["cql_gap"]) < 1e-5
        named = [*ref.actor_network_params.values(True, True), *ref.qvalue_network_params.values(True, True)]
        named += [p for p in (ref.log_alpha, getattr(ref, "log_alpha_prime", None))
                  if isinstance(p, torch.nn.Parameter)]
        ref_grads = torch.autograd.grad(ref_total, named, allow_unused=True)
        own = stacked.seed_params(i)
        mine = [*losses[i].actor_network_params.values(True, True), *losses[i].qvalue_network_params.values(True, True)]
        mine += [p for p in (losses[i].log_alpha, getattr(losses[i], "log_alpha_prime", None))
                 if isinstance(p, torch.nn.Parameter)]
        assert len(mine) == len(named)
        for p, g_ref in zip(mine, ref_grads, strict=True):
            g = by_leaf[id(own[id(p)])][i]
            if g_ref is None:
                assert g.abs().max() == 0
            else:
                assert _rel(g, g_ref) < 1e-5, tuple(p.shape)


def test_stacking_keeps_values_and_views():
    parts = _parts()
    losses = [p.loss_module for p in parts]
    before = [{k: v.detach().clone() for k, v in loss.state_dict().items()} for loss in losses]
    stacked = StackedCQLLoss(losses, [torch.Generator() for _ in SEEDS])
    for loss, saved in zip(losses, before, strict=True):
        for key, value in loss.state_dict().items():
            assert torch.equal(value, saved[key]), key
    with torch.no_grad():  # a write into the stack is each seed's own parameter (and its policy's)
        for leaf in stacked.params:
            leaf.add_(1.0)
    for loss, saved in zip(losses, before, strict=True):
        state = loss.state_dict()
        changed = [k for k in saved if not torch.equal(state[k], saved[k])]
        assert any("actor" in k for k in changed) and any(k.startswith("qvalue") for k in changed)


def test_refusals():
    assert "same hyperparameters" in stackable_cql_reason(
        [p.loss_module for p in _parts()[:1]] + [_parts(min_q_weight=1.0)[0].loss_module])
    assert "max_q_backup" in stackable_cql_reason([p.loss_module for p in _parts(max_q_backup=True)])
    assert "fused" in stackable_cql_reason([p.loss_module for p in _parts(fused=False)])
