"""The discrete CQL loss: torchrl's ``DiscreteCQLLoss`` (CQL(H) for discrete actions, Kumar et al. 2020:
``logsumexp_a Q(s, a) - Q(s, a_data)``) with its TD target fixed and its penalty weighted."""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import dispatch
from torchrl.objectives import DiscreteCQLLoss
from torchrl.objectives.utils import distance_loss

__all__ = ["WeightedDiscreteCQLLoss"]


class WeightedDiscreteCQLLoss(DiscreteCQLLoss):
    """``DiscreteCQLLoss`` with two fixes for torchrl 0.14:

    * the TD target uses the *target* network: torchrl's value estimator holds a stateful copy of the online
      network and ignores the target parameters it is given, so Q-values chase themselves and diverge
      (on CartPole data they pass 1e5 within 2,000 steps, while returns bound them by 100);
    * the penalty is weighted by ``min_q_weight`` (torchrl adds it unweighted). ``cql_gap`` is the unweighted
      ``E[logsumexp_a Q(s, a) - Q(s, a_data)]``.
    """

    def __init__(self, value_network: Any, *, min_q_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(value_network, **kwargs)
        self.min_q_weight = float(min_q_weight)

    def value_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict]:  # type: ignore[override]
        keys = self.tensor_keys
        td_copy = tensordict.clone(False)
        with self.value_network_params.to_module(self.value_network, preserve_module_state=False):
            self.value_network(td_copy)
        pred_val = td_copy.get(keys.action_value)
        action = tensordict.get(keys.action)
        if self.action_space == "categorical":
            pred_val_index = pred_val.gather(-1, action.unsqueeze(-1) if action.ndim < pred_val.ndim
                                             else action).squeeze(-1)
        else:
            pred_val_index = (pred_val * action.to(pred_val.dtype)).sum(-1)
        with torch.no_grad():
            next_td = tensordict.get("next").select(*self.value_network.in_keys).clone(False)
            with self.target_value_network_params.to_module(self.value_network, preserve_module_state=False):
                self.value_network(next_td)
            next_value = next_td.get(keys.action_value).max(-1).values
            reward = tensordict.get(("next", keys.reward)).squeeze(-1)
            # only a true termination cuts the bootstrap; a time-limit truncation keeps it
            not_terminated = (~tensordict.get(("next", keys.terminated)).squeeze(-1)).to(reward.dtype)
            target_value = reward + self.value_estimator.gamma * not_terminated * next_value
        td_error = (pred_val_index - target_value).pow(2).unsqueeze(-1)
        tensordict.set(keys.priority, td_error.detach(), inplace=True)
        tensordict.set(keys.pred_val, pred_val, inplace=True)
        loss = 0.5 * distance_loss(pred_val_index, target_value, self.loss_function)
        loss = self._reduce_loss(loss, tensordict=tensordict)
        metadata = {"td_error": td_error.mean(0).detach(), "pred_value": pred_val.mean().detach(),
                    "target_value": target_value.mean()}
        return loss, metadata

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:  # type: ignore[override]
        out = super().forward(tensordict)
        out.set("cql_gap", out.get("loss_cql").detach())
        out.set("loss_cql", out.get("loss_cql") * self.min_q_weight)
        return out
