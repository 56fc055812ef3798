"""The scripts in benchmarks/ as modules (they are scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def benchmark_module(stem: str) -> ModuleType:
    """Load ``benchmarks/<stem>.py`` afresh, registered as ``offrl_bench_<stem>`` (dataclasses look their module
    up in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(f"offrl_bench_{stem}", BENCHMARKS / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
