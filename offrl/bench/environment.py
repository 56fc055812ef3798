"""The machine line of every benchmark: CPU model and ISA flags (offrl.hardware), threads, device and versions."""

from __future__ import annotations

import os
import platform
from typing import Any

import tensordict
import torch
import torchrl

from offrl.hardware import bf16_available, cpu_isa, cpu_model
from offrl.version import __version__ as offrl_version

__all__ = ["bf16_available", "cpu_isa", "cpu_model", "environment"]


def environment(threads: int | None = None) -> dict[str, Any]:
    """Threads, device and versions the figures were taken with."""
    return {
        "threads": threads if threads is not None else torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_waits": os.environ.get("OFFRL_OMP_WAITS"),  # why (offrl.cli.choose_openmp_waits)
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
