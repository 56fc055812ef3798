"""What the MuJoCo behaviour policies are made with (issue 5 section 2), testable without MuJoCo:

- SAC is CQL with the penalty off, and then the penalty's critic pass is skipped: the same losses, gradients
  and random stream as a computed zero-weighted penalty (plain and fused losses);
- actor-only checkpoints (``datasets/behaviour/*.npz``): the numpy actor acts exactly as the torch policy it
  was exported from, damaged files are one-line errors, and ``offrl datasets make --policy FILE.npz`` /
  ``offrl datasets export-actor`` work end to end (on Pendulum-v1).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import OFFRL, assert_user_error
from tensordict import TensorDict
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from offrl.algos import cql
from offrl.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


OBS, ACT, BATCH = 7, 3, 32


def _parts(*, fused: bool, min_q_weight: float = 0.0, with_lagrange: bool = False, low: float = -1.0,
           high: float = 1.0, obs: int = OBS, act: int = ACT, actor_std: str = "softplus"):
    cfg = cql.CQLConfig(hidden_sizes=(32, 32), min_q_weight=min_q_weight, with_lagrange=with_lagrange,
                        fused=fused, num_random=4, actor_std=actor_std)
    spec = Bounded(low=torch.full((act,), low), high=torch.full((act,), high), shape=(act,))
    return cql.build(cfg, observation_shape=(obs,), action_spec=spec, seed=0)


def _batch(seed: int = 1) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict({
        "observation": torch.randn(BATCH, OBS, generator=g),
        "action": torch.rand(BATCH, ACT, generator=g) * 2 - 1,
        "next": {"observation": torch.randn(BATCH, OBS, generator=g), "reward": torch.randn(BATCH, 1, generator=g),
                 "done": torch.zeros(BATCH, 1, dtype=torch.bool),
                 "terminated": torch.zeros(BATCH, 1, dtype=torch.bool)},
    }, [BATCH])


def _step(parts, *, skip: bool):
    """One loss forward + backward from a fixed random state: outputs, gradients, the next random draw."""
    loss = parts.loss_module
    loss.skip_zero_penalty = skip
    torch.manual_seed(5)
    out = loss(_batch())
    total = out["loss_actor"] + out["loss_qvalue"] + out["loss_cql"] + out["loss_alpha"]
    params = [p for group in parts.optimizer.param_groups for p in group["params"]]
    grads = torch.autograd.grad(total, params, allow_unused=True)
    return out, grads, torch.rand(4)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_zero_weight_penalty_is_skipped_with_the_same_losses_gradients_and_random_stream(fused, monkeypatch):
    parts = _parts(fused=fused)
    loss = parts.loss_module
    assert loss.penalty_skipped and type(loss).__name__ == ("FusedOfflineCQLLoss" if fused else "OfflineCQLLoss")
    computed = _step(parts, skip=False)
    assert not loss.penalty_skipped

    # the skipped forward never scores a penalty action
    rows: list[int] = []
    if fused:
        original = type(loss)._critic_pass

        def counting(self, q_steps, obs_td, next_td, blocks):
            rows.append(sum(a.shape[0] for _, a, _ in blocks))
            return original(self, q_steps, obs_td, next_td, blocks)

        monkeypatch.setattr(type(loss), "_critic_pass", counting)
    else:
        monkeypatch.setattr(type(loss), "cql_gaps", lambda self, td: pytest.fail("penalty computed"))
    skipped = _step(parts, skip=True)
    if fused:
        assert rows == [BATCH]  # the data actions only, not the 3 * num_random * BATCH proposals

    out_c, grads_c, next_c = computed
    out_s, grads_s, next_s = skipped
    assert set(out_s.keys()) == set(out_c.keys())
    assert float(out_c["loss_cql"]) == float(out_s["loss_cql"]) == 0.0
    assert math.isfinite(float(out_c["cql_gap"])) and math.isnan(float(out_s["cql_gap"]))
    for key in out_c.keys():
        if key != "cql_gap":
            torch.testing.assert_close(out_s[key], out_c[key], rtol=1e-6, atol=1e-6, msg=key)
    for g_c, g_s in zip(grads_c, grads_s, strict=True):
        if g_c is None:
            assert g_s is None or not g_s.any()
        else:
            torch.testing.assert_close(g_s, g_c, rtol=1e-5, atol=1e-6)
    assert any(g is not None and g.abs().sum() > 0 for g in grads_s)
    assert torch.equal(next_c, next_s)  # the penalty's random draws were still made


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_penalty_runs_whenever_it_can_matter(fused):
    assert not _parts(fused=fused, min_q_weight=0.5).loss_module.penalty_skipped
    lagrange = _parts(fused=fused, min_q_weight=0.0, with_lagrange=True).loss_module
    assert not lagrange.penalty_skipped
    loss = _parts(fused=fused, min_q_weight=5.0).loss_module
    out = loss(_batch())
    assert float(out["loss_cql"]) != 0.0 and math.isfinite(float(out["cql_gap"]))
    loss.min_q_weight = 0.0  # an online weight change (online.min_q_weight) takes effect at the next forward
    assert loss.penalty_skipped and math.isnan(float(loss(_batch())["cql_gap"]))


def test_calql_keeps_its_penalty_pass_at_zero_weight():
    from offrl.algos.calql import CalQLLoss

    loss = CalQLLoss.from_cql(_parts(fused=True, min_q_weight=0.0).loss_module)
    assert not loss.penalty_skipped  # it reports calql_bound_rate from the proposals


# ----------------------------------------------------------------------------------- actor checkpoints


def _trainer_checkpoint(tmp_path: Path, parts) -> Path:
    """A checkpoint as the CQL trainer writes it (only the parts the actor export reads)."""
    from offrl.trainers.checkpoint import save_checkpoint

    path = tmp_path / "run" / "checkpoints" / "step_1000.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint({"format": 1, "algo": "cql", "step": 1000, "frames": 1000,
                     "loss_module": parts.loss_module.state_dict()}, path)
    return path


def _pendulum_parts(actor_std: str = "softplus", std_shift: float = 0.0):
    parts = _parts(fused=True, low=-2.0, high=2.0, obs=3, act=1, actor_std=actor_std)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a non-trivial actor whose actions spread over the box
        params = list(parts.loss_module.actor_network_params.values(True, True))
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        params[-1][1:] += std_shift  # the last bias's std half: raw std outputs around std_shift
    return parts


@pytest.fixture
def pendulum_parts():
    return _pendulum_parts()


@pytest.mark.parametrize("actor_std", ["softplus", "exp"])
def test_numpy_actor_acts_as_the_torch_policy(tmp_path, actor_std):
    from offrl.datagen.policies import ACTION_GRID, actor_from_trainer_checkpoint, load_actor, save_actor

    # exp: raw outputs around 2 so that the clamp at log std 2 is crossed both ways
    pendulum_parts = _pendulum_parts(actor_std, std_shift=2.0 if actor_std == "exp" else 0.0)
    ckpt = _trainer_checkpoint(tmp_path, pendulum_parts)
    save_actor(tmp_path / "a.npz", actor_from_trainer_checkpoint(ckpt, meta={"env_id": "Pendulum-v1"},
                                                                  actor_std=actor_std))
    actor = load_actor(tmp_path / "a.npz")
    assert (actor.obs_dim, actor.act_dim, actor.meta, actor.actor_std) == (3, 1, {"env_id": "Pendulum-v1"}, actor_std)
    obs = np.random.default_rng(0).standard_normal((256, 3)).astype(np.float32)
    td = TensorDict({"observation": torch.as_tensor(obs)}, [256])
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        want = pendulum_parts.policy(td.clone())["action"].numpy()
        dist = pendulum_parts.loss_module.actor_network.get_dist_params(td.clone())
    # the numpy actor rounds its squashed action to ACTION_GRID: half a step of Pendulum's half-range of 2 off
    np.testing.assert_allclose(actor.act(obs), want, rtol=0, atol=1e-5 + ACTION_GRID)
    assert np.abs(want).max() > 0.5  # the comparison covers more than the box centre
    loc, scale = actor.dist_params(obs)
    np.testing.assert_allclose(loc, dist["loc"].numpy(), atol=1e-5)
    np.testing.assert_allclose(scale, dist["scale"].numpy(), rtol=1e-5, atol=1e-6)
    if actor_std == "exp":  # the ceiling is reached and not everywhere
        assert np.isclose(scale, np.exp(2.0)).any() and (scale < np.exp(2.0) - 1e-3).any()
    # sampled actions: tanh(loc + scale * N(0, 1)), mapped to [-2, 2]
    rng = np.random.default_rng(0)
    sampler = actor.with_noise(sample=True)
    draws = np.array([sampler(obs[0], rng) for _ in range(4000)])[:, 0]
    expected = 2 * np.tanh(loc[0, 0] + scale[0, 0] * np.random.default_rng(1).standard_normal(200_000))
    assert abs(draws.mean() - expected.mean()) < 0.05 and abs(draws.std() - expected.std()) < 0.05
    assert np.abs(draws).max() <= 2.0


def test_damaged_actor_files_are_one_line_user_errors(tmp_path, pendulum_parts):
    from offrl.datagen.policies import actor_from_trainer_checkpoint, load_actor, save_actor

    good = tmp_path / "good.npz"
    save_actor(good, actor_from_trainer_checkpoint(_trainer_checkpoint(tmp_path, pendulum_parts)))
    cases = {
        "missing.npz": None,
        "truncated.npz": good.read_bytes()[: len(good.read_bytes()) // 2],
        "text.npz": b"not a zip file",
    }
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError) as err:
            load_actor(tmp_path / name)
        message = str(err.value)
        assert "\n" not in message and name in message
    with pytest.raises(UserError, match="not an offrl actor checkpoint"):
        load_actor(other)


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([OFFRL, *args], capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, **(env or {})))


def test_export_actor_and_make_policy_from_it(tmp_path, pendulum_parts, capsys):
    from offrl.cli import main
    from offrl.data import load_dataset
    from offrl.datagen.from_run import dataset_from_policy

    ckpt = _trainer_checkpoint(tmp_path, pendulum_parts)
    out = tmp_path / "behaviour" / "pendulum.npz"
    assert main(["datasets", "export-actor", str(ckpt), str(out), "--env", "Pendulum-v1", "--episodes", "2"]) == 0
    assert "return" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["env_id"] == "Pendulum-v1" and meta["training_steps"] == 1000
    assert meta["measured_return"]["episodes"] == 2 and meta["measured_return"]["mean"] < 0
    assert len(meta["weights_sha256"]) == 64

    assert main(["datasets", "make", "--policy", str(out), "--episodes", "3", "--noise", "0.1",
                 "--dataset-id", "test/pendulum/actor-v0"]) == 0
    ds = load_dataset("test/pendulum/actor-v0")
    assert ds.info.transitions == 600 and ds.info.env_id == "Pendulum-v1"
    assert float(ds.data["action"].abs().max()) <= 2.0
    with pytest.raises(UserError, match="does not fit CartPole-v1"):  # the Python API behind the CLI
        dataset_from_policy(out, episodes=1, env_id="CartPole-v1")

    # a damaged file named by --policy, through the console script: one line, exit 2, nothing written
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"\x00" * 100)
    proc = _run("datasets", "make", "--policy", str(bad), "--episodes", "1", "--env", "Pendulum-v1",
                "--dataset-id", "test/pendulum/bad-v0")
    assert_user_error(proc, "bad.npz")
    assert not (Path(os.environ["MINARI_DATASETS_PATH"]) / "test/pendulum/bad-v0").exists()
