"""Observation scaling around a built algorithm: its policies read the env's raw observations and scale them
(:class:`ScaledObservationPolicy`), and its loss module carries the scaler (``loss_module.observation_scaler``,
not a registered submodule: checkpoints are unchanged), where a trainer and the critic diagnostics find it and
scale what they feed the networks. So the networks only ever see scaled observations and everything outside
them (rollouts, collectors, export, the stored data) stays in the env's units."""

from __future__ import annotations

from typing import Any

from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from offrl.algos._common import AlgoParts
from offrl.config.algos import CQLConfig, DiscreteCQLConfig, DQNConfig
from offrl.data.scaling import ObservationScaler, fit_observation_scaler

__all__ = ["ScaledObservationPolicy", "attach_observation_scaler", "observation_scaler_for"]

_SECTION = {CQLConfig: "cql", DiscreteCQLConfig: "discrete_cql", DQNConfig: "dqn"}


class ScaledObservationPolicy(TensorDictModuleBase):
    """``module`` run on a shallow copy of the input whose ``observation`` is scaled; what it writes (the
    action, a distribution's parameters) lands in the input, whose observation stays raw (a collector stores
    it as the env gave it)."""

    def __init__(self, module: Any, scaler: ObservationScaler, observation_key: Any = "observation") -> None:
        super().__init__()
        self.module = module
        self.scaler = scaler
        self.observation_key = observation_key
        self.in_keys = list(module.in_keys)
        self.out_keys = list(module.out_keys)

    @property
    def spec(self) -> Any:
        return self.module.spec

    def forward(self, tensordict: TensorDictBase, *args: Any, **kwargs: Any) -> TensorDictBase:
        inner = tensordict.copy()
        inner.set(self.observation_key, self.scaler(tensordict.get(self.observation_key)))
        out = self.module(inner, *args, **kwargs)
        out = out if out is not None else inner
        for key in self.out_keys:
            if key != self.observation_key:
                tensordict.set(key, out.get(key))
        return tensordict


def observation_scaler_for(cfg: Any, dataset: Any, device: Any = "cpu") -> ObservationScaler | None:
    """The scaler ``cfg.observation_scaler`` names, fitted on ``dataset`` (None: no scaling)."""
    option = f"{_SECTION.get(type(cfg), 'algo')}.observation_scaler"
    scaler = fit_observation_scaler(cfg.observation_scaler, dataset, option=option)
    return None if scaler is None else scaler.to(device)


def attach_observation_scaler(parts: AlgoParts, scaler: ObservationScaler | None) -> AlgoParts:
    """``parts`` whose policies read raw observations and whose loss module carries ``scaler`` (a trainer
    scales its batches with it); unchanged when ``scaler`` is None. A config that asks for scaling without a
    fitted scaler (a build from shapes alone, online from scratch) is one user-error line."""
    kind = getattr(parts.config, "observation_scaler", "none")
    if scaler is None:
        if kind != "none":
            observation_scaler_for(parts.config, None)  # raises: nothing to fit on
        return parts
    same = parts.exploration_policy is parts.policy
    parts.policy = ScaledObservationPolicy(parts.policy, scaler)
    parts.exploration_policy = parts.policy if same else ScaledObservationPolicy(parts.exploration_policy, scaler)
    object.__setattr__(parts.loss_module, "observation_scaler", scaler)  # plain attribute: not in state_dict
    return parts
