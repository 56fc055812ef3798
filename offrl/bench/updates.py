"""`offrl bench`: update throughput of the trainer's own step on synthetic data, with the peers' workload.

The workload is the one ../shared/peers/ measures for d3rlpy and a plain torchrl loop, so the figures can
be put side by side (benchmarks/compare_peers.py does that in one run):

* CQL: observations 17, actions 6, 2x256 ReLU actor and critics, 2 critics, 10 action samples,
  Lagrange on (threshold 5), l2 critic loss, TD(0) with gamma 0.99, soft target update (tau 0.005).
* DQN: observations 4, 2 actions, 2x256 ReLU, hard target update every 50 steps.
* Discrete CQL: observations 4, 2 actions, 2x256 ReLU, soft target update.

offrl's figure is what ``offrl train`` runs: the algorithm built by :mod:`offrl.algos` from its config
dataclass (fused losses, fused Adam) inside a :class:`~offrl.trainers.CQLTrainer` /
:class:`~offrl.trainers.DQNTrainer` over offrl's memmapped buffer, timed over the trainer's loop (sample,
update, target update, metrics). ``reference=True`` runs torchrl's own losses in a plain loop instead
(torchrl's for-loop Adam, ``SoftUpdate.step``, a ``LazyMemmapStorage`` buffer), which is what
bench_torchrl_plain.py measures.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict.nn import TensorDictModule
from tensordict.nn.distributions import NormalParamExtractor
from torchrl.data import Bounded, Categorical, Composite
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ProbabilisticActor, QValueActor, TanhNormal, ValueOperator
from torchrl.objectives import CQLLoss, DiscreteCQLLoss, DQNLoss, HardUpdate, SoftUpdate

from offrl.algos import cql, discrete_cql, dqn
from offrl.bench.data import run_data_benchmark
from offrl.bench.environment import bf16_available, environment
from offrl.bench.synthetic import N_TRANSITIONS, synthetic_buffer
from offrl.config import resolve_device
from offrl.config.algos import CQLConfig, DiscreteCQLConfig, DQNConfig
from offrl.errors import UserError
from offrl.trainers import CQLTrainer, DQNTrainer, Trainer

__all__ = ["WORKLOADS", "bench_workload", "build_reference", "build_trainer", "format_results", "run_bench",
           "workload_config"]

WORKLOADS = ("cql", "dqn", "discrete-cql")
_DEFAULT_UPDATES = {"cql": 200, "dqn": 1000, "discrete-cql": 1000}
_HIDDEN = (256, 256)


def workload_config(workload: str) -> CQLConfig | DQNConfig | DiscreteCQLConfig:
    """The peers' workload as the config dataclass ``offrl train`` builds from."""
    if workload == "cql":
        return CQLConfig(hidden_sizes=_HIDDEN, orthogonal_init=False, actor_lr=3e-4, critic_lr=3e-4,
                         alpha_lr=3e-4, alpha_prime_lr=3e-4, gamma=0.99, tau=0.005, min_q_weight=1.0,
                         num_random=10, with_lagrange=True, target_action_gap=5.0, deterministic_backup=False,
                         loss_function="l2", scale_lb=0.1)
    if workload == "dqn":
        return DQNConfig(hidden_sizes=_HIDDEN, lr=2.5e-4, gamma=0.99, double_dqn=False, loss_function="l2",
                         target_update="hard", target_update_interval=50)
    return DiscreteCQLConfig(hidden_sizes=_HIDDEN, lr=3e-4, gamma=0.99, min_q_weight=1.0, loss_function="l2",
                             target_update="soft", tau=0.005)


