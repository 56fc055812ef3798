"""One resume matrix (as Stable-Baselines3's tests/test_save_load.py does over its algorithms): every algorithm
x checkpoint backend x phase, built by the path ``offrl train`` runs (``compose_run_config`` ->
``build_components``). A run stopped mid-phase, checkpointed and resumed by a fresh trainer ends bit-identical
to one that never stopped: weights, optimizer state and every metrics row."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.engine import ListLogger, stop_after

from offrl.runs import build_components, compose_run_config
from offrl.trainers import load_checkpoint

ALGOS = {"cql": "pendulum_medium", "discrete-cql": "cartpole_medium", "dqn": "cartpole_medium"}
SMALL = {
    # CQL and DQN scale rewards (fitted on the data, and affine), sampled batches only: collected rows stay raw
    "cql": ["cql.hidden_sizes=[16,16]", "cql.num_random=2", "cql.bc_steps=4", "cql.with_lagrange=true",
            "cql.reward_scaler=return_based"],
    # the discrete ones scale observations: sampled batches scaled, the collector's policy reading raw ones
    "discrete-cql": ["discrete_cql.hidden_sizes=[16,16]", "discrete_cql.target_update_interval=3",
                     "discrete_cql.observation_scaler=min_max"],
    "dqn": ["dqn.hidden_sizes=[16,16]", "dqn.target_update_interval=3", "dqn.observation_scaler=standard",
            "dqn.reward_scale=0.5", "dqn.reward_bias=-1.0"],
}
OFFLINE_STEPS = 12
#: phase -> (steps the uninterrupted run trains, the step the interrupted one stops at, extra settings).
#: Online: 6 offline steps, then 80 frames in batches of 20 with 2 updates each (8 more steps); the stop falls
#: between two updates of one batch, so the collector's state, the mixed buffer and epsilon must all resume.
PHASES = {
    "offline": (OFFLINE_STEPS, 7, []),
    "online": (6 + 8, 11, ["online.steps=80", "online.frames_per_batch=20", "optim_steps_per_batch=2"]),
}


def _trainer(algo, dataset, phase, save, log, stop_at=None):
    dotlist = [*SMALL[algo], "log_interval=2", "save_trainer_interval=5", "eval.interval=0", "batch_size=32",
               "progress_bar=false", "seed=3", *PHASES[phase][2]]
    cfg, data = compose_run_config(dataset.name, algo, dotlist=dotlist, cache_dir=str(dataset.cache_path.parent.parent),
                                   steps=OFFLINE_STEPS if phase == "offline" else 6)
    parts = build_components(cfg, dataset=data, logger=log, save_trainer_file=save)
    trainer = parts.trainer
    if stop_at is not None:  # in the middle of a batch's updates when online
        stop_after(trainer, stop_at)
    return trainer


def _rows(log):
    """Metrics rows without timings; NaN made comparable."""
    return [(s, p, {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()})
            for s, p, m in log.comparable()]


@pytest.mark.parametrize("phase", sorted(PHASES))
@pytest.mark.parametrize("backend", ["torch", "memmap"])
@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_stop_checkpoint_resume_equals_uninterrupted(algo, backend, phase, request, tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_BACKEND", backend)
    dataset = request.getfixturevalue(ALGOS[algo])
    total, stop_at, _ = PHASES[phase]

    full_log, part_log = ListLogger(), ListLogger()
    full = _trainer(algo, dataset, phase, tmp_path / "full" / "latest.pt", full_log)
    full.train()
    assert full.step == total and not full.stopped

    ckpt = tmp_path / "part" / "latest.pt"
    first = _trainer(algo, dataset, phase, ckpt, part_log, stop_at=stop_at)
    first.train()
    assert first.stopped and first.step == stop_at
    assert ckpt.is_dir() == (backend == "memmap")
    if phase == "online":
        assert first.frames > 0  # stopped inside the online phase

    resumed = _trainer(algo, dataset, phase, ckpt, part_log)  # the same row stream, continued
    resumed.load_from_file(ckpt)
    assert resumed.step == stop_at
    resumed.train()
    assert resumed.step == total

    w_full = full.loss_module.state_dict()
    w_res = resumed.loss_module.state_dict()
    assert w_full.keys() == w_res.keys()
    for key in w_full:
        assert torch.equal(w_full[key], w_res[key]), key
    opt_full, opt_res = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert opt_full.keys() == opt_res.keys()
    for i in opt_full:
        for name, value in opt_full[i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_res[i][name])), (i, name)
    # the rows written before the stop, then the resumed run's: exactly the uninterrupted run's rows
    assert _rows(part_log) == _rows(full_log)
    assert load_checkpoint(ckpt)["step"] == total
