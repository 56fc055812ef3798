"""Observation and reward scaling around a built algorithm: its policies read the env's raw observations and
scale them (:class:`ScaledObservationPolicy`), and its loss module carries the scalers
(``loss_module.observation_scaler`` / ``reward_scaler``, plain attributes, not registered submodules: checkpoints
are unchanged), where a trainer and the critic diagnostics find them and scale what they feed the networks. So
the networks only ever see scaled observations and rewards, and everything outside them (rollouts, collectors,
export, the stored data) stays in the env's units."""

from __future__ import annotations

from typing import Any

from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from offrl.algos._common import AlgoParts
from offrl.config.algos import CQLConfig, DiscreteCQLConfig, DQNConfig
from offrl.data.reward_scaling import RewardScaler, fit_reward_scaler
from offrl.data.scaling import ObservationScaler, fit_observation_scaler

__all__ = ["ScaledObservationPolicy", "attach_scalers", "describe_scalers", "observation_scaler_for",
           "reward_scaler_for"]

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


def reward_scaler_for(cfg: Any, dataset: Any) -> RewardScaler | None:
    """The reward scaler ``cfg`` asks for (``reward_scaler``, ``reward_scale``, ``reward_bias``), fitted on
    ``dataset`` (which may be None when nothing is fitted); None: rewards unchanged."""
    return fit_reward_scaler(getattr(cfg, "reward_scaler", "none"), dataset, scale=getattr(cfg, "reward_scale", 1.0),
                             bias=getattr(cfg, "reward_bias", 0.0), section=_SECTION.get(type(cfg), "algo"))


def attach_scalers(parts: AlgoParts, scaler: ObservationScaler | None,
                   reward_scaler: RewardScaler | None = None) -> AlgoParts:
    """``parts`` whose policies read raw observations and whose loss module carries ``scaler`` and
    ``reward_scaler`` (a trainer scales its batches with them). A config that asks for a fitted scaler without
    one (a build from shapes alone, online from scratch) is one user-error line; ``reward_scale`` and
    ``reward_bias`` alone need no data and are applied here when ``reward_scaler`` is None."""
    if reward_scaler is None:
        reward_scaler = reward_scaler_for(parts.config, None)  # raises for a fitted kind: nothing to fit on
    if reward_scaler is not None:
        object.__setattr__(parts.loss_module, "reward_scaler", reward_scaler)  # plain attribute: not in state_dict
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


def describe_scalers(parts: AlgoParts) -> list[str]:
    """One line per scaler ``parts`` carries, saying what was fitted (a run's ``defaults_from_data``)."""
    section, lines = _SECTION.get(type(parts.config), "algo"), []
    obs = parts.observation_scaler
    if obs is not None:
        what = "(obs - mean) / (std + 1e-3)" if obs.kind == "standard" else "[min, max] mapped to [-1, 1]"
        lines.append(f"{section}.observation_scaler={obs.kind}: {what} per dimension, fitted on the dataset's "
                     f"observations ({obs.loc.numel()} dimensions)")
    reward = parts.reward_scaler
    if reward is not None:
        lines.append(f"{section}.reward_scaler={reward.kind}: {reward.describe()}")
    return lines
