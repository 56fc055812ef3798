"""Replay buffers over the memmapped data: no copy, seeded sampling, and a state that resumes exactly."""

from __future__ import annotations

import io

import pytest
import torch
from helpers.datafiles import write_d4rl
from tensordict import MemoryMappedTensor
from torchrl.data import TensorDictReplayBuffer

from offrl.data import load_dataset
from offrl.errors import UserError


@pytest.fixture
def ds(tmp_path):
    write_d4rl(
        tmp_path / "d.hdf5",
        lengths=(50, 30, 70, 40),
        terminal=(False, True, False, True),
        next_observations=True,
    )
    return load_dataset(tmp_path / "d.hdf5")


def _indices(rb, n):
    return [rb.sample()["index"].clone() for _ in range(n)]


def test_buffer_is_a_torchrl_buffer_over_the_memmap(ds):
    assert isinstance(ds.rows, MemoryMappedTensor)  # the cache file, mapped, not loaded
    rb = ds.replay_buffer(16, seed=0)
    assert isinstance(rb, TensorDictReplayBuffer)
    assert len(rb) == len(ds)
    assert rb._storage._rows.data_ptr() == ds.rows.data_ptr()  # no copy
    batch = rb.sample()
    assert batch.batch_size == torch.Size([16])
    index = batch["index"]
    for key in ds.data.keys(include_nested=True, leaves_only=True):
        assert torch.equal(batch.get(key), ds.data.get(key)[index]), key
    with pytest.raises(RuntimeError):
        rb.extend(batch)  # the dataset is read-only


def test_in_memory_copy_samples_the_same(ds):
    mapped = ds.replay_buffer(32, seed=5)
    ram = ds.replay_buffer(32, seed=5, in_memory=True)
    assert ram._storage._rows.data_ptr() != ds.rows.data_ptr()
    a, b = mapped.sample(), ram.sample()
    assert torch.equal(a["index"], b["index"])
    assert torch.equal(a["observation"], b["observation"])