def build_trainer(workload: str, replay_buffer: Any, *, offline_steps: int, precision: str = "fp32",
                  device: str = "cpu", cuda_graph: bool = False, **trainer_kwargs: Any) -> Trainer:
    """The trainer ``offrl train`` would run on this workload (no logger, evaluator or checkpoint)."""
    cfg = workload_config(workload)
    if workload == "cql":
        parts = cql.build(cfg, observation_shape=(17,), action_spec=Bounded(-torch.ones(6), torch.ones(6), (6,)),
                          device=device, seed=0)
    else:
        module = dqn if workload == "dqn" else discrete_cql
        parts = module.build(cfg, observation_shape=(4,), action_spec=Categorical(2), device=device, seed=0)
    trainer_cls = DQNTrainer if workload == "dqn" else CQLTrainer
    kwargs: dict[str, Any] = dict(
        loss_module=parts.loss_module, optimizer=parts.optimizer, target_net_updater=parts.target_net_updater,
        replay_buffer=replay_buffer, offline_steps=offline_steps, precision=precision, cuda_graph=cuda_graph,
        device=device, progress_bar=False, handle_signals=False, **parts.trainer_kwargs,
    )
    kwargs.update(trainer_kwargs)
    return trainer_cls(**kwargs)


def _reference_losses(workload: str, data: Any) -> tuple[Any, Any, float]:
    """torchrl's own loss, target updater and learning rate on the peers' networks."""
    if workload == "cql":
        act_dim = data["action"].shape[-1]
        spec = Bounded(-torch.ones(act_dim), torch.ones(act_dim), (act_dim,))
        actor_net = torch.nn.Sequential(
            MLP(num_cells=list(_HIDDEN), out_features=2 * act_dim, activation_class=torch.nn.ReLU),
            NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1),
        )
        actor = ProbabilisticActor(
            TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
            in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal,
            distribution_kwargs={"low": spec.space.low, "high": spec.space.high, "tanh_loc": False},
            default_interaction_type=ExplorationType.RANDOM,
        )
        qvalue = ValueOperator(in_keys=["observation", "action"], out_keys=["state_action_value"],
                               module=MLP(num_cells=list(_HIDDEN), out_features=1, activation_class=torch.nn.ReLU))
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            td0 = data[:4].clone()
            actor(td0)
            qvalue(td0)
        loss = CQLLoss(actor, qvalue, loss_function="l2", temperature=1.0, min_q_weight=1.0, max_q_backup=False,
                       deterministic_backup=False, num_random=10, with_lagrange=True, lagrange_thresh=5.0)
        loss.make_value_estimator(gamma=0.99)
        return loss, SoftUpdate(loss, tau=0.005), 3e-4
    qnet = QValueActor(
        module=MLP(in_features=data["observation"].shape[-1], num_cells=list(_HIDDEN), out_features=2,
                   activation_class=torch.nn.ReLU),
        spec=Composite(action=Categorical(2)), in_keys=["observation"],
    )
    with torch.no_grad():
        qnet(data[:4].clone())
    if workload == "dqn":
        loss = DQNLoss(value_network=qnet, loss_function="l2", delay_value=True)
        loss.make_value_estimator(gamma=0.99)
        return loss, HardUpdate(loss, value_network_update_interval=50), 2.5e-4
    loss = DiscreteCQLLoss(qnet, loss_function="l2", action_space="categorical", delay_value=True)
    loss.make_value_estimator(gamma=0.99)
    return loss, SoftUpdate(loss, tau=0.005), 3e-4


_REFERENCE_KEYS = {"cql": ["loss_actor", "loss_qvalue", "loss_cql", "loss_alpha", "loss_alpha_prime"],
                   "dqn": ["loss"], "discrete-cql": ["loss_qvalue", "loss_cql"]}


def build_reference(workload: str, data: Any, device: str = "cpu") -> Callable[[Any], Any]:
    """The plain torchrl loop of ../shared/peers/bench_torchrl_plain.py (default for-loop Adam): one update."""
    torch.manual_seed(0)
    loss, target, lr = _reference_losses(workload, data)
    loss = loss.to(device)
    if torch.device(device).type != "cpu":  # rebuilt on the moved parameters
        target = (HardUpdate(loss, value_network_update_interval=target.value_network_update_interval)
                  if isinstance(target, HardUpdate) else SoftUpdate(loss, tau=1 - target.eps))
    optimizer = torch.optim.Adam(loss.parameters(), lr=lr)
    keys = _REFERENCE_KEYS[workload]

    def update(batch: Any) -> Any:
        out = loss(batch)
        total = sum(out[k] for k in keys)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        target.step()
        return out

    return update


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _time_reference(update: Callable, rb: Any, warmup: int, updates: int, device: str) -> float:
    for _ in range(warmup):
        update(rb.sample())
    _sync(device)
    start = time.perf_counter()
    for _ in range(updates):
        update(rb.sample())
    _sync(device)
    return time.perf_counter() - start


