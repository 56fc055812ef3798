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
