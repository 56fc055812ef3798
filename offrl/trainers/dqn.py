"""``DQNTrainer``: torchrl's DQNTrainer API over offrl's loop (``DQNLoss``), offline from a replay buffer or
online with a collector and an annealed ``EGreedyModule``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.objectives import DQNLoss

from offrl.errors import UserError
from offrl.trainers.loop import EvalFn, Trainer
from offrl.trainers.metrics import q_stats

__all__ = ["DQNTrainer"]

_MIXING = (None, "qmix", "vdn", "iql")


class DQNTrainer(Trainer):
    """Deep Q-Network trainer (torchrl ``DQNTrainer`` parameters, same meaning and defaults).

    ``mixing_strategy`` "qmix"/"vdn" average ``("next", reward_key)`` (and the episode reward) over the
    agent dimension into ``aggregated_reward_key`` (``aggregated_episode_reward_key``) before the loss; "iql"
    trains agents independently on their own rewards. offrl additions as in :class:`CQLTrainer`.
    """

    _algo_name = "dqn"

    def __init__(
        self,
        *,
        collector: Any = None,
        total_frames: int = 0,
        frame_skip: int = 1,
        optim_steps_per_batch: int = 1,
        loss_module: DQNLoss,
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
        log_observations: bool = False,
        target_net_updater: Any = None,
        greedy_module: Any = None,
        async_collection: bool = False,
        log_timings: bool = False,
        mixing_strategy: str | None = None,
        done_key: Any = "done",
        terminated_key: Any = "terminated",
        reward_key: Any = "reward",
        episode_reward_key: Any = "reward_sum",
        aggregated_reward_key: Any = None,
        aggregated_episode_reward_key: Any = None,
        action_key: Any = "action",
        observation_key: Any = "observation",
        offline_steps: int = 0,
        evaluator: EvalFn | None = None,
        eval_interval: int = 0,
        policy: Any = None,
        keep_checkpoints: bool = False,
        device: torch.device | str | None = None,
        handle_signals: bool = True,
        precision: str = "fp32",
        cuda_graph: bool = False,
    ) -> None:
        if mixing_strategy not in _MIXING:
            raise UserError(f"mixing_strategy must be one of 'qmix', 'vdn', 'iql' or None, got {mixing_strategy!r}")
        if mixing_strategy in ("qmix", "vdn") and (aggregated_reward_key is None
                                                   or aggregated_episode_reward_key is None):
            raise UserError(f"mixing_strategy={mixing_strategy!r} needs aggregated_reward_key and "
                            "aggregated_episode_reward_key (where the agent-averaged rewards go); set both")
        if greedy_module is not None and not hasattr(greedy_module, "step"):
            raise UserError("greedy_module must be an EGreedyModule (something with step(frames) and eps)")
        self.mixing_strategy = mixing_strategy
        self.terminated_key = terminated_key
        self.aggregated_reward_key = aggregated_reward_key
        self.aggregated_episode_reward_key = aggregated_episode_reward_key
        super().__init__(
            collector=collector, total_frames=total_frames, frame_skip=frame_skip,
            optim_steps_per_batch=optim_steps_per_batch, loss_module=loss_module, optimizer=optimizer,
            logger=logger, clip_grad_norm=clip_grad_norm, clip_norm=clip_norm, progress_bar=progress_bar,
            seed=seed, save_trainer_interval=save_trainer_interval, log_interval=log_interval,
            save_trainer_file=save_trainer_file, replay_buffer=replay_buffer, enable_logging=enable_logging,
            log_rewards=log_rewards, log_actions=False, log_observations=log_observations,
            target_net_updater=target_net_updater, async_collection=async_collection, log_timings=log_timings,
            offline_steps=offline_steps, evaluator=evaluator, eval_interval=eval_interval, policy=policy,
            keep_checkpoints=keep_checkpoints, device=device, handle_signals=handle_signals,
            precision=precision, cuda_graph=cuda_graph,
            greedy_module=greedy_module, reward_key=reward_key, done_key=done_key,
            episode_reward_key=episode_reward_key, action_key=action_key, observation_key=observation_key,
        )
        # the loss reads the same signals: non-default keys, and the agent-averaged reward when mixing
        loss_keys: dict[str, Any] = {}
        if done_key != "done":
            loss_keys["done"] = done_key
        if terminated_key != "terminated":
            loss_keys["terminated"] = terminated_key
        if mixing_strategy in ("qmix", "vdn"):
            loss_keys["reward"] = aggregated_reward_key
        if loss_keys:
            loss_module.set_keys(**loss_keys)

    def _check_loss(self, loss_module: Any) -> None:
        if not isinstance(loss_module, DQNLoss):
            raise UserError(f"DQNTrainer drives torchrl's DQNLoss, not {type(loss_module).__name__}; use "
                            "CQLTrainer for CQLLoss/DiscreteCQLLoss")

    def _prepare_batch(self, batch: TensorDictBase) -> TensorDictBase:
        if self.mixing_strategy in ("qmix", "vdn"):
            # rewards [..., n_agents, 1] -> their mean over agents, shared by the mixed value
            for src, dst in ((self.reward_key, self.aggregated_reward_key),
                             (self.episode_reward_key, self.aggregated_episode_reward_key)):
                value = batch.get(("next", src), None)
                if value is not None:
                    batch.set(("next", dst), value.mean(-2))
        return batch

    def _loss_terms(self, loss_td: TensorDictBase, batch: TensorDictBase
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = loss_td.get("loss")
        metrics = {k: v.detach() for k, v in loss_td.items() if k.startswith("loss")}
        priority = batch.get(self.loss_module.tensor_keys.priority, None)
        if priority is not None:
            metrics["td_error"] = priority.detach().mean()
        return total, metrics

    def _row_stats(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """Q statistics of the last batch, once per logged row: DQNLoss keeps its Q-values to itself, so
        they cost an extra forward, which per step would slow small-network DQN by a third."""
        metrics: dict[str, torch.Tensor] = {}
        loss = self.loss_module
        keys = loss.tensor_keys
        with torch.no_grad(), loss.value_network_params.to_module(loss.value_network):
            q_td = loss.value_network(batch.select(*loss.value_network.in_keys).clone(False))
        q_all = q_td.get(keys.action_value)
        action = batch.get(keys.action)
        if not torch.is_floating_point(action):
            q_data = q_all.gather(-1, action.long().unsqueeze(-1) if action.ndim < q_all.ndim else action.long())
        else:
            q_data = (q_all * action).sum(-1)
        metrics.update(q_stats(q_data))
        metrics["q_max_mean"] = q_all.max(-1).values.mean()
        return metrics