def _time_trainer(trainer: Trainer, warmup: int, updates: int, device: str) -> float:
    """Seconds the trainer's loop takes for ``updates`` steps after ``warmup`` untimed ones (one logged row
    at the end of each part, as ``offrl train`` logs at its interval)."""
    if warmup:
        trainer.train()
        trainer.offline_steps = warmup + updates
    _sync(device)
    start = time.perf_counter()
    trainer.train()
    _sync(device)
    return time.perf_counter() - start


def _roofline(trainer: Trainer, measured: float) -> dict[str, Any] | None:
    """The update's matmul FLOPs (one more step under torch's FlopCounterMode, layers on torch's route so
    every product is counted), this machine's best fp32 rate at the update's heaviest layer (forward +
    backward, the faster route; :mod:`offrl.algos.routes`), the bound rate / FLOPs and measured / bound."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    from offrl.algos import kernels, routes

    class FlopCounter(TorchDispatchMode):  # FlopCounterMode's module tracker trips over TensorDict modules
        total = 0
        moved = 0  # bytes read and written by every other op (elementwise, reductions, gathers, copies)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            count = flop_registry.get(func._overloadpacket)
            name = func._overloadpacket.__name__
            if count is None and name.endswith("_") and hasattr(torch.ops.aten, name[:-1]):  # addmm_ is addmm's
                count = flop_registry.get(getattr(torch.ops.aten, name[:-1]))  # products, written in place
            if count is not None:
                self.total += count(*args, **kwargs, out_val=out)
            else:
                self.moved += _bytes_moved(func, (*args, *kwargs.values()), out)
            return out

    previous = os.environ.get("OFFRL_KERNEL_ROUTE")
    os.environ["OFFRL_KERNEL_ROUTE"] = "torch"
    try:
        trainer.offline_steps += 1
        with FlopCounter() as counter:
            trainer.train()
    finally:
        if previous is None:
            os.environ.pop("OFFRL_KERNEL_ROUTE", None)
        else:
            os.environ["OFFRL_KERNEL_ROUTE"] = previous
    flops = counter.total
    shapes = []
    for key in routes.decisions():  # "ROWSxOUTxIN[+relu]@Nt", every layer shape the update ran
        dims, _, threads = key.partition("@")
        if threads == f"{torch.get_num_threads()}t":
            rows, out, inp = (int(v) for v in dims.split("+")[0].split("x"))
            shapes.append((rows * out * inp, rows, out, inp))
    if not flops or not shapes:
        return None
    _, rows, out, inp = max(shapes)
    timing = routes.measure(rows, out, inp, True, kernels.onednn_linear)
    seconds = min(timing[f"{route}_us"] for route in routes.ROUTES) * 1e-6
    rate = 3 * 2 * rows * out * inp / seconds  # forward, input gradient, weight gradient
    bound = rate / flops
    bandwidth = _stream_bandwidth(rows * out)
    with_traffic = 1.0 / (flops / rate + counter.moved / bandwidth)
    def sig(x: float) -> float:  # four significant digits, whatever the workload's scale
        return float(f"{x:.4g}")

    return {"gflop_per_update": sig(flops / 1e9), "gemm_gflops": sig(rate / 1e9),
            "at": f"{rows}x{out}x{inp}", "bound_updates_per_s": sig(bound),
            "fraction_of_bound": sig(measured / bound),
            "other_mb_per_update": sig(counter.moved / 1e6), "stream_gb_per_s": sig(bandwidth / 1e9),
            "bound_with_traffic_updates_per_s": sig(with_traffic),
            "fraction_of_bound_with_traffic": sig(measured / with_traffic)}


def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel reads or writes for ``t``: its distinct elements (a broadcast dimension counts once)."""
    distinct = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            distinct *= size
    return distinct * t.element_size()


