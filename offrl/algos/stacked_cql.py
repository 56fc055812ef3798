"""Several seeds' continuous CQL losses as one batched loss (``offrl train --seeds N --vectorize --algo cql``).

:class:`StackedCQLLoss` takes N :class:`~offrl.algos.fused_cql.FusedOfflineCQLLoss` of the same configuration
(one per seed, each built from its own seed) and moves their actor, critic, target-critic, entropy-temperature
and Lagrange-multiplier parameters into stacked ``[N, ...]`` tensors, each seed's own tensors becoming views of
its slice (as :class:`~offrl.algos.stacked_q.StackedQLoss` does for the discrete losses). One call runs the N
actors and the N x 2 critics as batched matmuls on a ``[N, B]`` batch.

The random draws follow the seeds' own streams: the loss draws each seed's Gaussian and uniform noise from that
seed's ``torch.Generator`` in the order and shapes :class:`FusedOfflineCQLLoss` draws them from the process
generator (backup action, pi(s) and pi(s') penalty proposals, uniform proposals, BC sample, actor sample), then
applies them to the stacked distributions with TanhNormal's own reparameterization. A seed whose generator
starts where its separate run's process generator stands therefore draws the same numbers, and its losses and
gradients equal its separate run's within float rounding (tests/algos/test_stacked_cql.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import unravel_key
from torch import Tensor
from torch.distributions.utils import _sum_rightmost
from torchrl.objectives.utils import distance_loss

from offrl.algos.fused_cql import FusedOfflineCQLLoss
from offrl.algos.plans import detached
from offrl.algos.stacked_q import StackedQLoss, stack_as_views, stacked_steps

__all__ = ["StackedCQLLoss", "stackable_cql_reason"]

_HYPER = ("loss_function", "num_random", "temperature", "min_q_weight", "with_lagrange", "max_q_backup",
          "deterministic_backup", "backup_action", "actor_bc_weight", "fixed_alpha", "num_qvalue_nets", "reduction")


def _key(key: Any) -> tuple[str, ...]:
    return key if isinstance(key, tuple) else (key,)


def _value(x: Any) -> Any:
    return x.tolist() if isinstance(x, Tensor) else x


def _leaves(params: TensorDictBase) -> list[tuple[tuple[str, ...], Tensor]]:
    return [(_key(k), v) for k, v in params.items(True, True)]


def stackable_cql_reason(losses: Sequence[Any]) -> str | None:
    """Why ``losses`` cannot run as one :class:`StackedCQLLoss` (None when they can)."""
    first = losses[0]
    for loss in losses:
        if type(loss) is not FusedOfflineCQLLoss:
            return (f"the batched seeds run the fused continuous CQL loss, not {type(loss).__name__} "
                    "(set cql.fused to true; Cal-QL is online-only)")
        if not loss.fast_path or loss._actor is None or loss._q_plan is None or \
                loss._q_in_keys != [unravel_key(loss._actor[2]), unravel_key(loss.tensor_keys.action)]:
            return "the batched seeds need offrl's plain MLP actor and critics"
        if loss.max_q_backup:
            return "the batched seeds do not run cql.max_q_backup"
        if any(_value(getattr(loss, a, None)) != _value(getattr(first, a, None)) for a in _HYPER):
            return "every seed must use the same hyperparameters"
        for attr in ("action_center", "action_half", "target_entropy", "min_log_alpha", "max_log_alpha",
                     "target_action_gap"):
            if _value(getattr(loss, attr, None)) != _value(getattr(first, attr, None)):
                return "every seed must use the same action bounds, entropy and Lagrange settings"
        if float(loss.value_estimator.gamma) != float(first.value_estimator.gamma) or \
                type(loss.value_estimator).__name__ != "TD0Estimator":
            return "the batched seeds need the same TD(0) value estimator"
        for name in ("actor_network_params", "qvalue_network_params"):
            mine, theirs = _leaves(getattr(loss, name)), _leaves(getattr(first, name))
            if [(k, tuple(v.shape), v.device) for k, v in mine] != [(k, tuple(v.shape), v.device) for k, v in theirs]:
                return "every seed must use the same network sizes and device"
    return None


def _tanh_normal_sample(dist: Any, eps: Tensor) -> tuple[Tensor, Tensor]:
    """TanhNormal's ``rsample_and_log_prob`` with the standard-normal noise ``eps`` given (same arithmetic)."""
    normal = dist.root_dist
    preimage = normal.loc + eps * normal.scale
    transform = dist.transforms[0]
    sample = transform(preimage)
    log_prob = dist.base_dist.log_prob(preimage) - _sum_rightmost(
        transform.log_abs_det_jacobian(preimage, sample), len(dist.event_shape))
    return sample, log_prob


