"""`offrl bench`: update throughput of offrl's training step on synthetic data, with the peers' workload.

The workload is the one ../shared/peers/ measures for d3rlpy and a plain torchrl loop, so the figures can
be put side by side (benchmarks/compare_peers.py does that in one run):

* CQL: observations 17, actions 6, 2x256 ReLU actor and critics, 2 critics, 10 action samples,
  Lagrange on (threshold 5), l2 critic loss, TD(0) with gamma 0.99, soft target update (tau 0.005);
  offrl runs its own loss (:class:`offrl.algos.fused_offline.FusedOfflineCQLLoss`).
* DQN: observations 4, 2 actions (one-hot), 2x256 ReLU, hard target update every 50 steps.
* Discrete CQL: observations 4, 2 actions (index), 2x256 ReLU, soft target update; offrl runs its own
  loss (:class:`offrl.algos.fused_offline.FusedWeightedDiscreteCQLLoss`).

Each update samples a batch from a memmapped torchrl buffer (100,000 random transitions, sampling without
replacement) and runs :func:`offrl.algos.fused.make_update` on the fused losses with fused Adam. The buffer is
the one ``offrl train`` uses (a TensorDictReplayBuffer over a converted dataset's memmapped packed rows).
``reference=True`` runs torchrl's own losses in the plain loop instead (torchrl's for-loop Adam,
``SoftUpdate.step``, a ``LazyMemmapStorage`` buffer), which is what bench_torchrl_plain.py measures.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from offrl.errors import UserError

__all__ = ["WORKLOADS", "run_bench", "bench_workload", "environment", "format_results"]

WORKLOADS = ("cql", "dqn", "discrete-cql")
_N = 100_000
_DEFAULT_UPDATES = {"cql": 200, "dqn": 1000, "discrete-cql": 1000}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo), for the machine line of every benchmark."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int | None = None) -> dict[str, Any]:
    """Threads, device and versions the figures were taken with."""
    import tensordict
    import torchrl

    from offrl.version import __version__ as offrl_version

    return {
        "threads": threads if threads is not None else torch.get_num_threads(),
        "device": "cpu",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "versions": {
            "offrl": offrl_version,
            "torch": torch.__version__,
            "torchrl": torchrl.__version__,
            "tensordict": tensordict.__version__,
            "python": platform.python_version(),
        },
    }


def _synthetic_buffer(workload: str, batch: int, scratch: str, n: int = _N, device: str = "cpu", *,
                      offrl_buffer: bool = True):
    """The peers' synthetic data (seeded) in a memmapped torchrl buffer sampled without replacement.

    ``offrl_buffer``: the buffer ``offrl train`` samples from (:func:`offrl.data.buffer.make_replay_buffer`
    over one memmapped file of packed rows, as a converted dataset's cache; on a GPU resident in GPU memory
    and sampled there). Otherwise the peers' own ``LazyMemmapStorage`` buffer (the plain torchrl loop's).
    """
    from tensordict import TensorDict
    from torchrl.data import LazyMemmapStorage, LazyTensorStorage, TensorDictReplayBuffer
    from torchrl.data.replay_buffers import SamplerWithoutReplacement

    g = torch.Generator().manual_seed(0)
    obs_dim, act_dim = (17, 6) if workload == "cql" else (4, 2)
    if workload == "cql":
        action = torch.rand(n, act_dim, generator=g) * 2 - 1
    elif workload == "dqn":
        action = torch.nn.functional.one_hot(torch.randint(0, 2, (n,), generator=g), 2)
    else:
        action = torch.randint(0, 2, (n,), generator=g)
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[999::1000] = True
    data = TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g),
            "action": action,
            "next": {
                "observation": torch.randn(n, obs_dim, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "done": done,
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
                "truncated": done.clone(),
            },
        },
        batch_size=[n],
    )
    sampler = SamplerWithoutReplacement(drop_last=True)
    if offrl_buffer:
        return _packed_buffer(data, batch, scratch, device, sampler), data
    on_gpu = torch.device(device).type == "cuda"
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(n, device=device) if on_gpu else LazyMemmapStorage(n, scratch_dir=scratch),
        batch_size=batch,
        sampler=sampler,
    )
    rb.extend(data)
    return rb, data


def _packed_buffer(data, batch: int, scratch: str, device: str, sampler):
    """``data`` written as a converted dataset's packed rows file, memory-mapped back, in offrl's buffer."""
    import os

    from offrl.data.buffer import make_replay_buffer
    from offrl.data.layout import RowLayout

    leaves = {(k if isinstance(k, tuple) else (k,)): v.numpy() for k, v in data.items(True, True)}
    layout = RowLayout.build([(key, arr.shape[1:], arr.dtype) for key, arr in leaves.items()])
    n = data.shape[0]
    os.makedirs(scratch, exist_ok=True)
    path = os.path.join(scratch, "rows.bin")
    layout.pack(leaves, n).tofile(path)
    rows = torch.from_file(path, shared=False, size=n * layout.row_bytes, dtype=torch.uint8).view(n, -1)
    return make_replay_buffer(layout.view(rows), batch, rows=rows, layout=layout, device=device,
                              sampler=sampler, seed=0)


def _build_cql(data, reference: bool):
    from tensordict.nn import TensorDictModule
    from tensordict.nn.distributions import NormalParamExtractor
    from torchrl.data import Bounded
    from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
    from torchrl.objectives import CQLLoss, SoftUpdate

    from offrl.algos.fused_offline import FusedOfflineCQLLoss

    act_dim = data["action"].shape[-1]
    spec = Bounded(-torch.ones(act_dim), torch.ones(act_dim), (act_dim,))
    actor_net = torch.nn.Sequential(
        MLP(num_cells=[256, 256], out_features=2 * act_dim, activation_class=torch.nn.ReLU),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1),
    )
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high, "tanh_loc": False},
        default_interaction_type=ExplorationType.RANDOM,
    )
    qvalue = ValueOperator(
        in_keys=["observation", "action"],
        out_keys=["state_action_value"],
        module=MLP(num_cells=[256, 256], out_features=1, activation_class=torch.nn.ReLU),
    )
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        td0 = data[:4].clone()
        actor(td0)
        qvalue(td0)
    kwargs = dict(loss_function="l2", temperature=1.0, min_q_weight=1.0, max_q_backup=False,
                  deterministic_backup=False, num_random=10, with_lagrange=True, lagrange_thresh=5.0)
    if reference:
        loss = CQLLoss(actor, qvalue, **kwargs)
    else:
        # offrl's own CQL semantics (authors' penalty, working Lagrange multiplier), fused; same FLOPs as
        # torchrl's CQLLoss: 3 x 10 penalty actions x batch x 2 critics.
        loss = FusedOfflineCQLLoss(actor, qvalue, action_low=spec.space.low, action_high=spec.space.high,
                                   **kwargs)
    loss.make_value_estimator(gamma=0.99)
    return loss, SoftUpdate(loss, tau=0.005), 3e-4


def _build_discrete(data, workload: str, reference: bool):
    from torchrl.data import Categorical, Composite, OneHot
    from torchrl.modules import MLP, QValueActor
    from torchrl.objectives import DiscreteCQLLoss, DQNLoss, HardUpdate, SoftUpdate

    from offrl.algos.fused import FusedDQNLoss
    from offrl.algos.fused_offline import FusedWeightedDiscreteCQLLoss

    obs_dim = data["observation"].shape[-1]
    aspec = OneHot(2) if workload == "dqn" else Categorical(2)
    qnet = QValueActor(
        module=MLP(in_features=obs_dim, num_cells=[256, 256], out_features=2, activation_class=torch.nn.ReLU),
        spec=Composite(action=aspec),
        in_keys=["observation"],
    )
    with torch.no_grad():
        qnet(data[:4].clone())
    if workload == "dqn":
        cls = DQNLoss if reference else FusedDQNLoss
        loss = cls(value_network=qnet, loss_function="l2", delay_value=True)
        loss.make_value_estimator(gamma=0.99)
        return loss, HardUpdate(loss, value_network_update_interval=50), 2.5e-4
    if reference:
        loss = DiscreteCQLLoss(qnet, loss_function="l2", action_space="categorical", delay_value=True)
    else:  # offrl's own discrete CQL (TD target from the target network), lean
        loss = FusedWeightedDiscreteCQLLoss(qnet, loss_function="l2", action_space="categorical",
                                            delay_value=True, min_q_weight=1.0)
    loss.make_value_estimator(gamma=0.99)
    return loss, SoftUpdate(loss, tau=0.005), 3e-4


def build_workload(workload: str, data, *, reference: bool = False, precision: str = "fp32",
                   device: str = "cpu", cuda_graph: bool = False):
    """(loss module, update function) for a workload; the update runs one full training step."""
    from offrl.algos.fused import default_loss_keys, make_adam, make_update

    if workload == "cql":
        loss, target, lr = _build_cql(data, reference)
    else:
        loss, target, lr = _build_discrete(data, workload, reference)
    loss = loss.to(device)
    if target is not None and torch.device(device).type != "cpu":
        target = type(target)(loss, **_updater_kwargs(target))  # rebuilt on the moved parameters
    if not reference:
        # One Adam over all groups = torchrl's group_optimizers of per-group Adams (same lr everywhere),
        # but one fused kernel.
        optimizer = make_adam(loss.parameters(), lr=lr)
        return loss, make_update(loss, optimizer, target, loss_keys=default_loss_keys(loss), precision=precision,
                                 cuda_graph=cuda_graph)

    # The plain torchrl loop of ../shared/peers/bench_torchrl_plain.py (default for-loop Adam).
    optimizer = torch.optim.Adam(loss.parameters(), lr=lr)
    keys = default_loss_keys(loss)

    def update(batch):
        out = loss(batch)
        total = sum(out[k] for k in keys)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        target.step()
        return out

    return loss, update


def _updater_kwargs(target: Any) -> dict[str, Any]:
    from torchrl.objectives import HardUpdate

    if isinstance(target, HardUpdate):
        return {"value_network_update_interval": target.value_network_update_interval}
    return {"tau": 1 - target.eps}


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(update: Callable, rb, n: int, device: str = "cpu") -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        update(rb.sample())
    _sync(device)
    return time.perf_counter() - start


def bench_workload(
    workload: str,
    *,
    updates: int | None = None,
    batch: int = 256,
    precision: str = "fp32",
    reference: bool = False,
    warmup: int | None = None,
    n_transitions: int = _N,
    device: str = "cpu",
    cuda_graph: bool = False,
) -> dict[str, Any]:
    """Updates per second of one workload (sample + loss + backward + optimizer + target update)."""
    if workload not in WORKLOADS:
        raise UserError(f"offrl bench: unknown workload {workload!r}; choose one of {', '.join(WORKLOADS)}")
    updates = updates if updates is not None else _DEFAULT_UPDATES[workload]
    warmup = 50 if warmup is None else warmup  # as the peer scripts do
    scratch = tempfile.mkdtemp(prefix="offrl-bench-")
    try:
        torch.manual_seed(0)
        rb, data = _synthetic_buffer(workload, batch, scratch, n_transitions, device,
                                     offrl_buffer=not reference)
        _, update = build_workload(workload, data, reference=reference, precision=precision, device=device,
                                   cuda_graph=cuda_graph)
        _timed(update, rb, max(warmup, 12 if cuda_graph else 0), device)  # the graph is captured at call 11
        seconds = _timed(update, rb, updates, device)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "workload": workload,
        "impl": "torchrl plain loop (in-process)" if reference else "offrl fused",
        "precision": precision,
        "device": device,
        "cuda_graph": bool(cuda_graph and torch.device(device).type == "cuda"),
        "batch": batch,
        "updates": updates,
        "warmup": warmup,
        "seconds": round(seconds, 4),
        "updates_per_s": round(updates / seconds, 2),
    }


def _bf16_available() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_bench(
    workloads: Sequence[str] = WORKLOADS,
    *,
    updates: int | None = None,
    batch: int = 256,
    threads: int | None = 2,
    precision: str = "fp32",
    reference: bool = False,
    n_transitions: int = _N,
    warmup: int = 50,
    device: str = "cpu",
    cuda_graph: bool = False,
) -> dict[str, Any]:
    """Run ``workloads`` (``data`` included) and return ``{"environment": ..., "results": [...]}``."""
    if batch < 1:
        raise UserError(f"--batch must be a positive integer, got {batch}")
    if updates is not None and updates < 1:
        raise UserError(f"--updates must be a positive integer, got {updates}")
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be a positive integer, got {threads}")
        torch.set_num_threads(threads)
    if warmup < 0:
        raise UserError(f"--warmup must be zero or more, got {warmup}")
    if n_transitions < batch:
        raise UserError(f"--transitions ({n_transitions}) must be at least --batch ({batch})")
    if precision not in ("fp32", "bf16"):
        raise UserError(f"--precision must be fp32 or bf16, got {precision!r}")
    from offrl.config import resolve_device

    dev = resolve_device(device)
    device = str(dev)
    if cuda_graph and reference:
        raise UserError("--cuda-graph captures offrl's fused step; drop --reference")
    env = environment()
    if dev.type == "cuda":
        env["device"] = f"{dev} ({torch.cuda.get_device_name(dev)})"
    env["bf16_hardware"] = _bf16_available()
    results: list[dict[str, Any]] = []
    for workload in workloads:
        if workload == "data":
            results.append({"workload": "data", **_data_bench(batch)})
            continue
        results.append(
            bench_workload(workload, updates=updates, batch=batch, precision=precision, reference=reference,
                           n_transitions=n_transitions, warmup=warmup, device=device, cuda_graph=cuda_graph)
        )
    return {"environment": env, "results": results}


def _data_bench(batch: int) -> dict[str, Any]:
    try:
        from offrl.data.bench import run_data_benchmark
    except ImportError as err:
        raise UserError(
            f"offrl bench data: the data-layer benchmark (offrl.data.bench.run_data_benchmark) is not "
            f"available in this install ({err}); run the update workloads instead: offrl bench cql|dqn|discrete-cql"
        ) from None
    result = run_data_benchmark(batch_size=batch)
    return result if isinstance(result, dict) else {"result": result}


def format_results(report: dict[str, Any]) -> str:
    """Human-readable lines for :func:`run_bench`'s report."""
    env = report["environment"]
    v = env["versions"]
    lines = [
        f"offrl {v['offrl']}  torch {v['torch']}  torchrl {v['torchrl']}  tensordict {v['tensordict']}  "
        f"python {v['python']}",
        f"device {env['device']} ({env['cpu']}, {env['cpu_count']} cores)  threads {env['threads']}  "
        f"bf16 hardware {'yes' if env.get('bf16_hardware') else 'no'}",
    ]
    for r in report["results"]:
        if r["workload"] == "data":
            body = "  ".join(f"{k} {v}" for k, v in r.items() if k != "workload")
            lines.append(f"data  {body}")
            continue
        lines.append(
            f"{r['workload']:<13} {r['updates_per_s']:>9.2f} updates/s  ({r['impl']}, {r['precision']}, "
            f"{'CUDA graph, ' if r.get('cuda_graph') else ''}"
            f"batch {r['batch']}, {r['updates']} updates in {r['seconds']:.2f} s)"
        )
    return "\n".join(lines)
