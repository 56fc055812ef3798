"""What the machine is: the CPU's model name and the instruction sets that decide matmul speed (read from
``/proc/cpuinfo``; no torch), and how busy its cores are (``/proc/stat``). Benchmarks print the first two
beside every figure; kernel routes are cached per CPU; the CLI picks its OpenMP waits from the third."""

from __future__ import annotations

import functools
import os
import platform
import time

__all__ = ["ISA_FLAGS", "QUIET_SLACK", "bf16_available", "busy_cores", "cpu_isa", "cpu_model", "machine",
           "quiet_for"]

#: The instruction sets that decide matmul speed on a CPU (the figures' machine line names those present).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


@functools.cache
def _cpuinfo_line(prefix: str) -> str | None:
    """The first ``/proc/cpuinfo`` line starting with ``prefix`` (read once per process: the CPU does not
    change under it, and the kernel routes ask on every layer call)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo), for the machine line of every benchmark."""
    return _cpuinfo_line("model name") or platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The matmul-relevant ISA flags of the CPU (``avx2 fma`` or ``avx2 fma avx512f avx512_bf16 ...``)."""
    flags = _cpuinfo_line("flags")
    if flags is None:
        return "unknown"
    present = set(flags.split())
    return " ".join(flag for flag in ISA_FLAGS if flag in present) or "none of " + "/".join(ISA_FLAGS)


def machine() -> str:
    """``<cpu model> (<isa flags>)``: how runs and benchmarks name the CPU they ran on."""
    return f"{cpu_model()} ({cpu_isa()})"


def bf16_available() -> bool:
    """Whether the CPU has bfloat16 matmul instructions (AVX512-BF16 or AMX)."""
    isa = cpu_isa().split()
    return "avx512_bf16" in isa or "amx_bf16" in isa


#: Cores other work may keep busy, beyond the ones a process's threads need, for the machine to count as
#: quiet for that process.
QUIET_SLACK = 0.25


def quiet_for(threads: int, busy: float) -> bool:
    """Whether ``threads`` threads have the cores to themselves while other work keeps ``busy`` cores busy
    (``busy_cores``): the rule behind the CLI's OpenMP waits and the kernel routes' measuring."""
    return busy + threads <= (os.cpu_count() or 1) + QUIET_SLACK


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``; idle and iowait are not busy, steal is."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(fields) < 8:
        return None
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def busy_cores(interval: float = 0.1) -> float | None:
    """How many cores other processes keep busy right now: the busy share of all CPUs over ``interval``
    seconds while this process sleeps, times the core count (None where ``/proc/stat`` is unreadable)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(interval)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * (os.cpu_count() or 1)
