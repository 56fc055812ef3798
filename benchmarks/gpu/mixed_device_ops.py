"""Which ops of each workload's update mix CPU tensors into CUDA work (they break CUDA-graph capture).

Run on a machine with a CUDA GPU: ``python benchmarks/gpu/mixed_device_ops.py``.
"""

from __future__ import annotations

import collections
import tempfile
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from offrl.bench.synthetic import synthetic_buffer
from offrl.bench.updates import build_trainer


class MixedDeviceSpy(TorchDispatchMode):
    """Counts ops whose tensor arguments sit on both the CPU and a CUDA device, with where they came from."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: collections.Counter = collections.Counter()
        self.where: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if {"cpu", "cuda"} <= {a.device.type for a in flat}:
            key = (str(func), tuple((a.device.type, tuple(a.shape)) for a in flat))
            if key not in self.where:
                stack = traceback.format_stack(limit=14)[:-2]
                self.where[key] = "".join(line for line in stack if "offrl" in line or "torchrl" in line)[-1500:]
            self.hits[key] += 1
        return func(*args, **kwargs)


def main() -> None:
    for workload in ("cql", "discrete-cql", "dqn"):
        with tempfile.TemporaryDirectory() as scratch:
            rb, _ = synthetic_buffer(workload, 256, scratch, n=10_000, device="cuda")
            trainer = build_trainer(workload, rb, offline_steps=3, device="cuda")
            spy = MixedDeviceSpy()
            with spy:
                trainer.train()
            print("==", workload, "mixed-device ops:", len(spy.hits))
            for key, n in list(spy.hits.items())[:8]:
                print(n, key)
                print(spy.where[key])


if __name__ == "__main__":
    main()
