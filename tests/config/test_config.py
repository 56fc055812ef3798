"""Trainer configs: structured OmegaConf schemas, YAML layers, typed overrides, building the trainer."""

from __future__ import annotations

from functools import partial

import pytest
from helpers.train import TINY_CQL
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from offrl.config import (
    CQLTrainerConfig,
    DQNTrainerConfig,
    bundled_config_files,
    config_to_yaml,
    diff_configs,
    load_yaml,
)
from offrl.config import compose_config as compose_layers
from offrl.errors import UserError
from offrl.runs.assemble import build_components, load_config_dataset

#: The config stage loads no data: the application layer passes its dataset loader.
compose_config = partial(compose_layers, load=load_config_dataset)


def test_dataclasses_are_structured_configs():
    node = OmegaConf.structured(CQLTrainerConfig)
    assert node.algo == "cql" and node.batch_size == 256 and node.eval.interval == 5000
    assert OmegaConf.get_type(node.cql).__name__ == "CQLConfig"
    dqn = OmegaConf.structured(DQNTrainerConfig)
    assert dqn.algo == "dqn" and "dqn" in dqn and "cql" not in dqn
    with pytest.raises(ValidationError):
        node.batch_size = "many"  # typed like the dataclass


def test_auto_algo_and_resolved_dataset(pendulum, cartpole):
    cfg, data = compose_config(pendulum)
    assert isinstance(cfg, CQLTrainerConfig) and cfg.algo == "cql"
    assert cfg.dataset.digest == data.digest and cfg.dataset.path
    cfg, _ = compose_config(cartpole)
    assert isinstance(cfg, CQLTrainerConfig) and cfg.algo == "discrete-cql"
    cfg, _ = compose_config(cartpole, "dqn")
    assert isinstance(cfg, DQNTrainerConfig)


def test_layers_later_wins_and_values_are_typed(pendulum, tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("batch_size: 64\noffline_steps: 7\ncql:\n  min_q_weight: 2\n  hidden_sizes: [32, 32]\n")
    cfg, _ = compose_config(pendulum, config_file=file, overrides={"offline_steps": 9, "eval.episodes": 3},
                            dotlist=["cql.min_q_weight=5", "seed=3"])
    assert (cfg.batch_size, cfg.offline_steps, cfg.seed, cfg.eval.episodes) == (64, 9, 3, 3)
    assert cfg.cql.min_q_weight == 5.0 and isinstance(cfg.cql.min_q_weight, float)
    assert tuple(cfg.cql.hidden_sizes) == (32, 32)


@pytest.mark.parametrize(
    ("dotlist", "match"),
    [
        (["cql.no_such_key=1"], "cql.no_such_key"),
        (["batch_sise=3"], "batch_sise"),
        (["offline_steps=many"], "offline_steps"),
        (["cql.min_q_weight=high"], "cql.min_q_weight"),
        (["dqn.lr=0.1"], "dqn"),  # another algorithm's section would be silently ignored
        (["offline_steps=0"], "--steps"),
        (["batch_size=-4"], "--batch-size"),
        (["device=tpu"], "--device"),
        (["novalue"], "key=value"),
    ],
)
def test_bad_values_are_user_errors_naming_the_key(pendulum, dotlist, match):
    with pytest.raises(UserError, match=match):
        compose_config(pendulum, dotlist=dotlist)


def test_algo_must_fit_the_action_space(pendulum, cartpole):
    with pytest.raises(UserError, match="continuous actions"):
        compose_config(pendulum, "dqn")
    with pytest.raises(UserError, match="discrete actions"):
        compose_config(cartpole, "cql")
    with pytest.raises(UserError, match="unknown algorithm"):
        compose_config(cartpole, "sac")


def test_yaml_round_trip_and_digest_guard(pendulum, tmp_path):
    cfg, _ = compose_config(pendulum, dotlist=["cql.tau=0.01", "seed=4"])
    text = config_to_yaml(cfg, {"command": ["offrl", "train"], "versions": {"torch": "x"}})
    assert "discrete_cql" not in text and "tau: 0.01" in text
    file = tmp_path / "config.yaml"
    file.write_text(text)
    assert "command" not in load_yaml(file)  # run metadata is not configuration
    again, _ = compose_config(None, config_file=file)
    assert diff_configs(cfg, again) == []
    assert diff_configs(cfg, compose_config(pendulum)[0]) == ["cql.tau", "seed"]
    file.write_text(text.replace(cfg.dataset.digest, "0" * len(cfg.dataset.digest)))
    with pytest.raises(UserError, match="dataset.digest"):
        compose_config(None, config_file=file)
    file.write_text("seed: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        compose_config(pendulum, config_file=file)


def test_bundled_configs_exist_for_bundled_datasets():
    assert bundled_config_files("offrl/pendulum/medium-v0", "cql")
    assert bundled_config_files("offrl/cartpole/medium-v0", "discrete-cql")
    assert bundled_config_files("offrl/cartpole/medium-v0", "dqn")
    assert bundled_config_files("some/other-v0", "cql") == []
    for path in bundled_config_files("offrl/pendulum/medium-v0", "cql"):
        OmegaConf.merge(OmegaConf.structured(CQLTrainerConfig), load_yaml(path))  # valid keys and types


def test_build_wires_the_trainer(pendulum, cartpole):
    from offrl.trainers import CQLTrainer, DQNTrainer

    cfg, data = compose_config(pendulum, dotlist=[*TINY_CQL, "offline_steps=3", "eval.interval=0"])
    trainer = build_components(cfg, dataset=data).trainer
    assert isinstance(trainer, CQLTrainer)
    assert trainer.step == 0
    cfg, data = compose_config(cartpole, "dqn", dotlist=["dqn.hidden_sizes=[8]", "offline_steps=3", "dataset.env_id=CartPole-v1"])
    parts = build_components(cfg, dataset=data)
    assert isinstance(parts.trainer, DQNTrainer)
    assert parts.evaluator is not None and parts.device == "cpu"


def test_heldout_episodes_are_not_trained_on(cartpole):
    """The TD-error diagnostic reads held-out episodes: the training buffer must never sample them."""
    import torch

    cfg, data = compose_config(cartpole, "dqn", dotlist=["dqn.hidden_sizes=[8]", "offline_steps=3",
                                                          "dataset.env_id=CartPole-v1", "eval.heldout_fraction=0.2"])
    parts = build_components(cfg, dataset=data)
    heldout = parts.evaluator._heldout
    assert heldout is not None and heldout.shape[0] > 0
    held_episodes = heldout["episode"].unique()
    sampled = torch.cat([parts.replay_buffer.sample()["episode"] for _ in range(20)])
    assert not bool(torch.isin(sampled, held_episodes).any())
    cfg0, data0 = compose_config(cartpole, "dqn", dotlist=["dqn.hidden_sizes=[8]", "offline_steps=3",
                                                            "dataset.env_id=CartPole-v1", "eval.heldout_fraction=0"])
    assert build_components(cfg0, dataset=data0).evaluator._heldout is None
