"""The action-coverage statistic behind CQL's narrow-data setting, on real bundled data and written files."""

from __future__ import annotations

import numpy as np
import pytest

from offrl.algos import cql
from offrl.data.coverage import action_coverage


def test_expert_data_is_narrow_and_noisy_data_is_not(pendulum_expert, pendulum_medium, cartpole_medium):
    expert, medium = action_coverage(pendulum_expert), action_coverage(pendulum_medium)
    assert expert.narrow and expert.action_spread < 0.15
    assert not medium.narrow and medium.action_spread > 0.8  # 65% uniformly random torques
    assert action_coverage(pendulum_expert) == expert  # deterministic
    assert action_coverage(cartpole_medium) is None  # discrete actions: no spread to measure


@pytest.mark.parametrize("policy,narrow", [("deterministic", True), ("uniform", False)])
def test_spread_of_written_files(tmp_path, policy, narrow):
    """A D4RL-style file whose actions are a function of the state is narrow; uniform actions are not, and
    their spread is ~1 by construction (the std of U(-1, 1) is the unit)."""
    from helpers.datafiles import write_d4rl

    from offrl.data import load_dataset

    rng = np.random.default_rng(0)
    n = 4000
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    if policy == "deterministic":
        actions = np.tanh(obs[:, :1] - 0.5 * obs[:, 1:2])
    else:
        actions = rng.uniform(-1, 1, size=(n, 1))
    path = tmp_path / "data.hdf5"
    write_d4rl(path, lengths=(1000,) * 4, terminal=(False,) * 4, obs_dim=3, act_dim=1,
               overrides={"observations": obs, "actions": actions.astype(np.float32)})
    coverage = action_coverage(load_dataset(path, cache_dir=tmp_path / "cache"))
    assert coverage.narrow is narrow
    if not narrow:
        assert 0.9 < coverage.action_spread < 1.1


def test_auto_weight_follows_the_coverage(pendulum_expert, pendulum_medium):
    auto = cql.CQLConfig()
    assert cql.resolve_auto(auto, pendulum_expert)[0].actor_bc_weight == cql.NARROW_BC_WEIGHT
    resolved, note = cql.resolve_auto(auto, pendulum_medium)
    assert resolved.actor_bc_weight == 0.0 and note is None  # broad data: plain CQL, nothing printed
    assert cql.resolve_auto(cql.CQLConfig(actor_bc_weight=0.3), pendulum_expert) == (cql.CQLConfig(actor_bc_weight=0.3), None)


def test_cli_says_what_the_data_chose(tmp_path, offrl_cli, assert_user_error):
    """`datasets info` warns about narrow data and says what offrl does; `offrl train` prints and records the
    auto value (config.yaml: defaults_from_data), and an explicit --set wins without a note."""
    import yaml

    info = offrl_cli("datasets", "info", "offrl/pendulum/expert-v0")
    assert info.returncode == 0, info.stderr
    assert "narrow data, action spread 0.08" in info.stdout and "cql.actor_bc_weight=5" in info.stdout
    assert "narrow" not in offrl_cli("datasets", "info", "offrl/pendulum/medium-v0").stdout.split("warnings")[-1]
    for extra, weight in (((), 5.0), (("--set", "cql.actor_bc_weight=0.5"), 0.5)):
        out = tmp_path / f"runs{weight}"
        run = offrl_cli("train", "--dataset", "offrl/pendulum/expert-v0", "--steps", "2", "--eval-every", "0",
                        "--no-progress", "--out", str(out), *extra)
        assert run.returncode == 0, run.stderr
        saved = yaml.safe_load(next(out.rglob("config.yaml")).read_text())
        assert saved["cql"]["actor_bc_weight"] == weight
        noted = "cql.actor_bc_weight=5 (auto: narrow data" in run.stderr
        assert noted is (not extra) and ("defaults_from_data" in saved) is (not extra)
        # Where the other values come from: the general defaults, the bundled config's keys, flags and --set.
        origins = saved["config_origins"]
        assert origins[0].startswith("defaults: d3rlpy 2.8 CQLConfig's values (2x256 nets")
        assert any(o.startswith("bundled config offrl/configs/pendulum.cql.yaml: offline_steps,") and "cql.tau" in o
                   for o in origins)
        assert "flags: offline_steps, eval.interval, progress_bar" in origins
        assert ("--set: cql.actor_bc_weight" in origins) is bool(extra)
    bad = offrl_cli("train", "--dataset", "offrl/pendulum/expert-v0", "--steps", "2", "--set", "cql.backup_action=max",
                    "--out", str(tmp_path / "bad"))
    assert_user_error(bad, "cql.backup_action", "sample, mean")
    bad = offrl_cli("train", "--dataset", "offrl/pendulum/expert-v0", "--steps", "2", "--set", "cql.actor_std=log",
                    "--out", str(tmp_path / "bad"))
    assert_user_error(bad, "cql.actor_std", "softplus, exp")
    bad = offrl_cli("train", "--dataset", "offrl/pendulum/expert-v0", "--steps", "2", "--set",
                    "cql.update_order=actor_first", "--out", str(tmp_path / "bad"))
    assert_user_error(bad, "cql.update_order", "joint, critic_first")
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").rglob("config.yaml"))