#: Ops that read only the rows or elements they return from their first input (a gather), and ops that read
#: nothing from their tensor input (it gives only the dtype and device of a new tensor).
_GATHERS = ("index_select", "gather", "embedding", "index")
_FACTORIES = ("new_zeros", "new_empty", "new_ones", "new_full", "zeros_like", "empty_like", "ones_like", "full_like")


def _bytes_moved(func: Any, inputs: tuple, out: Any) -> int:
    """Bytes a non-matmul aten op reads and writes: its tensor inputs and outputs (a gather reads only what it
    returns; a factory reads nothing); 0 for a view (an output sharing an input's storage, from an op that does
    not write in place)."""
    ins = [t for t in inputs if isinstance(t, torch.Tensor)]
    ins += [t for a in inputs if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
    outs = [t for t in (out if isinstance(out, (list, tuple)) else (out,)) if isinstance(t, torch.Tensor)]
    name = func._overloadpacket.__name__
    in_place = name.endswith("_")
    storages = {t.untyped_storage().data_ptr() for t in ins if t.device.type == "cpu"}
    if not in_place and outs and all(t.untyped_storage().data_ptr() in storages for t in outs):
        return 0
    written = sum(_tensor_bytes(t) for t in outs)
    if name in _FACTORIES:
        return written
    read = [_tensor_bytes(t) for t in ins]
    if name in _GATHERS and read:
        read[0] = min(read[0], written)
    return sum(read) + written


def _stream_bandwidth(elements: int) -> float:
    """Bytes/s of an elementwise ``c = a + b`` over ``elements`` float32 values at this thread count (best of
    20): the rate a memory-bound op can reach at the update's activation size."""
    a, b = torch.rand(elements), torch.rand(elements)
    c = torch.empty_like(a)
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        torch.add(a, b, out=c)
        best = min(best, time.perf_counter() - start)
    return 3 * elements * 4 / best


def bench_workload(
    workload: str,
    *,
    updates: int | None = None,
    batch: int = 256,
    precision: str = "fp32",
    reference: bool = False,
    warmup: int | None = None,
    n_transitions: int = N_TRANSITIONS,
    device: str = "cpu",
    cuda_graph: bool = False,
    roofline: bool = False,
) -> dict[str, Any]:
    """Updates per second of one workload (sample + loss + backward + optimizer + target update); with
    ``roofline``, also the fp32 GEMM bound at its layer sizes and the fraction of it reached."""
    if workload not in WORKLOADS:
        raise UserError(f"offrl bench: unknown workload {workload!r}; choose one of {', '.join(WORKLOADS)}")
    updates = updates if updates is not None else _DEFAULT_UPDATES[workload]
    warmup = 50 if warmup is None else warmup  # as the peer scripts do
    warmup = max(warmup, 12 if cuda_graph else 0)  # the graph is captured at call 11
    scratch = tempfile.mkdtemp(prefix="offrl-bench-")
    try:
        torch.manual_seed(0)
        rb, data = synthetic_buffer(workload, batch, scratch, n_transitions, device, offrl_buffer=not reference)
        if reference:
            seconds = _time_reference(build_reference(workload, data, device), rb, warmup, updates, device)
        else:
            trainer = build_trainer(workload, rb, offline_steps=warmup or updates, precision=precision,
                                    device=device, cuda_graph=cuda_graph, log_interval=warmup + updates,
                                    save_trainer_interval=warmup + updates)
            seconds = _time_trainer(trainer, warmup, updates, device)
            if roofline:
                bound = _roofline(trainer, updates / seconds) if torch.device(device).type == "cpu" else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    extra = {"roofline": bound} if roofline and not reference else {}
    return {**extra,
        "workload": workload,
        "impl": "torchrl plain loop (in-process)" if reference else "offrl trainer",
        "precision": precision,
        "device": device,
        "cuda_graph": bool(cuda_graph and torch.device(device).type == "cuda"),
        "batch": batch,
        "updates": updates,
        "warmup": warmup,
        "seconds": round(seconds, 4),
        "updates_per_s": round(updates / seconds, 2),
    }


def run_bench(
    workloads: Sequence[str] = WORKLOADS,
    *,
    updates: int | None = None,
    batch: int = 256,
    threads: int | None = 2,
    precision: str = "fp32",
    reference: bool = False,
    n_transitions: int | None = None,
    warmup: int = 50,
    device: str = "cpu",
    cuda_graph: bool = False,
    tune: bool = False,
    roofline: bool = False,
) -> dict[str, Any]:
    """Run ``workloads`` (``data`` included) and return ``{"environment": ..., "results": [...]}``.

    ``n_transitions``: the buffer size (default: 100,000 for the update workloads, as the peers; 1,000,000
    for ``data``). ``tune``: forget this machine's kernel-route decisions first, so every layer shape is measured again
    (:mod:`offrl.algos.routes`); ``roofline``: add each workload's fp32 GEMM bound and the fraction reached."""
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
    if n_transitions is not None and n_transitions < batch:
        raise UserError(f"--transitions ({n_transitions}) must be at least --batch ({batch})")
    if precision not in ("fp32", "bf16"):
        raise UserError(f"--precision must be fp32 or bf16, got {precision!r}")
    dev = resolve_device(device)
    device = str(dev)
    if cuda_graph and reference:
        raise UserError("--cuda-graph captures offrl's trainer step; drop --reference")
    if tune:
        from offrl.algos import routes

        routes.reset()
    env = environment()
    if dev.type == "cuda":
        env["device"] = f"{dev} ({torch.cuda.get_device_name(dev)})"
    env["bf16_hardware"] = bf16_available()
    results: list[dict[str, Any]] = []
    for workload in workloads:
        if workload == "data":
            results.append({"workload": "data", **_data_bench(batch, n_transitions)})
            continue
        results.append(
            bench_workload(workload, updates=updates, batch=batch, precision=precision, reference=reference,
                           n_transitions=n_transitions or N_TRANSITIONS, warmup=warmup, device=device, cuda_graph=cuda_graph,
                           roofline=roofline)
        )
    return {"environment": env, "results": results}


def _data_bench(batch: int, n_transitions: int | None) -> dict[str, Any]:
    result = run_data_benchmark(**({"transitions": n_transitions} if n_transitions else {}), batch_size=batch)
    return result if isinstance(result, dict) else {"result": result}


def format_results(report: dict[str, Any]) -> str:
    """Human-readable lines for :func:`run_bench`'s report."""
    env = report["environment"]
    v = env["versions"]
    lines = [
        f"offrl {v['offrl']}  torch {v['torch']}  torchrl {v['torchrl']}  tensordict {v['tensordict']}  "
        f"python {v['python']}",
        f"device {env['device']} ({env['cpu']}, {env['cpu_isa']}, {env['cpu_count']} cores)  threads {env['threads']}  "
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
        if "roofline" in r:
            b = r["roofline"]
            lines.append("              roofline: n/a (CPU fp32 only)" if b is None else
                         f"              roofline: {b['gflop_per_update']} GFLOP per update, fp32 GEMM "
                         f"{b['gemm_gflops']} GFLOP/s at {b['at']} -> bound {b['bound_updates_per_s']} updates/s; "
                         f"measured = {100 * b['fraction_of_bound']:.0f}% of it\n"
                         f"              with the other ops' traffic: {b['other_mb_per_update']} MB per update at "
                         f"{b['stream_gb_per_s']} GB/s (c = a + b at the layer's size) -> bound "
                         f"{b['bound_with_traffic_updates_per_s']} updates/s; measured = "
                         f"{100 * b['fraction_of_bound_with_traffic']:.0f}% of it")
    return "\n".join(lines)
