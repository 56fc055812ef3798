"""The Cal-QL loss: calibrated CQL (Nakamoto et al. 2023, https://arxiv.org/abs/2303.05479).

CQL pushes down the Q-values of actions sampled from the policy. Offline that makes the critic
*under*-estimate so much that, when fine-tuning starts, the first online updates "unlearn" the policy
(the dip in the paper's figure 1). Cal-QL keeps the penalty but never pushes a policy action's Q-value
below the value of the behaviour policy, estimated by the Monte-Carlo return-to-go of the data::

    Q(s, a ~ pi)  ->  max(Q(s, a ~ pi), mc_return(s))

inside the CQL log-sum-exp. Random (uniform) proposals are left as they are; the Q-value of the dataset
action (the pushed-up term) is unchanged. This follows the authors' code (``nakamotoo/Cal-QL``,
``JaxCQL/conservative_sac.py``) and CORL ``algorithms/finetune/cal_ql.py``: the clamp applies to
``Q(s, a~pi(.|s))`` and ``Q(s, a'~pi(.|s'))`` *before* the importance-sampling log-densities are subtracted.

``mc_return`` is the discounted return-to-go the data layer stores per transition (``OfflineDataset.data``,
key ``mc_return``, ``[N, 1]``); offrl's online buffers compute it for collected episodes when they end
(:class:`offrl.online.OnlineTransitions`).
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase

from offrl.algos.cql_loss import OfflineCQLLoss
from offrl.errors import UserError

__all__ = ["CalQLLoss", "calibrate"]


def calibrate(q_policy: torch.Tensor, lower_bound: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max(q_policy, lower_bound), fraction of q_policy below the bound)``.

    ``q_policy``: Q-values of policy actions, ``[..., B, n]``; ``lower_bound``: the Monte-Carlo return of
    each state, ``[B]`` or ``[B, 1]`` (broadcast over the ``n`` sampled actions). The bound is a constant:
    no gradient flows into it, and where ``Q >= bound`` the gradient of ``Q`` is untouched.
    """
    bound = lower_bound.detach().reshape(-1, 1).to(q_policy.dtype)
    below = (q_policy < bound).float().mean()
    return torch.maximum(q_policy, bound), below.detach()


class CalQLLoss(OfflineCQLLoss):
    """:class:`~offrl.algos.cql_loss.OfflineCQLLoss` (a torchrl ``CQLLoss``) with Cal-QL's calibrated penalty.

    Reads the per-transition lower bound from ``mc_return_key`` (default ``"mc_return"``) of the batch.
    ``calibrated=False`` turns the clamp off (then it is exactly the parent loss). Outputs: the parent's,
    plus ``calql_bound_rate`` (fraction of the policy Q-values that were below the bound, the paper's
    diagnostic). ``min_q_weight`` is a plain attribute: set it to lower the CQL weight online.
    """

    mc_return_key: str = "mc_return"
    calibrated: bool = True

    def __init__(self, actor_network: Any, qvalue_network: Any, *, mc_return_key: str = "mc_return",
                 calibrated: bool = True, **kwargs: Any) -> None:
        super().__init__(actor_network, qvalue_network, **kwargs)
        self.mc_return_key = mc_return_key
        self.calibrated = bool(calibrated)
        self._bound_rate = torch.zeros(())

    @classmethod
    def from_cql(cls, loss: OfflineCQLLoss, *, mc_return_key: str = "mc_return",
                  calibrated: bool = True) -> CalQLLoss:
        """Turn a built :class:`OfflineCQLLoss` into a :class:`CalQLLoss` *in place* (same parameters, so the
        optimizer, target updater and policy built with it keep working) and return it. A reward scaler with a
        shift on the loss (:mod:`offrl.algos.scaled`) is refused: each row's bound would move by the shift
        summed over its steps to the episode's end, which the stored rows do not carry."""
        shifted = getattr(loss, "reward_scaler", None)
        if shifted is not None and shifted.shift:
            raise UserError(f"Cal-QL's Monte-Carlo bound cannot follow a reward shift ({shifted.describe()}); drop "
                            "reward_bias, or use reward_scaler=none or return_based (they only multiply)")
        variant = getattr(type(loss), "calql_class", None)  # a fused loss names its Cal-QL class
        if isinstance(loss, CalQLLoss):
            pass
        elif type(loss) is OfflineCQLLoss:
            loss.__class__ = cls
        elif isinstance(variant, type) and issubclass(variant, cls):
            loss.__class__ = variant  # FusedCalQLLoss: Cal-QL runs the plain forward
        else:
            raise UserError(f"Cal-QL calibrates offrl's OfflineCQLLoss, not {type(loss).__name__}; use "
                            "--algo cql")
        assert isinstance(loss, CalQLLoss)
        loss.mc_return_key = mc_return_key
        loss.calibrated = bool(calibrated)
        loss._bound_rate = torch.zeros((), device=loss.action_center.device)
        return loss

    @property
    def out_keys(self) -> list[str]:
        return [*super().out_keys, "calql_bound_rate"]

    @out_keys.setter
    def out_keys(self, values: Any) -> None:
        pass

    def _proposal_q(self, q: torch.Tensor, tensordict: TensorDictBase) -> torch.Tensor:
        """The Cal-QL clamp on the policy proposals (sources 1: a~pi(.|s) and 2: a'~pi(.|s'), scored at s);
        uniform proposals stay as they are."""
        if not self.calibrated:
            return q
        mc_return = tensordict.get(self.mc_return_key, None)
        if mc_return is None:
            raise UserError(f"Cal-QL needs {self.mc_return_key!r} (Monte-Carlo return-to-go) in every batch; "
                            "offrl datasets store it, a hand-made replay buffer must too")
        q_policy, self._bound_rate = calibrate(q[:, 1:], mc_return)
        return torch.cat([q[:, :1], q_policy], 1)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:  # type: ignore[override]
        # OfflineCQLLoss's forward by name: on a fused loss (FusedCalQLLoss) super() would take the fused
        # path, which computes the penalty inline and would skip the calibration
        out = OfflineCQLLoss.forward(self, tensordict)
        out.set("calql_bound_rate", self._bound_rate if self.calibrated else torch.zeros_like(self._bound_rate))
        return out
