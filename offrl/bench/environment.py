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
        "cpu_count": os.cpu_count(),
        "versions": {
            "offrl": offrl_version,
            "torch": torch.__version__,
            "torchrl": torchrl.__version__,
            "tensordict": tensordict.__version__,
            "python": platform.python_version(),
        },
    }
