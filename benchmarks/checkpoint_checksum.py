"""What the checkpoint checksum costs (docs/reliability.md): the CRC-32 of a CQL 2x256 trainer's state
(networks, target critics, Adam moments, RNG and buffer state) beside the ``torch.save`` and ``torch.load``
it rides on.

Builds the trainer ``offrl train`` runs on the peers' workload (observations 17, actions 6, the default
2x256 CQL config), takes 5 updates so Adam's moments exist, then times, over ``--repeat`` rounds (medians):
``state_crc32`` of the state, ``save_checkpoint`` (torch.save + fsync + rename, CRC included) and
``load_checkpoint`` (torch.load + the CRC check) against a bare ``torch.load``. Prints one JSON line.

Usage: python benchmarks/checkpoint_checksum.py [--repeat N] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torchrl.data import Bounded

from offrl.algos import cql
from offrl.bench import synthetic_buffer
from offrl.config.algos import CQLConfig
from offrl.trainers import CQLTrainer
from offrl.trainers.checkpoint import load_checkpoint, save_checkpoint, state_crc32


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    scratch = Path(tempfile.mkdtemp(prefix="offrl-ckpt-crc-"))
    rb, _ = synthetic_buffer("cql", 256, str(scratch), 10_000)
    spec = torch.ones(6)
    parts = cql.build(CQLConfig(actor_bc_weight=0.0), observation_shape=(17,),
                      action_spec=Bounded(-spec, spec, (6,)), device="cpu", seed=0)
    trainer = CQLTrainer(loss_module=parts.loss_module, optimizer=parts.optimizer,
                         target_net_updater=parts.target_net_updater, replay_buffer=rb, offline_steps=5,
                         progress_bar=False, handle_signals=False, **parts.trainer_kwargs)
    trainer.train()
    state = trainer.state_dict()
    tensor_bytes = 0

    def count(obj) -> None:
        nonlocal tensor_bytes
        if isinstance(obj, torch.Tensor):
            tensor_bytes += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            for v in obj.values():
                count(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                count(v)

    count(state)
    path = scratch / "latest.pt"
    save_checkpoint(state, path)
    print(json.dumps({
        "workload": "cql 2x256, obs 17, act 6, after 5 updates",
        "threads": a.threads,
        "state_tensor_bytes": tensor_bytes,
        "file_bytes": path.stat().st_size,
        "crc32_ms": _median_ms(lambda: state_crc32(state), a.repeat),
        "save_checkpoint_ms": _median_ms(lambda: save_checkpoint(state, path), a.repeat),
        "load_checkpoint_ms": _median_ms(lambda: load_checkpoint(path), a.repeat),
        "torch_load_ms": _median_ms(lambda: torch.load(path, weights_only=True, map_location="cpu"), a.repeat),
    }))


if __name__ == "__main__":
    main()
