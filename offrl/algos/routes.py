"""Which CPU kernel a float32 linear layer of the fused losses runs on, decided by measuring on this machine.

The routes compute the same product: ``torch`` (torch's ``addmm``, MKL or OpenBLAS, then ``relu``),
``onednn`` (oneDNN's fused linear + ReLU, :class:`offrl.algos.kernels._OneDNNLinear`, its weight gradient
through oneDNN on transposed views too) and ``onednn-mm`` (the same forward and input gradient, the weight
gradient through torch's ``mm``, which reads the transposed operand without copying it). Which is faster
depends on the CPU (AVX-512 or AVX2 only, the vendor's BLAS), the layer's shape and the thread count: a
threshold measured on one CPU was 13% slower on another, and oneDNN's transposed weight gradient was 1.3x
faster than ``mm`` at 7,936 x 256 on an AVX-512 EPYC but 1.2x slower at 3,328 x 64 on an AVX2 one. So the
first time a process meets a shape (rows x out x in, ReLU or not, threads) it times forward + backward
through every route (a few milliseconds; best of several repetitions), keeps the fastest (``torch`` unless a
oneDNN route is at least 3% faster: never slower than plain torch) and records the decision with every
timing in the cache folder, one file per CPU model, ISA flags, torch version and route set
(``$OFFRL_CACHE/kernels/``). When other work keeps the cores this process needs busy, timings are not the
machine's: it records ``torch``, unmeasured, instead, which ``offrl bench --tune`` revisits. Later processes
read the decisions; the first decision written for a shape wins (under a file lock), so concurrent processes
and reruns on one machine agree, and a rerun of a seed is bit-identical. ``offrl bench --tune`` clears the
file and measures again.

``OFFRL_KERNEL_ROUTE=torch``, ``=onednn`` or ``=onednn-mm`` forces one route everywhere (``OFFRL_ONEDNN=0``
is ``torch``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from offrl.hardware import busy_cores, cpu_isa, cpu_model, quiet_for

__all__ = ["ROUTES", "decisions", "forced_route", "route_file", "route_for"]

ROUTES = ("torch", "onednn", "onednn-mm")
#: Part of the decisions file's name: decisions recorded over another set of routes are measured again.
ROUTE_SET = "r3"
#: A oneDNN route must beat torch by this factor to be chosen (measurement noise never makes a layer slower).
MARGIN = 0.97
#: Seconds of timing per route and shape, at most (after one untimed call of each).
BUDGET_S = 0.02
MIN_REPS, MAX_REPS = 3, 40

_decided: dict[str, str] = {}
_loaded_from: Path | None = None
#: ``$OFFRL_CACHE`` when the decisions were loaded: the per-call check is this string, not the path.
_loaded_cache_env: str | None = None

#: The variables a decision depends on, read from the environment's own mapping on every layer call
#: (``os.environ.get`` costs ~1 us each; a layer call must cost well under that, it runs ~10 times a step).
_ENV_NAMES = ("OFFRL_KERNEL_ROUTE", "OFFRL_ONEDNN", "OFFRL_CACHE")
_env_data: Any = getattr(os.environ, "_data", None)
try:
    _env_keys: tuple[Any, ...] = tuple(os.environ.encodekey(n) for n in _ENV_NAMES)  # type: ignore[attr-defined]
except AttributeError:  # not CPython's os._Environ: read it the usual way
    _env_data = None
#: Per-process answers (rows, out, in, relu, threads) -> route, valid while the environment reads the same.
_answers: dict[tuple[int, int, int, bool, int], str] = {}
_answers_env: tuple[Any, ...] | None = None


def _env_state() -> tuple[Any, ...]:
    if _env_data is not None:
        return tuple(_env_data.get(k) for k in _env_keys)
    return tuple(os.environ.get(n) for n in _ENV_NAMES)


def forced_route() -> str | None:
    """The route the environment forces (``OFFRL_KERNEL_ROUTE``, or ``OFFRL_ONEDNN=0``), else None."""
    value = os.environ.get("OFFRL_KERNEL_ROUTE", "").strip().lower()
    if value in ROUTES:
        return value
    if os.environ.get("OFFRL_ONEDNN", "1") == "0":
        return "torch"
    return None


def route_file() -> Path:
    """This machine's decisions:
    ``$OFFRL_CACHE/kernels/<cpu>-<isa digest>-torch<version>-<route set>.json``."""
    from offrl.data.convert import cache_root

    cpu = re.sub(r"[^A-Za-z0-9]+", "-", cpu_model()).strip("-").lower() or "cpu"
    isa = hashlib.sha256(cpu_isa().encode()).hexdigest()[:8]
    torch_version = re.sub(r"[^A-Za-z0-9.]+", "-", torch.__version__)
    return cache_root() / "kernels" / f"{cpu}-{isa}-torch{torch_version}-{ROUTE_SET}.json"


def _key(rows: int, out: int, inp: int, relu: bool, threads: int) -> str:
    return f"{rows}x{out}x{inp}{'+relu' if relu else ''}@{threads}t"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    routes = data.get("routes") if isinstance(data, dict) else None
    return routes if isinstance(routes, dict) else {}


def decisions() -> dict[str, Any]:
    """The recorded decisions on this machine (key -> {route, torch_us, onednn_us, onednn-mm_us})."""
    return _read(route_file())


def _load() -> None:
    global _loaded_from, _loaded_cache_env
    cache_env = os.environ.get("OFFRL_CACHE", "")
    if _loaded_from is not None and cache_env == _loaded_cache_env:
        return  # every layer call comes here: no path building, no file access
    path = route_file()
    if _loaded_from != path:  # first use, or OFFRL_CACHE changed (tests)
        _decided.clear()
        _decided.update({k: v["route"] for k, v in _read(path).items()
                         if isinstance(v, dict) and v.get("route") in ROUTES})
        _loaded_from = path
    _loaded_cache_env = cache_env


def _record(key: str, entry: dict[str, Any]) -> str:
    """Write ``entry`` unless another process recorded ``key`` first; returns the route that stands."""
    path = route_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            routes = _read(path)
            standing = routes.get(key)
            if isinstance(standing, dict) and standing.get("route") in ROUTES:
                return standing["route"]
            routes[key] = entry
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"cpu": cpu_model(), "isa": cpu_isa(), "torch": torch.__version__,
                                       "routes": routes}, indent=1, sort_keys=True))
            os.replace(tmp, path)
    except OSError:  # a read-only cache: decide for this process only
        pass
    return entry["route"]


def _time_route(route: str, onednn: Callable, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                relu: bool) -> float:
    def once() -> None:
        if route != "torch":
            y = onednn(x, w, b, relu, mm_weight_grad=route == "onednn-mm")
        else:
            y = torch.addmm(b, x, w.t())
            y = torch.relu(y) if relu else y
        y.backward(torch.ones_like(y))
        x.grad = w.grad = b.grad = None

    t0 = time.perf_counter()
    once()  # untimed: first-call allocations and oneDNN's primitive creation
    first = time.perf_counter() - t0
    reps = max(MIN_REPS, min(MAX_REPS, int(BUDGET_S / max(first, 1e-6))))
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(rows: int, out: int, inp: int, relu: bool, onednn: Callable) -> dict[str, Any]:
    """Time forward + backward of one layer through every route (``onednn``: the oneDNN layer function,
    offrl.algos.kernels.onednn_linear); the fastest, and every timing (us)."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        # Deterministic inputs (no random draws: the caller's RNG streams stay untouched).
        x = torch.linspace(-1.0, 1.0, rows * inp).reshape(rows, inp).requires_grad_()
        w = torch.linspace(-0.1, 0.1, out * inp).reshape(out, inp).requires_grad_()
        b = torch.zeros(out, requires_grad=True)
        times = {route: _time_route(route, onednn, x, w, b, relu) for route in ROUTES}
    best = min(ROUTES[1:], key=times.__getitem__)
    route = best if times[best] < MARGIN * times["torch"] else "torch"
    return {"route": route, **{f"{r}_us": round(t * 1e6, 1) for r, t in times.items()}}


