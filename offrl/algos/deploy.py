"""The deterministic policy of a built algorithm as a plain ``torch.nn.Module``: one observation batch
``[B, obs_dim]`` (float32) in, actions in the env's units out. What ``offrl export`` traces into TorchScript
and ONNX: no tensordict, no distribution object, only the networks and the arithmetic of the policy's
deterministic mode.

* continuous (CQL's tanh-squashed actor): ``center + half * clamp(tanh(loc), ±(1 - 1e-6))`` ``[B, act_dim]``,
  exactly what torchrl's ``TanhNormal`` returns in deterministic mode, rescaled to the action bounds;
* discrete (DQN / discrete CQL's Q-network): ``argmax_a Q(s, a)`` as an int64 index ``[B]``;
* either behind the run's observation scaling (``(obs - loc) / scale``) when it trained with one.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from offrl.algos.cql import ActionRescale
from offrl.errors import UserError

__all__ = ["ContinuousPolicyNet", "DiscretePolicyNet", "ScaledPolicyNet", "deployable_policy"]


class ContinuousPolicyNet(nn.Module):
    """``obs -> center + half * safe_tanh(loc(obs))``: the deterministic action of a TanhNormal actor."""

    def __init__(self, net: nn.Module, act_dim: int, center: torch.Tensor, half: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.act_dim = int(act_dim)
        self.register_buffer("action_center", center.detach().clone().float())
        self.register_buffer("action_half", half.detach().clone().float())
        self.lim = 1.0 - float(torch.finfo(torch.float32).resolution)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        loc = self.net(observation)[..., : self.act_dim]
        return self.action_center + self.action_half * torch.tanh(loc).clamp(-self.lim, self.lim)


class DiscretePolicyNet(nn.Module):
    """``obs -> argmax_a Q(obs, a)`` (int64 index, the greedy action DQN and discrete CQL act with)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return self.net(observation).argmax(-1)


class ScaledPolicyNet(nn.Module):
    """``obs -> net(scaler(obs))``: a policy trained on scaled observations, fed the env's raw ones."""

    def __init__(self, scaler: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.scaler = scaler
        self.net = net

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return self.net(self.scaler(observation))


def deployable_policy(policy: Any) -> nn.Module:
    """A copy of ``policy`` (a built algorithm's deterministic ``policy``) as a plain module, in eval mode."""
    from torchrl.modules import ProbabilisticActor, QValueActor

    from offrl.algos.scaled import ScaledObservationPolicy

    if isinstance(policy, ScaledObservationPolicy):  # the scaling travels with the exported networks
        return ScaledPolicyNet(copy.deepcopy(policy.scaler), deployable_policy(policy.module)).eval()
    if isinstance(policy, QValueActor):
        out: nn.Module = DiscretePolicyNet(copy.deepcopy(policy.module[0].module))
        return out.eval()
    modules = list(getattr(policy, "module", []))
    if len(modules) == 2 and isinstance(modules[0], ProbabilisticActor) \
            and isinstance(getattr(modules[1], "module", None), ActionRescale):
        actor, rescale = modules[0], modules[1].module
        net = actor.module[0].module  # Sequential(MLP, NormalParamExtractor): the MLP emits [loc, scale]
        mlp = net[0] if isinstance(net, nn.Sequential) else net
        act_dim = int(rescale.action_center.numel())
        return ContinuousPolicyNet(copy.deepcopy(mlp), act_dim, rescale.action_center, rescale.action_half).eval()
    raise UserError(f"a plain-module policy (offrl export, Run.policy()) is CQL's tanh actor or DQN / discrete CQL's "
                    f"Q-network, not a {type(policy).__name__} (a multi-agent team: offrl datasets make --policy RUN rolls it out)")
