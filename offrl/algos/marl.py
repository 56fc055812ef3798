"""QMIX, VDN and independent Q-learning: per-agent Q-networks (torchrl's ``MultiAgentMLP``, shared or
per-agent parameters) over torchrl's multi-agent keys, mixed by a ``QMixer`` / ``VDNMixer`` under
:class:`~offrl.algos.marl_loss.ConservativeQMixerLoss`, or trained independently with
:class:`~offrl.algos.marl_loss.ConservativeIQLLoss`.

Keys (torchrl's layout): ``("agents", "observation")`` ``[B, n, obs]``, ``("agents", "action")`` ``[B, n]``
(int64 indices), ``("agents", "action_value")`` ``[B, n, A]``, ``("agents", "chosen_action_value")``;
QMIX mixes with the global ``state`` ``[B, S]`` when there is one, else with the agents' observations
(as torchrl's multi-agent example does). Team reward and termination: ``("next", "reward")``,
``("next", "terminated")`` ``[B, 1]``; per-agent ones under ``("next", "agents", ...)``.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Categorical, Composite
from torchrl.modules import EGreedyModule, MultiAgentMLP, QMixer, QValueModule, VDNMixer

from offrl.algos._common import AlgoParts, named_adam, seeded
from offrl.algos.marl_loss import ConservativeIQLLoss, ConservativeQMixerLoss
from offrl.algos.qnets import target_updater
from offrl.config.marl import MARL_ALGOS, MixingConfig
from offrl.errors import UserError

__all__ = ["AGENTS", "MixingConfig", "build", "build_marl_from_dataset", "marl_shapes"]

AGENTS = "agents"
_ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def marl_shapes(dataset: Any) -> dict[str, Any]:
    """``n_agents``, ``observation_dim``, ``n_actions`` and ``state_dim`` of a multi-agent dataset."""
    ma = dataset.info.extra.get("multiagent")
    if not ma:
        raise UserError(f"{dataset.name}: not a multi-agent dataset; qmix, vdn and iql need one "
                        "(docs/multiagent.md); use dqn or discrete-cql")
    return {"n_agents": int(ma["n_agents"]), "observation_dim": int(ma["observation_shape"][-1]),
            "n_actions": int(ma["n_actions"]), "state_dim": ma.get("state_dim")}


def q_network(cfg: MixingConfig, *, n_agents: int, observation_dim: int, n_actions: int,
              device: torch.device | str = "cpu") -> TensorDictSequential:
    """Per-agent Q-values and the greedy action: ``("agents", "observation")`` ->
    ``("agents", "action_value")``, ``("agents", "action")``, ``("agents", "chosen_action_value")``."""
    act = _ACTIVATIONS.get(cfg.activation)
    if act is None:
        raise UserError(f"mixing.activation: unknown {cfg.activation!r}; use one of {', '.join(_ACTIVATIONS)}")
    net = MultiAgentMLP(n_agent_inputs=observation_dim, n_agent_outputs=n_actions, n_agents=n_agents,
                        centralized=False, share_params=cfg.share_params, device=device,
                        depth=len(cfg.hidden_sizes), num_cells=list(cfg.hidden_sizes), activation_class=act)
    module = TensorDictModule(net, in_keys=[(AGENTS, "observation")], out_keys=[(AGENTS, "action_value")])
    spec = Composite({AGENTS: Composite(action=Categorical(n_actions, shape=(n_agents,), device=device),
                                        shape=(n_agents,))})
    value = QValueModule(action_value_key=(AGENTS, "action_value"), spec=spec,
                         out_keys=[(AGENTS, "action"), (AGENTS, "action_value"), (AGENTS, "chosen_action_value")])
    return TensorDictSequential(module, value)


def build(cfg: MixingConfig, *, strategy: str, n_agents: int, observation_dim: int, n_actions: int,
          state_dim: int | None = None, device: torch.device | str = "cpu", seed: int | None = None) -> AlgoParts:
    """The loss (QMIX/VDN: ``QMixerLoss`` with a ``QMixer``/``VDNMixer``; IQL: ``DQNLoss`` on per-agent
    keys), one Adam (group ``value``, the mixer included), the target updater, the greedy Q policy and an
    ``EGreedyModule`` on ``("agents", "action")`` for collectors."""
    if strategy not in MARL_ALGOS:
        raise UserError(f"mixing strategy {strategy!r}: use one of {', '.join(MARL_ALGOS)}")
    if n_agents < 1 or n_actions < 2:
        raise UserError(f"multi-agent Q-learning needs >= 1 agent and >= 2 actions, got {n_agents} and {n_actions}")
    if cfg.eps_end > cfg.eps_init:
        raise UserError(f"mixing.eps_end ({cfg.eps_end}) must not exceed mixing.eps_init ({cfg.eps_init})")
    if cfg.min_q_weight < 0:
        raise UserError(f"mixing.min_q_weight: must be >= 0, got {cfg.min_q_weight}")
    spec = Categorical(n_actions, shape=(n_agents,), device=device)
    with seeded(seed):
        qnet = q_network(cfg, n_agents=n_agents, observation_dim=observation_dim, n_actions=n_actions,
                         device=device)
        if strategy == "iql":
            loss: Any = ConservativeIQLLoss(qnet, min_q_weight=cfg.min_q_weight, double_q=cfg.double_q, loss_function=cfg.loss_function,
                                            delay_value=True, action_space=spec)
            loss.set_keys(action=(AGENTS, "action"), action_value=(AGENTS, "action_value"),
                          value=(AGENTS, "chosen_action_value"), reward=(AGENTS, "reward"),
                          done=(AGENTS, "done"), terminated=(AGENTS, "terminated"))
        else:
            if strategy == "qmix":
                state_key: Any = "state" if state_dim else (AGENTS, "observation")
                state_shape = (int(state_dim),) if state_dim else (n_agents, observation_dim)
                mixer: nn.Module = QMixer(state_shape=state_shape, mixing_embed_dim=cfg.mixing_embed_dim,
                                          n_agents=n_agents, device=device)
                in_keys = [(AGENTS, "chosen_action_value"), state_key]
            else:
                mixer, in_keys = VDNMixer(n_agents=n_agents, device=device), [(AGENTS, "chosen_action_value")]
            mixer_module = TensorDictModule(mixer, in_keys=in_keys, out_keys=["chosen_action_value"])
            loss = ConservativeQMixerLoss(qnet, mixer_module, min_q_weight=cfg.min_q_weight, double_q=cfg.double_q,
                                          loss_function=cfg.loss_function, delay_value=True, action_space=spec)
            loss.set_keys(action=(AGENTS, "action"), action_value=(AGENTS, "action_value"),
                          local_value=(AGENTS, "chosen_action_value"), global_value="chosen_action_value")
    loss.make_value_estimator(gamma=cfg.gamma)
    optimizer = named_adam({"value": [p for p in loss.parameters() if p.requires_grad]}, {"value": cfg.lr})
    greedy = EGreedyModule(spec, eps_init=float(cfg.eps_init), eps_end=float(cfg.eps_end),
                           annealing_num_steps=cfg.annealing_num_steps, action_key=(AGENTS, "action"),
                           device=device)
    return AlgoParts(loss_module=loss, optimizer=optimizer, target_net_updater=target_updater(cfg, loss),
                     policy=qnet, exploration_policy=TensorDictSequential(qnet, greedy), config=cfg,
                     greedy_module=greedy)


def build_marl_from_dataset(cfg: MixingConfig, dataset: Any, *, strategy: str, device: torch.device | str = "cpu",
                            seed: int | None = None) -> AlgoParts:
    """:func:`build` sized from a multi-agent ``OfflineDataset``."""
    return build(cfg, strategy=strategy, **marl_shapes(dataset), device=device, seed=seed)
