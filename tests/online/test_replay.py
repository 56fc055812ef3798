"""Mixed and appended offline/online replay: the offline fraction's schedule, exact per-batch mixing,
Monte-Carlo returns of collected episodes, and checkpoint round trips (real CartPole collectors)."""

from __future__ import annotations

import pytest
import torch
from torchrl.collectors import Collector, RandomPolicy

from offrl.errors import UserError
from offrl.online import AppendReplayBuffer, LinearSchedule, MixedReplayBuffer, OnlineTransitions, env_factory


def _batches(dataset, n, frames_per_batch=50, seed=0):
    env = env_factory(dataset, seed=seed)()
    collector = Collector(env, RandomPolicy(env.action_spec), frames_per_batch=frames_per_batch, total_frames=-1)
    out = []
    for data in collector:
        out.append(data)
        if len(out) == n:
            break
    collector.shutdown()
    return out


def _assert_same_rows(a, b):
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key in a.keys(True, True):  # online rows that wait for no episode end have mc_return = NaN
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True)


def _transitions(dataset, hold=False):
    offset = int(dataset.data["episode"].max()) + 1
    ref = (dataset.info.ref_min_score, dataset.info.ref_max_score)
    return OnlineTransitions(0.99, hold_episodes=hold, episode_offset=offset, ref=ref,
                             template=dataset.data[:1].to_tensordict()), offset


def test_linear_schedule():
    s = LinearSchedule(0.9, 0.1, 400)
    assert [s(f) for f in (0, 100, 400, 1000)] == pytest.approx([0.9, 0.7, 0.1, 0.1])
    assert LinearSchedule(0.5, 0.2, 0)(0) == 0.2
    with pytest.raises(UserError, match="final_fraction"):
        LinearSchedule(0.5, 1.5, 10)


def test_offline_fraction_follows_schedule_and_batches_mix_exactly(cartpole_medium):
    transitions, offset = _transitions(cartpole_medium)
    rb = MixedReplayBuffer(cartpole_medium.replay_buffer(40, seed=0), online_capacity=500, batch_size=40,
                           start_fraction=1.0, final_fraction=0.25, anneal_frames=200, frame_skip=2,
                           transitions=transitions)
    rb.set_rng(torch.Generator().manual_seed(0))
    assert rb.offline_fraction == 1.0
    seen = []
    for data in _batches(cartpole_medium, 4, frames_per_batch=25):
        rb.extend(data)
        seen.append(rb.offline_fraction)
        expected = 1.0 + (0.25 - 1.0) * min(1.0, rb.frames / 200)
        assert rb.offline_fraction == pytest.approx(expected)
        batch = rb.sample()
        # online rows are numbered after the dataset's episodes: count exactly where each row came from
        n_offline = int((batch["episode"] < offset).sum())
        assert n_offline == round(expected * 40)
        assert set(batch.keys(True, True)) == set(cartpole_medium.data.keys(True, True))
    assert seen == pytest.approx([0.8125, 0.625, 0.4375, 0.25])  # frames 50, 100, 150, 200 (frame_skip 2)
    assert rb.online_size == 100 and rb.online_metrics()["offline_fraction"] == pytest.approx(0.25)


def test_held_episodes_get_exact_mc_returns_and_stats(cartpole_medium):
    transitions, offset = _transitions(cartpole_medium, hold=True)
    rb = MixedReplayBuffer(cartpole_medium.replay_buffer(8, seed=0), online_capacity=1000, batch_size=8,
                           transitions=transitions)
    for data in _batches(cartpole_medium, 3, frames_per_batch=40):
        rb.extend(data)
    rows = rb._online_buffer[:]
    assert len(rows) > 0 and not torch.isnan(rows["mc_return"]).any()
    for ep in rows["episode"].unique():
        ep_rows = rows[rows["episode"] == ep]
        ep_rows = ep_rows[ep_rows["step"].argsort()]
        length = ep_rows.shape[0]
        assert bool(ep_rows[-1]["next", "done"]) and ep_rows["step"].tolist() == list(range(length))
        # CartPole pays 1 per step: G_t = (1 - 0.99^(T - t)) / (1 - 0.99)
        expected = torch.tensor([(1 - 0.99 ** (length - t)) / 0.01 for t in range(length)])
        torch.testing.assert_close(ep_rows["mc_return"].reshape(-1), expected.float())
    metrics = rb.online_metrics()
    assert metrics["online_episodes"] == rows["episode"].unique().numel()
    lo, hi = cartpole_medium.info.ref_min_score, cartpole_medium.info.ref_max_score
    assert metrics["online_normalized_score"] == pytest.approx(100 * (metrics["online_return_mean"] - lo) / (hi - lo))
    assert metrics["online_regret"] == pytest.approx(metrics["online_episodes"] * metrics["online_regret_mean"])


def test_mixed_state_round_trip_resumes_sampling(cartpole_medium):
    def make():
        t, _ = _transitions(cartpole_medium)
        rb = MixedReplayBuffer(cartpole_medium.replay_buffer(16, seed=0), online_capacity=60, batch_size=16,
                               start_fraction=0.5, final_fraction=0.0, anneal_frames=1000, transitions=t)
        rb.set_rng(torch.Generator().manual_seed(3))
        return rb

    rb = make()
    for data in _batches(cartpole_medium, 3, frames_per_batch=30):  # 90 rows into 60: the buffer wraps
        rb.extend(data)
    state = rb.state_dict()
    restored = make()
    restored.load_state_dict(state)
    assert restored.frames == 90 and restored.offline_fraction == rb.offline_fraction
    assert torch.equal(restored._online_buffer[:]["observation"], rb._online_buffer[:]["observation"])
    _assert_same_rows(restored.sample(), rb.sample())  # same generator state, same rows
    with pytest.raises(UserError, match="append"):
        AppendReplayBuffer(cartpole_medium.data[:10], online_capacity=5, batch_size=4).load_state_dict(state)


def test_append_buffer_one_buffer_with_overwrite(cartpole_medium):
    data = cartpole_medium.data[:100]
    transitions, offset = _transitions(cartpole_medium)
    rb = AppendReplayBuffer(data, online_capacity=50, batch_size=32, transitions=transitions)
    rb.set_rng(torch.Generator().manual_seed(0))
    assert len(rb) == 100 and rb.offline_fraction == 1.0
    batches = _batches(cartpole_medium, 3, frames_per_batch=30)
    rb.extend(batches[0])
    assert len(rb) == 130 and rb.offline_fraction == pytest.approx(100 / 130)
    rb.extend(batches[1])
    rb.extend(batches[2])  # 90 online rows into room for 50: the dataset's first 40 rows are overwritten
    assert len(rb) == 150 and rb.online_size == 90 and rb.offline_fraction == pytest.approx(60 / 150)
    stored = rb.buffer[:]
    assert int((stored["episode"] >= offset).sum()) == 90
    state = rb.state_dict()
    restored = AppendReplayBuffer(data, online_capacity=50, batch_size=32, transitions=_transitions(cartpole_medium)[0])
    restored.load_state_dict(state)
    _assert_same_rows(restored.buffer[:], stored)
    _assert_same_rows(restored.sample(), rb.sample())
