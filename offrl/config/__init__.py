"""The config stage: the schema (:mod:`~offrl.config.schema`), each algorithm's and the online section's
hyperparameters (:mod:`~offrl.config.algos`, :mod:`~offrl.config.online`), YAML in and out
(:mod:`~offrl.config.io`) and layering (:mod:`~offrl.config.compose`). It imports no other stage of offrl:
:mod:`offrl.runs` builds trainers from configs.

>>> cfg = compose_config("offrl/pendulum/medium-v0", dotlist=["cql.min_q_weight=5"], load=...)  # doctest: +SKIP
"""

from __future__ import annotations

from offrl.config.compose import (
    CONFIGS_DIR,
    bundled_config_files,
    bundled_env_config_files,
    compose_config,
    compose_env_config,
    dataset_ref,
    merge_layer,
    nest_overrides,
    parse_dotlist,
    saved_config,
)
from offrl.config.io import config_to_yaml, diff_configs, load_yaml
from offrl.config.schema import (
    ALGO_CHOICES,
    ALGO_SECTION,
    ALGOS,
    ENV_PREFIX,
    METADATA_KEYS,
    CQLTrainerConfig,
    DatasetConfig,
    DQNTrainerConfig,
    EvalConfig,
    TrainerConfig,
    check_algo_compatible,
    env_of_config,
    is_discrete,
    resolve_algo,
    resolve_device,
    schema_for,
    structured_config,
)

__all__ = [
    "ALGOS",
    "ALGO_CHOICES",
    "ALGO_SECTION",
    "CONFIGS_DIR",
    "ENV_PREFIX",
    "METADATA_KEYS",
    "CQLTrainerConfig",
    "DQNTrainerConfig",
    "DatasetConfig",
    "EvalConfig",
    "TrainerConfig",
    "bundled_config_files",
    "bundled_env_config_files",
    "check_algo_compatible",
    "compose_config",
    "compose_env_config",
    "config_to_yaml",
    "dataset_ref",
    "diff_configs",
    "env_of_config",
    "is_discrete",
    "load_yaml",
    "merge_layer",
    "nest_overrides",
    "parse_dotlist",
    "resolve_algo",
    "resolve_device",
    "saved_config",
    "schema_for",
    "structured_config",
]
