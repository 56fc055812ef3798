"""``DQNTrainer``: torchrl's DQNTrainer API over offrl's loop (``DQNLoss``; ``QMixerLoss`` for QMIX/VDN),
offline from a replay buffer or online with a collector and an annealed ``EGreedyModule``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.objectives import DQNLoss
from torchrl.objectives.multiagent import QMixerLoss

from offrl.errors import UserError
from offrl.trainers.loop import EvalFn, Trainer
from offrl.trainers.metrics import q_stats

__all__ = ["DQNTrainer"]

_MIXING = (None, "qmix", "vdn", "iql")


class DQNTrainer(Trainer):
    """Deep Q-Network trainer (torchrl ``DQNTrainer`` parameters, same meaning and defaults).

    ``mixing_strategy`` "qmix"/"vdn": the loss is torchrl's ``QMixerLoss`` (a ``QMixer`` / ``VDNMixer``
    over per-agent Q-networks, :mod:`offrl.algos.marl`); ``("next", reward_key)`` and the episode reward are
    averaged over the agent dimension (``[..., n_agents, 1]`` -> ``[..., 1]``) into ``aggregated_reward_key``
    / ``aggregated_episode_reward_key`` before the loss (which reads the former) and for logging. "iql":
    independent Q-learners, a ``DQNLoss`` on per-agent keys; team flags (``done_key``, ``terminated_key``)
    and a team reward are broadcast to the agents when the batch has no per-agent ones. ``done_key``,
    ``terminated_key`` and ``action_key`` (where the policy writes its actions), when not the defaults, are
    set on the loss, which reads the batch there. offrl additions as in :class:`CQLTrainer`.
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
        observation_scaler: Any = None,
        reward_scaler: Any = None,
    ) -> None:
        if mixing_strategy not in _MIXING:
            raise UserError(f"mixing_strategy must be one of 'qmix', 'vdn', 'iql' or None, got {mixing_strategy!r}")
        if mixing_strategy in ("qmix", "vdn") and (aggregated_reward_key is None
                                                   or aggregated_episode_reward_key is None):
            raise UserError(f"mixing_strategy={mixing_strategy!r} needs aggregated_reward_key and "
                            "aggregated_episode_reward_key (where the agent-averaged rewards go); set both")
        if mixing_strategy is not None and (observation_scaler is not None or reward_scaler is not None):
            raise UserError("observation_scaler/reward_scaler: multi-agent runs (mixing_strategy) train on raw "
                            "observations and rewards; drop the scaler")
        if greedy_module is not None and not hasattr(greedy_module, "step"):
            raise UserError("greedy_module must be an EGreedyModule (something with step(frames) and eps)")
        self.mixing_strategy = mixing_strategy
        self._mixed = mixing_strategy in ("qmix", "vdn")
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
            observation_scaler=observation_scaler, reward_scaler=reward_scaler,
        )
        # the loss reads the same signals: non-default team keys, and the agent-averaged reward when mixing
        # (independent learners read per-agent keys, filled from the team ones by _prepare_batch)
        loss_keys: dict[str, Any] = {}
        if mixing_strategy != "iql":
            if done_key != "done":
                loss_keys["done"] = done_key
            if terminated_key != "terminated":
                loss_keys["terminated"] = terminated_key
        if self._mixed:
            loss_keys["reward"] = aggregated_reward_key
        if action_key != "action":  # where the loss reads the actions (the policy writes them there)
            loss_keys["action"] = action_key
        if loss_keys:
            loss_module.set_keys(**loss_keys)

    @property
    def display_name(self) -> str:
        return self.mixing_strategy or self._algo_name

    def _check_loss(self, loss_module: Any) -> None:
        if self.mixing_strategy in ("qmix", "vdn"):
            if not isinstance(loss_module, QMixerLoss):
                raise UserError(f"mixing_strategy={self.mixing_strategy!r} drives torchrl's QMixerLoss (a QMixer/"
                                f"VDNMixer over per-agent Q-networks, offrl.algos.marl), not "
                                f"{type(loss_module).__name__}")
        elif not isinstance(loss_module, DQNLoss):
            raise UserError(f"DQNTrainer drives torchrl's DQNLoss, not {type(loss_module).__name__}; use "
                            "CQLTrainer for CQLLoss/DiscreteCQLLoss"
                            + (", and mixing_strategy='qmix'/'vdn' for QMixerLoss"
                               if isinstance(loss_module, QMixerLoss) else ""))

    def aggregate_rewards(self, batch: TensorDictBase) -> TensorDictBase:
        """QMIX/VDN: ``("next", reward_key)`` and ``("next", episode_reward_key)``, ``[..., n_agents, 1]``,
        averaged over the agents into ``("next", aggregated_*_key)`` (torchrl's ``batch_process`` hook)."""
        for src, dst in ((self.reward_key, self.aggregated_reward_key),
                         (self.episode_reward_key, self.aggregated_episode_reward_key)):
            value = batch.get(("next", src), None)
            if value is not None:
                batch.set(("next", dst), value.mean(-2))
        return batch

    def _broadcast_team_signals(self, batch: TensorDictBase) -> TensorDictBase:
        """IQL: per-agent ``done``/``terminated``/``reward`` the loss reads, from the team ones when the batch
        has no per-agent entry (``[B, 1]`` -> ``[B, n_agents, 1]``)."""
        keys = self.loss_module.tensor_keys
        for team, agent in ((self.done_key, keys.done), (self.terminated_key, keys.terminated),
                            (self.reward_key, keys.reward)):
            # per-agent keys live in an agent group (("agents", "done")); plain keys: a single-agent DQNLoss
            if team == agent or not isinstance(agent, tuple) or batch.get(("next", agent), None) is not None:
                continue
            value = batch.get(("next", team), None)
            action = batch.get(keys.action, None)  # [B, n_agents] indices or [B, n_agents, n] one-hot
            if value is not None and action is not None and action.ndim > batch.batch_dims:
                n_agents = action.shape[batch.batch_dims]
                shape = (*value.shape[:-1], n_agents, value.shape[-1])
                batch.set(("next", agent), value.unsqueeze(-2).expand(shape))
        return batch

    def _prepare_batch(self, batch: TensorDictBase) -> TensorDictBase:
        if self._mixed:
            return self.aggregate_rewards(batch)
        if self.mixing_strategy == "iql":
            return self._broadcast_team_signals(batch)
        return batch

    @property
    def reward_log_key(self) -> Any:
        return self.aggregated_reward_key if self._mixed else self.reward_key

    def _episode_returns(self, data: TensorDictBase, done: torch.Tensor) -> torch.Tensor | None:
        """The agent-averaged episode reward of the episodes that ended (``aggregated_episode_reward_key``
        with QMIX/VDN, the per-agent one averaged for IQL)."""
        if self._mixed:
            data = self.aggregate_rewards(data)
        key = self.aggregated_episode_reward_key if self._mixed else self.episode_reward_key
        ep_reward = data.get(("next", key), None)
        if ep_reward is None:
            return None
        if ep_reward.ndim > done.ndim:  # per-agent episode rewards, team done
            ep_reward = ep_reward.mean(-2)
        return ep_reward[done]

    def _loss_terms(self, loss_td: TensorDictBase, batch: TensorDictBase
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = [v for k, v in loss_td.items() if k.startswith("loss")]
        total = terms[0] if len(terms) == 1 else torch.stack(terms).sum()
        metrics = {k: v.detach() for k, v in loss_td.items()}
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
        if isinstance(loss, QMixerLoss):  # the per-agent Q-values
            params, net = loss.local_value_network_params, loss.local_value_network
        else:
            params, net = loss.value_network_params, loss.value_network
        with torch.no_grad(), params.to_module(net):
            q_td = net(batch.select(*net.in_keys).clone(False))
        q_all = q_td.get(keys.action_value)
        action = batch.get(keys.action)
        if not torch.is_floating_point(action):
            q_data = q_all.gather(-1, action.long().unsqueeze(-1) if action.ndim < q_all.ndim else action.long())
        else:
            q_data = (q_all * action).sum(-1)
        metrics.update(q_stats(q_data))
        metrics["q_max_mean"] = q_all.max(-1).values.mean()
        return metrics
