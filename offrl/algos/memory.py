"""What one update step needs in memory, and what the machine has: a batch that cannot fit is refused
before training, in one line, instead of ending in the kernel's OOM killer or a swap storm.

The estimate is a lower bound read from the networks' shapes: the activations autograd keeps for the
backward pass, per transition of a batch (for CQL: both critics on the data action and on each of the
``3 * num_random`` penalty actions), plus the networks with their gradients, Adam moments and target
copies. Against the peak RSS of real steps (CQL 2x256 with ``num_random`` 1 to 40, 2x1024; DQN) it is 0.75
to 1.04 of what a transition costs (docs/reliability.md), and it leaves out the interpreter, torch and the
dataset: a batch it refuses would at best just fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from offrl.algos._spec import dataset_shapes
from offrl.config.algos import CQLConfig, DiscreteCQLConfig, DQNConfig
from offrl.errors import UserError

__all__ = ["StepMemory", "available_memory", "check_batch_memory", "step_memory"]

#: The continuous CQL loss always has two critics (torchrl's ``num_qvalue_nets`` default, offrl.algos.cql).
CQL_CRITICS = 2
_SECTION = {CQLConfig: "cql", DiscreteCQLConfig: "discrete_cql", DQNConfig: "dqn"}


@dataclass(frozen=True)
class StepMemory:
    """Bytes an update needs: ``networks`` (fixed) + ``per_transition`` x batch size; ``why`` says what the
    per-transition figure counts, in the config's words."""

    networks: int
    per_transition: int
    why: str

    def total(self, batch_size: int) -> int:
        return self.networks + self.per_transition * batch_size


def _mlp_params(n_in: int, n_out: int, hidden: Sequence[int]) -> int:
    sizes = [n_in, *hidden, n_out]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def step_memory(cfg: Any, obs_dim: int, act_dim: int, n_actions: int, *, bf16: bool = False) -> StepMemory | None:
    """The memory of one update of ``cfg``'s algorithm (None for algorithms it does not model): ``act_dim``
    for continuous actions, ``n_actions`` for discrete ones."""
    act_bytes = 2 if bf16 else 4  # what autocast keeps for backward; parameters and Adam stay fp32
    hidden = [int(h) for h in cfg.hidden_sizes]
    kept = 2 * sum(hidden)  # per row: each hidden layer's output and its activation's (autograd keeps both)
    if isinstance(cfg, CQLConfig):
        penalty_skipped = cfg.min_q_weight == 0 and not cfg.with_lagrange
        rows = 1 + (0 if penalty_skipped else 3 * cfg.num_random)  # Q(s, a_data) + each penalty action
        critic_row = obs_dim + act_dim + kept + 1
        actor_row = obs_dim + kept + 2 * act_dim  # pi(s) and pi(s')
        floats = CQL_CRITICS * rows * critic_row + 2 * actor_row + 3 * cfg.num_random * act_dim
        params = 4 * _mlp_params(obs_dim, 2 * act_dim, hidden) + 5 * CQL_CRITICS * _mlp_params(
            obs_dim + act_dim, 1, hidden)  # actor: weights, grads, 2 Adam moments; critics also a target copy
        why = (f"{CQL_CRITICS} critics {hidden} on {rows} actions each: the data's and 3 x cql.num_random="
               f"{cfg.num_random} sampled ones")
    elif isinstance(cfg, (DQNConfig, DiscreteCQLConfig)):
        q_row = obs_dim + kept + n_actions
        floats = 2 * q_row  # Q(s) kept for backward, Q(s') of the greedy (double DQN) or target pass
        params = 5 * _mlp_params(obs_dim, n_actions, hidden)  # weights, grads, 2 Adam moments, target copy
        why = f"a Q network {hidden} over {n_actions} actions"
    else:
        return None
    return StepMemory(networks=4 * params, per_transition=act_bytes * floats + 4 * (2 * obs_dim + act_dim + 4),
                      why=why)


def available_memory(device: torch.device | str = "cpu") -> tuple[int, str] | None:
    """``(bytes, where the figure comes from)`` free for a run on ``device``, or None where unknown: a CUDA
    device's free memory, else ``MemAvailable`` from /proc/meminfo (Linux), else psutil's figure."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable, /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available), "psutil"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_batch_memory(cfg: Any, dataset: Any, batch_size: int, *, device: torch.device | str = "cpu",
                       bf16: bool = False, available: tuple[int, str] | None = None) -> None:
    """Refuse (:class:`UserError`, one line naming ``--batch-size``) a batch whose update cannot fit in
    ``available`` memory (default: :func:`available_memory` of ``device``); nothing to say when it fits or
    when either figure is unknown."""
    shapes = dataset_shapes(dataset)
    obs_dim = math.prod(shapes["observation_shape"]) or 1
    spec = shapes["action_spec"]
    n_actions = int(getattr(spec, "n", 0) or 0)
    act_dim = 1 if n_actions else math.prod(spec.shape) or 1
    need = step_memory(cfg, obs_dim, act_dim, n_actions, bf16=bf16)
    have = available if available is not None else available_memory(device)
    if need is None or have is None or need.total(batch_size) <= have[0]:
        return
    free, source = have
    if need.networks >= free:
        raise UserError(f"{_SECTION[type(cfg)]}.hidden_sizes {list(cfg.hidden_sizes)}: the networks with their gradients and optimizer "
                        f"state need about {_size(need.networks)} but {_size(free)} of memory are available "
                        f"({source}); use smaller hidden layers")
    most = (free - need.networks) // need.per_transition
    raise UserError(f"--batch-size {batch_size} (batch_size): an update on a batch this large needs about "
                    f"{_size(need.total(batch_size))} ({_size(need.per_transition)} a transition: {need.why}) but "
                    f"{_size(free)} of memory are available ({source}); use at most --batch-size {most}")