class StackedCQLLoss:
    """N fused continuous CQL losses as one batched loss over stacked parameters (module docstring).

    ``params`` are the stacked leaves to optimize (actor, critics, ``log_alpha`` unless fixed,
    ``log_alpha_prime`` with Lagrange); ``target_sources`` / ``targets`` the stacked critics and target
    critics (the soft update's pairs); ``seed_params(i)`` maps seed i's own tensors (by identity) to their
    stacked leaves. ``generators[i]`` is seed i's random stream.
    """

    discrete_cql = False

    def __init__(self, losses: Sequence[Any], generators: Sequence[torch.Generator]) -> None:
        reason = stackable_cql_reason(losses)
        if reason is not None:
            raise ValueError(reason)
        if len(generators) != len(losses):
            raise ValueError("one generator per seed")
        self.losses = list(losses)
        self.generators = list(generators)
        first = self.losses[0]
        self.actor_params = self._stack_group("actor_network_params")
        self.critic_params = self._stack_group("qvalue_network_params")
        self.target_critics = self._stack_group("target_qvalue_network_params", grad=False)
        self.log_alpha = stack_as_views([loss.log_alpha for loss in self.losses])
        self.log_alpha_prime = (stack_as_views([loss.log_alpha_prime for loss in self.losses]) if first.with_lagrange
                                else None)
        self.params: list[Tensor] = [*self.actor_params.values(), *self.critic_params.values()]
        self.params += [p for p in (self.log_alpha, self.log_alpha_prime) if p is not None and p.requires_grad]
        self.target_sources = list(self.critic_params.values())
        self.targets = list(self.target_critics.values())
        plan, self.tail, self.actor_in, self.actor_out = first._actor
        self.actor_steps = stacked_steps(plan, self.actor_params)
        self.q_steps = stacked_steps(first._q_plan, self.critic_params)
        self.target_steps = stacked_steps(first._q_plan, self.target_critics)
        self.dist_in = first._dist_in
        self.gamma = float(first.value_estimator.gamma)
        self._checked = False

    # ------------------------------------------------------------------------------------- building
    def _stack_group(self, name: str, grad: bool = True) -> dict[tuple[str, ...], Tensor]:
        """Every seed's leaves of ``name`` (a TensorDictParams) stacked, by key; the seeds' tensors become views."""
        return {key: stack_as_views([getattr(loss, name).get(key) for loss in self.losses], grad)
                for key, _ in _leaves(getattr(self.losses[0], name))}

    def seed_params(self, i: int) -> dict[int, Tensor]:
        """``id(seed i's parameter) -> stacked leaf`` (how a seed's optimizer state maps onto the stack)."""
        loss = self.losses[i]
        out = {}
        for name, stacked in (("actor_network_params", self.actor_params), ("qvalue_network_params",
                                                                             self.critic_params)):
            for key, leaf in stacked.items():
                out[id(getattr(loss, name).get(key))] = leaf
        out[id(loss.log_alpha)] = self.log_alpha
        if self.log_alpha_prime is not None:
            out[id(loss.log_alpha_prime)] = self.log_alpha_prime
        return out

    # ------------------------------------------------------------------------------------- networks
    @staticmethod
    def _critics(steps: list, x: Tensor) -> Tensor:
        """The N x n_q critics on their seed's rows: ``x`` [N, R, in] -> [N, n_q, R]."""
        n, rows = x.shape[0], x.shape[1]
        n_q = steps[0][0].shape[1]
        h = x.unsqueeze(1).expand(n, n_q, rows, x.shape[-1]).reshape(n * n_q, rows, x.shape[-1])
        for step in steps:
            if isinstance(step, tuple):
                w, b = step
                w = w.reshape(n * n_q, *w.shape[2:])
                b = b.reshape(n * n_q, 1, -1) if b is not None else None
                h = torch.bmm(h, w.transpose(1, 2))
                if b is not None:
                    h = h.add_(b)
            else:
                h = step(h)
        return h.reshape(n, n_q, rows)

    def _dist_params(self, obs: Tensor, steps: list) -> TensorDictBase:
        """The N actors' distribution parameters at ``obs`` [N, B, obs] (a [N, B] TensorDict)."""
        out = self.tail(StackedQLoss.forward_mlp(steps, obs))
        out = out if isinstance(out, tuple) else (out,)
        return TensorDict(dict(zip(self.actor_out, out, strict=True)), batch_size=obs.shape[:2]).select(*self.dist_in)

    def _dist(self, params: TensorDictBase, repeat: int = 1) -> Any:
        """The TanhNormal of ``params`` ([N, B]), each state repeated ``repeat`` times (as
        FusedOfflineCQLLoss._repeat_dist repeats it, per seed)."""
        if repeat > 1:
            n, b = params.shape
            params = params.apply(lambda x: x.repeat_interleave(repeat, dim=1), batch_size=[n, b * repeat])
        dist = self.losses[0].actor_network.build_dist_from_params(params)
        if len(dist.transforms) != 1:
            raise ValueError("the batched seeds need the actor's TanhNormal on [-1, 1] (one tanh transform)")
        return dist

    def _draws(self, batch: int, act: int, device: torch.device) -> list[Tensor]:
        """Each seed's noise in FusedOfflineCQLLoss's order, stacked: backup eps [N,B,A], pi(s) and pi(s')
        proposal eps [N,B*K,A], uniform proposals [N,B*K,A], BC eps and actor eps [N,B,A]."""
        k = self.losses[0].num_random
        shapes = [((batch, act), "normal"), ((batch * k, act), "normal"), ((batch * k, act), "normal"),
                  ((batch * k, act), "uniform"), ((batch, act), "normal"), ((batch, act), "normal")]
        per_seed = []
        for g in self.generators:
            draws = []
            for shape, kind in shapes:
                x = torch.empty(shape, device=device)
                draws.append(x.normal_(generator=g) if kind == "normal" else x.uniform_(-1, 1, generator=g))
            per_seed.append(draws)
        return [torch.stack(d) for d in zip(*per_seed, strict=True)]

    def _check_batch(self, batch: TensorDictBase) -> None:
        first = self.losses[0]
        extra = [first.value_estimator.tensor_keys.steps_to_next_obs]
        if batch.ndim != 2 or any(batch.get(k, None) is not None for k in extra):
            raise ValueError("the batched seeds need [seeds, batch] transitions without multi-step keys")
        self._checked = True

    def _q_rows(self, obs: Tensor, actions: Tensor, repeat: int) -> Tensor:
        """The critic's input rows (its in_keys order): observations repeated ``repeat`` times, then actions."""
        if repeat > 1:
            obs = obs.repeat_interleave(repeat, dim=1)
        return torch.cat([obs, actions], -1)

    # ------------------------------------------------------------------------------------- the loss
    def _penalty(self, out: dict[str, Tensor], q_pen: Tensor, pred_q: Tensor, curr_log_pis: Tensor,
                 next_log_pis: Tensor, act: int) -> Tensor:
        """CQL(H)'s penalty per seed (OfflineCQLLoss.cql_gaps and penalty_terms): adds ``loss_cql`` (and
        ``loss_alpha_prime``) to ``out``, returns the unweighted gap [N]. ``q_pen``: [N, n_q, 3 * B * K], the
        uniform, pi(s) and pi(s') proposals scored at s."""
        first = self.losses[0]
        n, n_q, b = pred_q.shape
        k = first.num_random
        log_density = torch.stack([torch.full_like(curr_log_pis, -act * math.log(2.0)), curr_log_pis,
                                   next_log_pis], 1).reshape(n, 1, 3, b, k)
        cat_q = (q_pen.reshape(n, n_q, 3, b, k) - log_density).permute(0, 1, 3, 2, 4).reshape(n, n_q, b, 3 * k)
        lse = torch.logsumexp(cat_q / first.temperature, dim=-1) * first.temperature
        gaps = (lse - pred_q).mean(-1)  # [N, n_q]
        if not first.with_lagrange:
            out["loss_cql"] = first.min_q_weight * gaps.sum(-1)
        else:
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6).unsqueeze(-1)
            slack = first.min_q_weight * gaps - first.target_action_gap
            out["loss_cql"] = (alpha_prime.detach() * slack).sum(-1)
            out["loss_alpha_prime"] = -0.5 * (alpha_prime * slack.detach()).sum(-1)
        return gaps.detach().mean(-1)

    @torch.no_grad()
    def _td_target(self, nxt: TensorDictBase, next_obs: Tensor, next_action: Tensor, next_log_prob: Tensor,
                   alpha: Tensor) -> Tensor:
        """TD(0) targets on the target critics (FusedOfflineCQLLoss._td_target per seed): [N, B]."""
        first = self.losses[0]
        q_next = self._critics(self.target_steps, self._q_rows(next_obs, next_action, 1))  # [N, n_q, B]
        next_value = q_next.min(1)[0]
        if not first.deterministic_backup:
            next_value = next_value - alpha.unsqueeze(-1) * next_log_prob
        keys = first.value_estimator.tensor_keys
        reward = nxt.get(keys.reward).squeeze(-1)
        terminated = nxt.get(keys.terminated, None)
        if terminated is None:
            terminated = nxt.get(keys.done)
        return reward + self.gamma * (~terminated.squeeze(-1)).int() * next_value

    def __call__(self, batch: TensorDictBase, bc_phase: Tensor | bool = False
                 ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """``batch`` [N, B] (seed i's transitions in row i) -> (the sum of the seeds' total losses, the
        per-seed metrics CQLTrainer logs, each [N], in its order; Q of the data actions [N, n_q, B], detached).
        ``bc_phase``: the actor trains on behaviour cloning (CQLTrainer's ``bc_steps``)."""
        if not self._checked:
            self._check_batch(batch)
        first = self.losses[0]
        keys = first.tensor_keys
        n, b = batch.shape
        k = first.num_random
        obs_key = self.actor_in
        obs = batch.get(obs_key)
        nxt = batch.get("next")
        next_obs = nxt.get(obs_key)
        action = first._unit_actions(batch).get(keys.action)  # in [-1, 1], as each seed's own loss sees it
        act = action.shape[-1]
        if first.min_log_alpha is not None or first.max_log_alpha is not None:
            self.log_alpha.data.clamp_(first.min_log_alpha, first.max_log_alpha)
        alpha = self.log_alpha.data.exp()  # [N]
        eps_next, eps_curr, eps_next_k, uniform, eps_bc, eps_pi = self._draws(b, act, obs.device)

        params_obs = self._dist_params(obs, self.actor_steps)
        dist_obs = self._dist(params_obs)
        with torch.no_grad():
            params_next = self._dist_params(next_obs, detached(self.actor_steps))
            dist_next = self._dist(params_next)
            next_action, next_log_prob = _tanh_normal_sample(dist_next, eps_next)
            if first.backup_action == "mean":
                next_action = dist_next.deterministic_sample
            curr_actions, curr_log_pis = _tanh_normal_sample(self._dist(params_obs.detach(), k), eps_curr)
            next_actions, next_log_pis = _tanh_normal_sample(self._dist(params_next, k), eps_next_k)
            target = self._td_target(nxt, next_obs, next_action, next_log_prob, alpha)  # [N, B]
        _, bc_sample_log_prob = _tanh_normal_sample(dist_obs, eps_bc)
        bc_log_prob = dist_obs.log_prob(action)
        pi_action, pi_log_prob = _tanh_normal_sample(dist_obs, eps_pi)

        skip_penalty = first.penalty_skipped
        blocks = [action] if skip_penalty else [action, uniform, curr_actions, next_actions]
        rows = torch.cat([self._q_rows(obs, blk, blk.shape[1] // b) for blk in blocks], 1)
        q_all = self._critics(self.q_steps, rows)  # [N, n_q, rows]
        pred_q = q_all[:, :, :b]  # [N, n_q, B]
        loss_qvalue = distance_loss(pred_q, target.unsqueeze(1).expand_as(pred_q), loss_function=first.loss_function)
        loss_qvalue = loss_qvalue.sum(1).mean(-1)
        td_error = (pred_q - target.unsqueeze(1)).pow(2).detach().max(1).values.mean(-1)

        out: dict[str, Tensor] = {"loss_qvalue": loss_qvalue}
        if skip_penalty:
            out["loss_cql"] = torch.zeros_like(loss_qvalue)
            gap = torch.full_like(loss_qvalue.detach(), math.nan)
        else:
            gap = self._penalty(out, q_all[:, :, b:], pred_q, curr_log_pis, next_log_pis, act)

        a = alpha.unsqueeze(-1)
        q_pi = self._critics(detached(self.q_steps), self._q_rows(obs, pi_action, 1))
        loss_actor = (a * pi_log_prob - q_pi.min(1)[0]).mean(-1)
        if first.actor_bc_weight > 0:
            scale = pred_q.detach().abs().mean((1, 2))
            loss_actor = loss_actor + first.actor_bc_weight * scale * (
                dist_obs.deterministic_sample - action).pow(2).mean((1, 2))
        target_entropy = first.target_entropy
        if target_entropy is not None:
            loss_alpha = (-self.log_alpha.unsqueeze(-1) * (pi_log_prob.detach() + target_entropy)).mean(-1)
        else:
            loss_alpha = torch.zeros_like(loss_actor)
        out["loss_actor_bc"] = (a * bc_sample_log_prob - bc_log_prob).mean(-1)
        out["loss_actor"] = loss_actor
        out["loss_alpha"] = loss_alpha
        actor_term = torch.where(torch.as_tensor(bc_phase), out["loss_actor_bc"], loss_actor)
        total = actor_term + out["loss_qvalue"] + out["loss_cql"] + loss_alpha
        if "loss_alpha_prime" in out:
            total = total + out["loss_alpha_prime"]
        metrics = {key: v.detach() for key, v in out.items()}
        metrics["alpha"] = alpha.clone()
        metrics["entropy"] = -pi_log_prob.detach().mean(-1)
        metrics["cql_gap"] = gap
        if first.with_lagrange:
            metrics["alpha_prime"] = self.log_alpha_prime.detach().exp()
        q1 = pred_q[:, 0].detach()
        std, mean = torch.std_mean(q1, dim=-1)
        metrics.update({"q_data_mean": mean, "q_data_std": std, "q_data_max": q1.max(-1).values,
                        "q_data_min": q1.min(-1).values, "td_error": td_error})
        return total.sum(), metrics, pred_q.detach()