def route_for(rows: int, out: int, inp: int, relu: bool, onednn: Callable) -> str:
    """The route of a float32 CPU layer of this shape in this process: forced, recorded, or measured now
    (a shape already answered in this process, with the same environment, is a dictionary look-up)."""
    global _answers_env
    env = _env_state()
    if env != _answers_env:
        _answers.clear()
        _answers_env = env
    threads = torch.get_num_threads()
    answer = _answers.get((rows, out, inp, relu, threads))
    if answer is None:
        answer = _answers[(rows, out, inp, relu, threads)] = _route(rows, out, inp, relu, onednn)
    return answer


def _route(rows: int, out: int, inp: int, relu: bool, onednn: Callable) -> str:
    forced = forced_route()
    if forced is not None:
        return forced
    threads = torch.get_num_threads()
    key = _key(rows, out, inp, relu, threads)
    _load()
    route = _decided.get(key)
    if route is None:
        busy = _busy_cores()
        if busy is not None and not quiet_for(threads, busy):
            # Other work shares the cores this layer needs: timings now are not the machine's (on a 2-core
            # Intel Xeon a decision taken beside a 2-process study chose onednn-mm for a layer where torch was
            # faster idle, and kept it). Record plain torch, never slower than itself; `offrl bench --tune`
            # on a quiet machine measures again.
            entry = {"route": "torch", "measured": False, "busy_cores": round(busy, 2), "threads": threads}
        else:
            entry = {**measure(rows, out, inp, relu, onednn), "threads": threads}
            if busy is not None:
                entry["busy_cores"] = round(busy, 2)
        route = _record(key, entry)
        _decided[key] = route
    return route


def _busy_cores() -> float | None:
    return busy_cores(0.05)


def reset() -> None:
    """Forget this machine's decisions (``offrl bench --tune``): the next use of each shape measures again."""
    global _loaded_from
    path = route_file()
    path.unlink(missing_ok=True)
    _decided.clear()
    _answers.clear()
    _loaded_from = None
