"""The peers' synthetic workload data (seeded) in a memmapped replay buffer: offrl's own (what
``offrl train`` samples from) or the peers' ``LazyMemmapStorage`` one (the plain torchrl loop's)."""

from __future__ import annotations

import os

import torch
from tensordict import TensorDict
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers import SamplerWithoutReplacement

from offrl.data.buffer import make_replay_buffer
from offrl.data.layout import RowLayout

__all__ = ["N_TRANSITIONS", "synthetic_buffer"]

N_TRANSITIONS = 100_000


def synthetic_buffer(workload: str, batch: int, scratch: str, n: int = N_TRANSITIONS, device: str = "cpu", *,
                     offrl_buffer: bool = True):
    """The peers' synthetic data (seeded) in a memmapped torchrl buffer sampled without replacement.

    ``offrl_buffer``: the buffer ``offrl train`` samples from (:func:`offrl.data.buffer.make_replay_buffer`
    over one memmapped file of packed rows, as a converted dataset's cache; on a GPU resident in GPU memory
    and sampled there). Otherwise the peers' own ``LazyMemmapStorage`` buffer (the plain torchrl loop's).
    Discrete actions are int64 indices (the dataset layout).
    """
    g = torch.Generator().manual_seed(0)
    obs_dim, act_dim = (17, 6) if workload == "cql" else (4, 2)
    if workload == "cql":
        action = torch.rand(n, act_dim, generator=g) * 2 - 1
    else:
        action = torch.randint(0, 2, (n,), generator=g)
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[999::1000] = True
    data = TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g),
            "action": action,
            "next": {
                "observation": torch.randn(n, obs_dim, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "done": done,
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
                "truncated": done.clone(),
            },
        },
        batch_size=[n],
    )
    sampler = SamplerWithoutReplacement(drop_last=True)
    if offrl_buffer:
        return _packed_buffer(data, batch, scratch, device, sampler), data
    on_gpu = torch.device(device).type == "cuda"
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(n, device=device) if on_gpu else LazyMemmapStorage(n, scratch_dir=scratch),
        batch_size=batch,
        sampler=sampler,
    )
    rb.extend(data)
    return rb, data


def _packed_buffer(data, batch: int, scratch: str, device: str, sampler):
    """``data`` written as a converted dataset's packed rows file, memory-mapped back, in offrl's buffer."""
    leaves = {(k if isinstance(k, tuple) else (k,)): v.numpy() for k, v in data.items(True, True)}
    layout = RowLayout.build([(key, arr.shape[1:], arr.dtype) for key, arr in leaves.items()])
    n = data.shape[0]
    os.makedirs(scratch, exist_ok=True)
    path = os.path.join(scratch, "rows.bin")
    layout.pack(leaves, n).tofile(path)
    rows = torch.from_file(path, shared=False, size=n * layout.row_bytes, dtype=torch.uint8).view(n, -1)
    return make_replay_buffer(layout.view(rows), batch, rows=rows, layout=layout, device=device,
                              sampler=sampler, seed=0)
