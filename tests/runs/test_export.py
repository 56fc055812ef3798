"""`offrl export`: the exported file (TorchScript through torch.jit.load, ONNX through onnxruntime) acts like
the run's PyTorch policy on 1,000 observations and in the env; bad inputs are one line, exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.train import TINY_CQL

from offrl.evaluation import evaluate
from offrl.runs import load_policy
from offrl.runs.shipping import export_policy, load_exported, policy_actions_of


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, pendulum: str) -> dict[str, Path]:
    from offrl import train

    base = tmp_path_factory.mktemp("export-runs")
    cache = base / "cache"
    cartpole = train("offrl/cartpole/medium-v0", "dqn", out=base / "runs", name="dqn", steps=30, eval_every=0,
                     progress=False, cache_dir=cache, dotlist=["dqn.hidden_sizes=[16,16]", "save_trainer_interval=10"])
    pend = train(pendulum, "cql", out=base / "runs", name="cql", steps=30, eval_every=0, progress=False,
                 cache_dir=cache, dotlist=[*TINY_CQL, "save_trainer_interval=10"])
    # trained on scaled observations: the export must carry the scaling (raw observations in)
    scaled_dqn = train("offrl/cartpole/medium-v0", "dqn", out=base / "runs", name="dqn-scaled", steps=30,
                       eval_every=0, progress=False, cache_dir=cache,
                       dotlist=["dqn.hidden_sizes=[16,16]", "dqn.observation_scaler=min_max"])
    scaled_cql = train(pendulum, "cql", out=base / "runs", name="cql-scaled", steps=30, eval_every=0,
                       progress=False, cache_dir=cache, dotlist=[*TINY_CQL, "cql.observation_scaler=standard"])
    return {"discrete": cartpole.dir, "continuous": pend.dir, "scaled-discrete": scaled_dqn.dir,
            "scaled-continuous": scaled_cql.dir, "cache": cache}


@pytest.mark.parametrize("kind", ["discrete", "continuous", "scaled-discrete", "scaled-continuous"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_policy_matches_pytorch(runs, kind, fmt, tmp_path, monkeypatch):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="offrl[export] not installed")
    monkeypatch.setenv("OFFRL_CACHE", str(runs["cache"]))
    run = runs[kind]
    out = tmp_path / f"policy.{fmt}"
    export_policy(run, fmt, out)
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    loaded = load_policy(run)
    assert sidecar["dataset"]["digest"] == loaded.dataset.digest and sidecar["run"]["step"] == 30
    assert sidecar["config"]["algo"] == loaded.config.algo
    act = load_exported(out)
    # 1,000 observations: the dataset's, plus points beyond it (the policy must agree off the data too)
    data_obs = loaded.dataset.data["observation"].float()
    gen = torch.Generator().manual_seed(0)
    obs = torch.cat([data_obs[torch.randint(len(data_obs), (500,), generator=gen)],
                     3 * torch.randn(500, data_obs.shape[1], generator=gen)])
    got, want = act(obs.numpy()), policy_actions_of(loaded.policy, obs)
    if kind.startswith("scaled"):  # the networks see scaled observations, the export takes raw ones
        scaler = loaded.policy.scaler
        np.testing.assert_array_equal(want, policy_actions_of(loaded.policy.module, scaler(obs)))
        assert not np.allclose(want, policy_actions_of(loaded.policy.module, obs), atol=1e-3)
        assert "the network scales it itself" in sidecar["input"]["meaning"]
    else:
        assert sidecar["input"]["meaning"] == "the env's raw observation"
    if kind.endswith("discrete"):
        assert got.dtype == np.int64 and got.shape == (1000,)
        assert (got == want.reshape(1000)).all()
    else:
        assert got.shape == want.shape == (1000, 1)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        low, high = loaded.dataset.action_space.low, loaded.dataset.action_space.high
        assert (got >= low).all() and (got <= high).all() and np.ptp(got) > 0
    # the same evaluation return in the env, episode by episode: the runtimes' float32 actions may differ in
    # their last bits (within 1e-5, above), which 200 steps of Pendulum add up to ~1e-5 on a return of ~-1,700;
    # a different policy would differ by whole units
    ours = evaluate(loaded.policy, loaded.dataset, episodes=2, seed=3)
    theirs = evaluate(lambda o: act(o.numpy()), loaded.dataset, episodes=2, seed=3)
    np.testing.assert_allclose(theirs.returns, ours.returns, rtol=1e-7, atol=1e-6)
    assert sidecar["check"]["max_abs_diff_vs_pytorch_policy"] <= 1e-5


def test_export_cli_writes_file_and_sidecar(runs, offrl_cli, tmp_path):
    pytest.importorskip("onnxruntime", reason="offrl[export] not installed")
    done = offrl_cli("export", str(runs["discrete"]), "--format", "onnx", env={"OFFRL_CACHE": str(runs["cache"])})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no exporter chatter
    path = runs["discrete"] / "export" / "policy.onnx"
    assert f"as onnx: {path}" in done.stdout and "max |exported - pytorch| = 0" in done.stdout
    sidecar = json.loads(path.with_name("policy.onnx.json").read_text())
    assert sidecar["action_space"] == {"type": "Discrete", "n": 2, "start": 0}
    assert sidecar["observation_space"]["shape"] == [4] and sidecar["env_id"] == "CartPole-v1"
    assert sidecar["output"]["dtype"] == "int64" and sidecar["run"]["score"]["status"] == "completed"


def test_export_bad_inputs_are_one_line(runs, offrl_cli, assert_user_error, tmp_path):
    env = {"OFFRL_CACHE": str(runs["cache"])}
    assert_user_error(offrl_cli("export", str(tmp_path / "nope"), "--format", "onnx", env=env), "nope")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(runs["discrete"] / "config.yaml", bare / "config.yaml")
    assert_user_error(offrl_cli("export", str(bare), "--format", "torchscript", env=env), "no checkpoints/latest.pt")
    assert_user_error(offrl_cli("export", str(runs["discrete"]), "--format", "tflite", env=env),
                      "--format tflite", "torchscript, onnx")
    assert_user_error(offrl_cli("export", str(runs["discrete"]), "--format", "onnx", "--out", str(tmp_path), env=env),
                      "--out", "is a directory")
    assert not list(tmp_path.rglob("*.onnx")) and not list(tmp_path.rglob("*.pt"))


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_run_policy_is_the_module_export_ships(runs, kind, monkeypatch, tmp_path):
    """``Run.policy()``: the deterministic policy as a plain module (raw observations in, env actions out), equal
    to the run's TensorDict policy, for the latest checkpoint or one named; a wrong name is one line."""
    from offrl import Run, UserError

    monkeypatch.setenv("OFFRL_CACHE", str(runs["cache"]))
    run = Run.load(runs[kind])
    loaded = load_policy(run.dir)
    gen = torch.Generator().manual_seed(1)
    obs = 2 * torch.randn(64, loaded.dataset.data["observation"].shape[1], generator=gen)
    policy = run.policy()
    assert isinstance(policy, torch.nn.Module) and not policy.training
    assert all(not p.requires_grad for p in policy.parameters())
    got = policy(obs).numpy()
    want = policy_actions_of(loaded.policy, obs)
    if kind == "discrete":
        assert got.dtype == np.int64 and (got == want.reshape(-1)).all()
    else:
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    # a kept checkpoint by its file name: the step-0 weights act differently from the trained ones
    first = run.policy("step_10.pt")(obs).numpy()
    assert not np.array_equal(first, got)
    np.testing.assert_array_equal(first, run.policy(run.dir / "checkpoints" / "step_10.pt")(obs).numpy())
    monkeypatch.chdir(tmp_path)  # a bare name is this run's checkpoint, not a same-named file here
    (tmp_path / "step_10.pt").write_bytes(b"not a checkpoint")
    np.testing.assert_array_equal(first, run.policy("step_10.pt")(obs).numpy())
    with pytest.raises(UserError, match=r"no checkpoint 'step_7\.pt'; this run keeps latest\.pt, step_10\.pt, "
                                        r"step_20\.pt, step_30\.pt$"):
        run.policy("step_7.pt")
