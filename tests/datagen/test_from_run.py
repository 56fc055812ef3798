"""Datasets made from runs: the online replay buffer of a checkpoint, and rollouts of a checkpoint's
policy, written as Minari datasets that load back through offrl.data.load_dataset."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import OFFRL

from offrl.algos import dqn
from offrl.data import load_dataset
from offrl.datagen.from_run import dataset_from_run
from offrl.errors import UserError
from offrl.online.setup import OnlineConfig, build_online
from offrl.trainers import DQNTrainer


def _sorted_rows(td):
    order = np.lexsort((td["step"].numpy(), td["episode"].numpy()))
    return td[torch.as_tensor(order)]


@pytest.fixture()
def online_run(cartpole_medium, tmp_path):
    """A run folder whose checkpoint holds 300 online CartPole transitions (episodes kept whole)."""
    run = tmp_path / "run"
    parts = dqn.build_from_dataset(dqn.DQNConfig(hidden_sizes=(16,)), cartpole_medium, seed=0)
    online = build_online(OnlineConfig(steps=300, frames_per_batch=50, eps_init=0.3), parts=parts,
                          dataset=cartpole_medium, batch_size=16, seed=0)
    trainer = DQNTrainer(collector=online.collector, total_frames=online.total_frames, loss_module=parts.loss_module,
                         optimizer=parts.optimizer, replay_buffer=online.replay_buffer, offline_steps=2,
                         greedy_module=parts.greedy_module, progress_bar=False, seed=0,
                         save_trainer_file=run / "checkpoints" / "latest.pt")
    trainer.train()
    (run / "config.yaml").write_text("dataset:\n  id: offrl/cartpole/medium-v0\nalgo: dqn\n")
    return run, online.replay_buffer._online_buffer[:].to_tensordict()


def test_dataset_from_run_loads_back_with_the_same_transitions(online_run, cartpole_medium, tmp_path):
    run, rows = online_run
    path = dataset_from_run(run, name="offrl-runs/cartpole/replay-v0")
    loaded = load_dataset(path, cache_dir=tmp_path / "cache")
    assert loaded.info.transitions == 300
    assert loaded.info.ref_min_score == cartpole_medium.info.ref_min_score  # references carried over
    a, b = _sorted_rows(rows), _sorted_rows(loaded.data[:].to_tensordict())
    for key in ("observation", "action", ("next", "observation"), ("next", "reward"), ("next", "terminated")):
        torch.testing.assert_close(b[key], a[key].to(b[key].dtype), rtol=0, atol=0)
    # a whole episode ends done; the cut one at the end of the buffer is read back as truncated
    assert bool(b["next", "done"][-1]) and int(b["next", "done"].sum()) >= int(a["next", "done"].sum())


def test_make_from_run_user_errors(online_run, tmp_path):
    run, _ = online_run
    bad = subprocess.run([OFFRL, "datasets", "make", "offrl/cartpole/medium-v0", "--from-run", str(run)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "exactly one" in bad.stderr
    with pytest.raises(UserError, match="not an offrl run folder"):
        dataset_from_run(tmp_path)
    with pytest.raises(UserError, match="namespace/env/flavour-v0"):
        dataset_from_run(run, name="no-version", root=tmp_path / "m")


def test_dataset_from_policy_rollouts(tmp_path):
    from offrl.datagen.from_run import dataset_from_policy
    from offrl.runs import train

    run = train("offrl/cartpole/medium-v0", "dqn", steps=20, eval_every=0, progress=False, out=tmp_path / "runs",
                **{"dqn.hidden_sizes": [16]})
    path = dataset_from_policy(run.dir, episodes=3, noise=0.2, seed=5, name="offrl-runs/cartpole/noisy-v0")
    loaded = load_dataset(path, cache_dir=tmp_path / "cache")
    assert loaded.info.episodes == 3 and loaded.info.env_id == "CartPole-v1"
    assert loaded.info.ref_max_score is not None
    again = dataset_from_policy(run.dir, episodes=3, noise=0.2, seed=5, name="offrl-runs/cartpole/again-v0")
    assert (Path(again) / "data" / "main_data.hdf5").read_bytes() == (Path(path) / "data" / "main_data.hdf5").read_bytes()
