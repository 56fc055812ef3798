"""The machine line of every benchmark: CPU model, threads, device and versions."""

from __future__ import annotations

import os
import platform
from typing import Any

import tensordict
import torch
import torchrl

from offrl.version import __version__ as offrl_version

__all__ = ["bf16_available", "cpu_model", "environment"]


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


#: The instruction sets that decide matmul speed on a CPU (the figures' machine line names those present).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_isa() -> str:
    """The matmul-relevant ISA flags of the CPU (``avx2 fma`` or ``avx2 fma avx512f avx512_bf16 ...``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return " ".join(flag for flag in ISA_FLAGS if flag in present) or "none of " + "/".join(ISA_FLAGS)
    except OSError:
        pass
    return "unknown"


def bf16_available() -> bool:
    """Whether the CPU has bfloat16 matmul instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def environment(threads: int | None = None) -> dict[str, Any]:
    """Threads, device and versions the figures were taken with."""
    return {
        "threads": threads if threads is not None else torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "device": "cpu",
        "cpu": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cpu_count": os.cpu_count(),
        "versions": {
            "offrl": offrl_version,
            "torch": torch.__version__,
            "torchrl": torchrl.__version__,
            "tensordict": tensordict.__version__,
            "python": platform.python_version(),
        },
    }