def test_seeded_sampling_is_deterministic(ds):
    a = _indices(ds.replay_buffer(8, seed=3), 5)
    b = _indices(ds.replay_buffer(8, seed=3), 5)
    c = _indices(ds.replay_buffer(8, seed=4), 5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(
    ("sampler", "prefetch"), [("random", None), ("without_replacement", None), ("random", 1)]
)
def test_state_dict_resumes_the_same_batches(ds, sampler, prefetch):
    rb = ds.replay_buffer(8, seed=0, sampler=sampler, prefetch=prefetch)
    _indices(rb, 4)
    blob = io.BytesIO()
    torch.save(rb.state_dict(), blob)
    expected = _indices(rb, 6)

    # A fresh process would build a new buffer (another seed even) and restore the saved state.
    resumed = ds.replay_buffer(8, seed=123, sampler=sampler, prefetch=prefetch)
    blob.seek(0)
    resumed.load_state_dict(torch.load(blob, weights_only=False))
    got = _indices(resumed, 6)
    assert all(torch.equal(x, y) for x, y in zip(expected, got, strict=True))
    # The checkpointed state does not embed the dataset.
    assert blob.getbuffer().nbytes < 64_000


def test_without_replacement_visits_every_transition_once_per_epoch(ds):
    rb = ds.replay_buffer(10, seed=0, sampler="without_replacement")
    seen = torch.cat(_indices(rb, len(ds) // 10))
    assert sorted(seen.tolist()) == list(range(len(ds)))


def test_state_from_another_dataset_is_refused(ds, tmp_path):
    write_d4rl(tmp_path / "other.hdf5", lengths=(5, 5), terminal=(True, True))
    other = load_dataset(tmp_path / "other.hdf5")
    state = ds.replay_buffer(4, seed=0).state_dict()
    with pytest.raises(UserError, match="same dataset"):
        other.replay_buffer(4, seed=0).load_state_dict(state)


def test_bad_buffer_options(ds):
    with pytest.raises(UserError, match="unknown sampler"):
        ds.replay_buffer(4, sampler="prioritized-ish")
    with pytest.raises(UserError, match="batch_size"):
        ds.replay_buffer(0)


def test_writes_to_the_data_never_reach_the_cache(ds):
    original = ds.data["observation"][0].clone()
    ds.data["observation"][0] += 1000.0  # a user's in-place edit changes this process's copy only
    fresh = load_dataset(ds.source)
    assert fresh.cache_path == ds.cache_path
    assert torch.equal(fresh.data["observation"][0], original)


def test_subset_sampler_never_draws_outside_its_indices_and_resumes(tmp_path):
    """The training split excludes held-out episodes: no sampled row may come from them, and a restored
    buffer draws the same batches."""
    import torch

    from offrl.data import load_dataset

    ds = load_dataset("offrl/cartpole/medium-v0")
    n = ds.info.transitions
    allowed = torch.arange(0, n, 3)
    rb = ds.replay_buffer(64, seed=5, indices=allowed)
    seen = torch.cat([rb.sample(return_info=True)[1]["index"] for _ in range(50)])
    assert bool(torch.isin(seen, allowed).all())
    assert seen.unique().numel() > 500  # uniform over the subset, not stuck on a few rows
    state = rb.state_dict()
    expected = [rb.sample()["observation"] for _ in range(3)]
    rb2 = ds.replay_buffer(64, seed=99, indices=allowed)
    rb2.load_state_dict(state)
    for want in expected:
        assert torch.equal(rb2.sample()["observation"], want)


@pytest.mark.parametrize("kind", ["random", "subset", "mixed"])
def test_stacked_sampler_draws_each_buffers_own_batches(ds, kind):
    """Several seeds' buffers sampled at once (offrl train --vectorize): each row is the batch its buffer's
    sample() would draw, and each generator ends where sample() leaves it."""
    from offrl.data.buffer import StackedSampler

    def buffers():
        subset = torch.arange(0, len(ds), 2)
        if kind == "random":
            return [ds.replay_buffer(16, seed=s) for s in (0, 1, 7)]
        if kind == "subset":
            return [ds.replay_buffer(16, seed=s, indices=subset) for s in (0, 1, 7)]
        # a buffer the fast path does not cover (without replacement) is sampled on its own
        return [ds.replay_buffer(16, seed=0), ds.replay_buffer(16, seed=1, sampler="without_replacement")]

    stacked, alone = buffers(), buffers()
    sampler = StackedSampler(stacked)
    assert (getattr(sampler, "_rows", None) is not None) == (kind != "mixed")  # one read of the rows the seeds' buffers share
    for _ in range(3):
        batch = sampler.sample()
        assert batch.batch_size == torch.Size([len(alone), 16])
        for i, rb in enumerate(alone):
            own = rb.sample().exclude("index")
            assert set(batch[i].keys(True, True)) == set(own.keys(True, True))
            for key in own.keys(True, True):
                assert torch.equal(batch[i].get(key), own.get(key)), (i, key)
    for a, b in zip(stacked, alone, strict=True):
        assert torch.equal(a._rng.get_state(), b._rng.get_state())
    assert not torch.equal(batch[0]["observation"], batch[1]["observation"])


@pytest.mark.parametrize("kind", ["random", "subset", "without_replacement", "prefetch"])
def test_direct_draw_is_sample_without_its_machinery(ds, kind):
    """The trainers' draw (offrl.data.buffer.direct_draw): for a plain dataset buffer, the batch sample() draws
    (less its ``index``), the generator left where sample() leaves it; any other buffer gets None."""
    from offrl.data.buffer import direct_draw

    def buffer():
        if kind == "subset":
            return ds.replay_buffer(16, seed=3, indices=torch.arange(1, len(ds), 3))
        if kind == "without_replacement":
            return ds.replay_buffer(16, seed=3, sampler="without_replacement")
        if kind == "prefetch":
            return ds.replay_buffer(16, seed=3, prefetch=2)
        return ds.replay_buffer(16, seed=3)

    fast, plain = buffer(), buffer()
    draw = direct_draw(fast)
    if kind in ("without_replacement", "prefetch"):
        assert draw is None
        return
    for _ in range(4):
        got, want = draw(), plain.sample().exclude("index")
        assert got.batch_size == want.batch_size and set(got.keys(True, True)) == set(want.keys(True, True))
        for key in want.keys(True, True):
            assert torch.equal(got.get(key), want.get(key)), key
    assert torch.equal(fast._storage._rng.get_state(), plain._storage._rng.get_state())
    assert not torch.equal(draw()["observation"], draw()["observation"])


def test_direct_draw_follows_a_buffer_changed_after_it_was_made(ds):
    """A transform appended later is applied: the draw then goes through sample()."""
    from torchrl.envs.transforms import RenameTransform

    from offrl.data.buffer import direct_draw

    rb = ds.replay_buffer(8, seed=1)
    draw = direct_draw(rb)
    assert "observation" in draw().keys()
    rb.append_transform(RenameTransform(["observation"], ["obs"]))
    batch = draw()
    assert "obs" in batch.keys() and "observation" not in batch.keys() and "index" not in batch.keys()
