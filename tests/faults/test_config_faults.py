"""Fault injection on configs (docs/reliability.md): hyperparameters no run can use, interpolations in
``--set``, wrong types; each is one line naming the key, before anything is written. Before, ``lr=nan``,
``lr: -1``, ``hidden_sizes: [0]``, ``gamma: 1.5`` and ``lr=${seed}`` trained and exited 0."""

from __future__ import annotations

import pytest

from offrl.errors import UserError
from offrl.runs.compose import compose_run_config

CASES = [
    (["cql.actor_lr=nan"], "cql.actor_lr: must be a finite number"),
    (["cql.critic_lr=-1"], "cql.critic_lr: must be > 0"),
    (["cql.hidden_sizes=[0]"], "cql.hidden_sizes: every layer width must be > 0"),
    (["cql.gamma=1.5"], "cql.gamma: must be in [0, 1]"),
    (["cql.tau=0"], "cql.tau: must be in (0, 1]"),
    (["cql.num_random=0"], "cql.num_random: must be > 0"),
    (["cql.activation=sigmoid"], "cql.activation: use one of"),
    (["clip_norm=inf"], "clip_norm: must be a finite number"),
    (["online.eps_init=2"], "online.eps_init: must be in [0, 1]"),
    (["seed=-3"], "seed: must be 0 or positive"),
    (["cql.actor_lr=${seed}"], "interpolations"),
    (["seed=abc"], "--set seed: bad value"),
    (["dataset=5"], "dataset must be a section"),
    (["dataset.ref_min_score=abc"], "--set dataset.ref_min_score: bad value"),
    (["batch_size=100000"], "larger than the dataset"),
]


@pytest.mark.parametrize(("dotlist", "needle"), CASES, ids=[c[0][0] for c in CASES])
def test_values_no_run_can_use_are_one_line(pendulum, dotlist, needle):
    with pytest.raises(UserError) as err:
        compose_run_config(pendulum, "cql", dotlist=dotlist)
    assert needle in str(err.value), str(err.value)
    assert "None" not in str(err.value) and "option:" not in str(err.value)


def test_interpolation_in_set_through_the_cli(pendulum, offrl_cli, assert_user_error, tmp_path):
    result = offrl_cli("train", "--dataset", pendulum, "--out", str(tmp_path), "--set", "cql.actor_lr=${seed}")
    assert_user_error(result, "--set cql.actor_lr=${seed}", "interpolations")
    assert not list(tmp_path.iterdir())


def test_batch_larger_than_memory_is_one_line(tmp_path, offrl_cli, assert_user_error):
    """Before: a batch that fits the dataset but not the machine started training and ended in the OOM
    killer or a swap storm. A million 1-d transitions (14 MB) take a batch of a million; CQL's update on it
    (2x1024 critics on 31 actions per state) needs about 1 TB, more than any machine this runs on has."""
    from helpers.datafiles import write_d4rl

    data = tmp_path / "big.hdf5"
    write_d4rl(data, lengths=(1000,) * 1000, terminal=(False,) * 1000, obs_dim=1, act_dim=1)
    result = offrl_cli("train", "--dataset", str(data), "--out", str(tmp_path / "runs"), "--batch-size", "999000",
                       "--set", "cql.hidden_sizes=[1024,1024]", "--eval-every", "0", "--no-progress")
    line = assert_user_error(result, "--batch-size 999000", "cql.num_random=10", "of memory are available",
                             "use at most --batch-size")
    assert " TB (" in line, line
    assert not (tmp_path / "runs").exists()


def test_networks_larger_than_memory_are_one_line(pendulum, tmp_path):
    import offrl

    with pytest.raises(UserError) as err:  # 4 TB per hidden layer: refused before any is allocated
        offrl.train(pendulum, "cql", dotlist=["cql.hidden_sizes=[1000000,1000000]"], out=tmp_path, steps=1)
    assert "cql.hidden_sizes [1000000, 1000000]" in str(err.value) and "use smaller" in str(err.value)
    assert not list(tmp_path.iterdir())


def test_memory_check_counts_cql_repeated_actions_and_refuses_past_the_memory_given(pendulum):
    """The critics run on 1 + 3 * num_random actions per state: the estimate grows by exactly those rows;
    a batch is refused one byte past the memory available, with the largest batch that fits."""
    from offrl.algos.memory import check_batch_memory, step_memory
    from offrl.config.algos import CQLConfig
    from offrl.data import load_dataset

    one, ten = (step_memory(CQLConfig(num_random=n), 17, 6, 0) for n in (1, 10))
    critic_row = 4 * (17 + 6 + 2 * 512 + 1)  # fp32 input, 2 x (output + activation) per hidden layer, Q
    assert ten.per_transition - one.per_transition == 2 * 27 * critic_row + 4 * 27 * 6
    dataset = load_dataset(pendulum)  # observations 3, actions 1
    need = step_memory(CQLConfig(), 3, 1, 0).total(256)
    check_batch_memory(CQLConfig(), dataset, 256, available=(need, "given"))
    with pytest.raises(UserError, match=r"--batch-size 256 .* \(given\); use at most --batch-size 255$"):
        check_batch_memory(CQLConfig(), dataset, 256, available=(need - 1, "given"))
