"""``CQLTrainer``: torchrl's CQLTrainer API over offrl's loop, for continuous CQL (``CQLLoss`` and its
subclasses) and discrete CQL (``DiscreteCQLLoss``), offline from a replay buffer and online with a collector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import CQLLoss, DiscreteCQLLoss

from offrl.config.algos import UPDATE_ORDERS
from offrl.errors import UserError
from offrl.trainers.loop import EvalFn, Trainer
from offrl.trainers.metrics import q_stats

__all__ = ["CQLTrainer"]


class CQLTrainer(Trainer):
    """Conservative Q-Learning trainer (torchrl ``CQLTrainer`` parameters, same meaning and defaults).

    offrl additions: ``collector`` may be None (offline: ``offline_steps`` gradient steps from
    ``replay_buffer``); ``bc_steps`` (behaviour-cloning warm start of the actor, continuous CQL);
    ``evaluator``/``eval_interval``/``policy``; ``keep_checkpoints``; ``device``; ``handle_signals``;
    ``update_order`` (continuous CQL): ``"joint"`` takes every loss from the same parameters in one backward
    (torchrl, the authors, CORL); ``"critic_first"`` steps the critics (and the Lagrange multiplier) first,
    then recomputes the actor and temperature losses against the updated critics and steps those (d3rlpy).
    Intervals count gradient steps. See docs/contracts.md (Trainers).
    """

    _algo_name = "cql"

    @property
    def display_name(self) -> str:
        return "discrete-cql" if isinstance(self.loss_module, DiscreteCQLLoss) else "cql"

    def __init__(
        self,
        *,
        collector: Any = None,
        total_frames: int = 0,
        frame_skip: int = 1,
        optim_steps_per_batch: int = 1,
        loss_module: CQLLoss | DiscreteCQLLoss,
        optimizer: torch.optim.Optimizer | None = None,
        logger: Any = None,
        clip_grad_norm: bool = True,
        clip_norm: float | None = None,
        progress_bar: bool = True,
        seed: int | None = None,
        save_trainer_interval: int = 10000,
        log_interval: int = 10000,
        save_trainer_file: str | Path | None = None,
        replay_buffer: Any = None,
        enable_logging: bool = True,
        log_rewards: bool = True,
        log_actions: bool = True,
        log_observations: bool = False,
        target_net_updater: Any = None,
        async_collection: bool = False,
        log_timings: bool = False,
        offline_steps: int = 0,
        bc_steps: int = 0,
        evaluator: EvalFn | None = None,
        eval_interval: int = 0,
        policy: Any = None,
        keep_checkpoints: bool = False,
        device: torch.device | str | None = None,
        handle_signals: bool = True,
        precision: str = "fp32",
        cuda_graph: bool = False,
        greedy_module: Any = None,
        observation_scaler: Any = None,
        reward_scaler: Any = None,
        update_order: str = "joint",
    ) -> None:
        if isinstance(bc_steps, bool) or not isinstance(bc_steps, int) or bc_steps < 0:
            raise UserError(f"bc_steps must be an integer >= 0, got {bc_steps!r}")
        if bc_steps and isinstance(loss_module, DiscreteCQLLoss):
            raise UserError("bc_steps warms up an actor; discrete CQL has none, set bc_steps=0")
        self.bc_steps = bc_steps
        if update_order not in UPDATE_ORDERS:
            raise UserError(f"update_order must be one of {', '.join(UPDATE_ORDERS)}, got {update_order!r}")
        if update_order != "joint" and isinstance(loss_module, DiscreteCQLLoss):
            raise UserError(f"update_order={update_order!r} orders the critic and actor steps; discrete CQL has "
                            "no actor, use 'joint'")
        if update_order != "joint" and cuda_graph:
            raise UserError("cuda_graph captures one joint step; use update_order='joint' or cuda_graph=False")
        self.update_order = update_order
        self._pass_params: tuple[frozenset[int], frozenset[int]] | None = None
        super().__init__(
            collector=collector, total_frames=total_frames, frame_skip=frame_skip,
            optim_steps_per_batch=optim_steps_per_batch, loss_module=loss_module, optimizer=optimizer,
            logger=logger, clip_grad_norm=clip_grad_norm, clip_norm=clip_norm, progress_bar=progress_bar,
            seed=seed, save_trainer_interval=save_trainer_interval, log_interval=log_interval,
            save_trainer_file=save_trainer_file, replay_buffer=replay_buffer, enable_logging=enable_logging,
            log_rewards=log_rewards, log_actions=log_actions, log_observations=log_observations,
            target_net_updater=target_net_updater, async_collection=async_collection, log_timings=log_timings,
            offline_steps=offline_steps, evaluator=evaluator, eval_interval=eval_interval, policy=policy,
            keep_checkpoints=keep_checkpoints, device=device, handle_signals=handle_signals,
            precision=precision, cuda_graph=cuda_graph,
            greedy_module=greedy_module,  # discrete CQL online: epsilon-greedy exploration (offrl.online)
            observation_scaler=observation_scaler, reward_scaler=reward_scaler,
        )
        self._discrete = isinstance(loss_module, DiscreteCQLLoss)

    def _row_stats(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """Discrete CQL: Q of the dataset actions on the row's last batch (the loss leaves its Q-values
        in the batch; a captured CUDA graph keeps them in its own copy, then one forward recomputes them)."""
        if not self._discrete:
            return {}
        loss = self.loss_module
        keys = loss.tensor_keys
        q_all = batch.get(keys.pred_val, None)
        if q_all is None:
            with torch.no_grad(), loss.value_network_params.to_module(loss.value_network):
                q_td = loss.value_network(batch.select(*loss.value_network.in_keys).clone(False))
            q_all = q_td.get(keys.action_value)
        action = batch.get(keys.action)
        if action.ndim < q_all.ndim:  # int64 indices [B] (the dataset layout)
            action = action.unsqueeze(-1)
        return q_stats(q_all.gather(-1, action.long()) if not torch.is_floating_point(action)
                        else (q_all * action).sum(-1))

    def _check_loss(self, loss_module: Any) -> None:
        if not isinstance(loss_module, (CQLLoss, DiscreteCQLLoss)):
            raise UserError(f"CQLTrainer drives torchrl's CQLLoss or DiscreteCQLLoss, not "
                            f"{type(loss_module).__name__}; use DQNTrainer for DQNLoss")

    def _loss_terms(self, loss_td: TensorDictBase, batch: TensorDictBase
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        metrics = {k: v.detach() for k, v in loss_td.items() if k.startswith("loss_")}
        keys = self.loss_module.tensor_keys
        if self._discrete:
            # Q statistics come once per logged row (_row_stats): per step they cost ~5% of a
            # small-network update, which is bound by per-op overhead.
            total = loss_td.get("loss_qvalue") + loss_td.get("loss_cql")
            metrics["td_error"] = batch.get(keys.priority).detach().mean()
            for key in ("cql_gap", "target_value"):
                if key in loss_td.keys():
                    metrics[key] = loss_td.get(key).detach()
            return total, metrics
        # continuous: the actor trains on behaviour cloning for the first bc_steps updates (CQL paper's
        # policy_eval_start), switched by a tensor compare so the update stays branch-free
        loss_actor = self._actor_loss(loss_td)
        total = loss_actor + loss_td.get("loss_qvalue") + loss_td.get("loss_cql") + loss_td.get("loss_alpha")
        if "loss_alpha_prime" in loss_td.keys():
            total = total + loss_td.get("loss_alpha_prime")
        for key in ("alpha", "entropy", "cql_gap", "alpha_prime", "calql_bound_rate"):  # Cal-QL: offrl.algos.calql
            if key in loss_td.keys():
                metrics[key] = loss_td.get(key).detach()
        if "alpha_prime" not in metrics and getattr(self.loss_module, "with_lagrange", False):
            metrics["alpha_prime"] = self.loss_module.log_alpha_prime.detach().exp()
        metrics.update(q_stats(batch.get(keys.pred_q1)))
        metrics["td_error"] = batch.get(keys.priority).detach().mean()
        return total, metrics

    def _actor_loss(self, loss_td: TensorDictBase) -> torch.Tensor:
        return torch.where(self._step_t < self.bc_steps, loss_td.get("loss_actor_bc"), loss_td.get("loss_actor"))

    @staticmethod
    def _critic_total(loss_td: TensorDictBase) -> torch.Tensor:
        total = loss_td.get("loss_qvalue") + loss_td.get("loss_cql")
        if "loss_alpha_prime" in loss_td.keys():
            total = total + loss_td.get("loss_alpha_prime")
        return total

    def _passes(self) -> tuple:
        if self.update_order == "joint":
            return super()._passes()
        if self._pass_params is None:
            loss = self.loss_module
            critic = list(loss.qvalue_network_params.values(True, True))
            actor = list(loss.actor_network_params.values(True, True))
            if isinstance(getattr(loss, "log_alpha_prime", None), torch.nn.Parameter):
                critic.append(loss.log_alpha_prime)
            if isinstance(loss.log_alpha, torch.nn.Parameter):
                actor.append(loss.log_alpha)
            self._pass_params = (frozenset(map(id, critic)), frozenset(map(id, actor)))
        return ((self._critic_pass, self._pass_params[0]), (self._actor_pass, self._pass_params[1]))

    def _critic_pass(self, batch: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """critic_first, pass 1: the full loss; the critics' and the Lagrange multiplier's terms step."""
        loss_td = self._autocast(self.loss_module, batch)
        _, metrics = self._loss_terms(loss_td, batch)
        metrics.update(self._batch_stats(batch))
        return self._critic_total(loss_td), metrics

    def _actor_pass(self, batch: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """critic_first, pass 2: the actor and temperature losses against the critics as they now are."""
        loss_td = self._autocast(lambda b: actor_forward(self.loss_module, b), batch)
        metrics = {k: loss_td.get(k).detach() for k in ("loss_actor", "loss_actor_bc", "loss_alpha", "alpha",
                                                         "entropy")}
        return self._actor_loss(loss_td) + loss_td.get("loss_alpha"), metrics


def actor_forward(loss: CQLLoss, batch: TensorDictBase) -> TensorDictBase:
    """The actor-side outputs of ``loss`` alone: offrl's losses compute them (``actor_forward``); a plain torchrl
    ``CQLLoss`` through its own ``actor_bc_loss`` / ``actor_loss`` / ``alpha_loss``."""
    if hasattr(loss, "actor_forward"):
        return loss.actor_forward(batch)
    td = batch.copy()
    loss_actor_bc, _ = loss.actor_bc_loss(td)
    loss_actor, metadata = loss.actor_loss(td)
    loss_alpha, _ = loss.alpha_loss(metadata)
    return TensorDict({"loss_actor": loss_actor, "loss_actor_bc": loss_actor_bc, "loss_alpha": loss_alpha,
                       "alpha": loss._alpha, "entropy": -metadata[loss.tensor_keys.log_prob].mean()})
