"""Throughput figures: the trainer's own update step on synthetic data with the peers' workload
(:mod:`~offrl.bench.updates`, ``offrl bench cql|dqn|discrete-cql``) and the data layer's conversion, load
and sampling (:mod:`~offrl.bench.data`, ``offrl bench data``)."""

from __future__ import annotations

from offrl.bench.data import run_data_benchmark
from offrl.bench.environment import cpu_isa, cpu_model, environment
from offrl.bench.synthetic import synthetic_buffer
from offrl.bench.updates import (
    WORKLOADS,
    bench_workload,
    build_reference,
    build_trainer,
    format_results,
    run_bench,
    workload_config,
)

__all__ = [
    "WORKLOADS",
    "bench_workload",
    "build_reference",
    "build_trainer",
    "cpu_isa",
    "cpu_model",
    "environment",
    "format_results",
    "run_bench",
    "run_data_benchmark",
    "synthetic_buffer",
    "workload_config",
]
