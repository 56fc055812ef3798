"""The trainer's update step with the fused losses is the plain torchrl loop on the reference losses."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Categorical

from offrl.algos import cql, discrete_cql, dqn
from offrl.trainers import CQLTrainer, DQNTrainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

OBS, BATCH = 5, 16


def _batch(action: torch.Tensor, seed: int = 1) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    terminated = torch.zeros(BATCH, 1, dtype=torch.bool)
    terminated[::5] = True
    return TensorDict({
        "observation": torch.randn(BATCH, OBS, generator=g),
        "action": action,
        "next": {"observation": torch.randn(BATCH, OBS, generator=g), "reward": torch.randn(BATCH, 1, generator=g),
                 "done": terminated.clone(), "terminated": terminated},
    }, [BATCH])


def _parts(algo: str, fused: bool):
    if algo == "cql":
        cfg = cql.CQLConfig(hidden_sizes=(32, 32), num_random=3, with_lagrange=True, deterministic_backup=False,
                            fused=fused)
        box = Bounded(-2 * torch.ones(3), 2 * torch.ones(3), (3,))
        return cql.build(cfg, observation_shape=(OBS,), action_spec=box, seed=0)
    if algo in ("dqn", "double-dqn"):
        cfg = dqn.DQNConfig(hidden_sizes=(32, 32), double_dqn=algo == "double-dqn", target_update_interval=2,
                            fused=fused)
        return dqn.build(cfg, observation_shape=(OBS,), action_spec=Categorical(3), seed=0)
    cfg = discrete_cql.DiscreteCQLConfig(hidden_sizes=(32, 32), target_update="soft", tau=0.05, fused=fused)
    return discrete_cql.build(cfg, observation_shape=(OBS,), action_spec=Categorical(3), seed=0)


KEYS = {"cql": ["loss_actor", "loss_qvalue", "loss_cql", "loss_alpha", "loss_alpha_prime"], "dqn": ["loss"],
        "double-dqn": ["loss"],
        "discrete-cql": ["loss_qvalue", "loss_cql"]}


@pytest.mark.parametrize("algo", ["cql", "dqn", "double-dqn", "discrete-cql"])
def test_trainer_update_is_the_plain_loop(algo):
    """Several trainer steps on a fused loss leave the same parameters and targets as torchrl's plain loop
    (sum the loss terms, backward, optimizer step, target update) on the reference loss."""
    g = torch.Generator().manual_seed(3)
    action = (torch.rand(BATCH, 3, generator=g) * 3.6 - 1.8 if algo == "cql"
              else torch.randint(0, 3, (BATCH,), generator=g))
    data = _batch(action)
    ref, fused = _parts(algo, fused=False), _parts(algo, fused=True)
    assert type(fused.loss_module) is not type(ref.loss_module) and fused.loss_module.fast_path
    trainer_cls = DQNTrainer if algo.endswith("dqn") else CQLTrainer
    trainer = trainer_cls(loss_module=fused.loss_module, optimizer=fused.optimizer,
                          target_net_updater=fused.target_net_updater, replay_buffer=object(), offline_steps=5,
                          progress_bar=False, handle_signals=False)
    keys = KEYS[algo]
    for step in range(5):
        torch.manual_seed(step)
        out = ref.loss_module(data.clone())
        sum(out[k] for k in keys).backward()
        ref.optimizer.step()
        ref.optimizer.zero_grad(set_to_none=True)
        ref.target_net_updater.step()
        torch.manual_seed(step)
        metrics = trainer.update(data.clone())
        for key in keys:
            assert not metrics[key].requires_grad
            torch.testing.assert_close(metrics[key], out[key].detach(), rtol=1e-4, atol=1e-5)
    assert metrics["grad_norm"].ndim == 0
    ref_state, fused_state = ref.loss_module.state_dict(), fused.loss_module.state_dict()
    for key, value in ref_state.items():
        torch.testing.assert_close(fused_state[key], value, rtol=1e-4, atol=1e-5, msg=key)
    if algo.endswith("dqn"):
        assert ref.target_net_updater.counter == fused.target_net_updater.counter


def test_builders_use_fused_adam():
    """The builders' optimizer is Adam's fused kernel."""
    parts = _parts("dqn", fused=True)
    assert all(group.get("fused") for group in parts.optimizer.param_groups)
