"""Trainer configs: dataclasses that are OmegaConf structured configs, load from YAML, take dotted
``key=value`` overrides with type checking, and build the whole trainer.

``CQLTrainerConfig`` (continuous CQL, ``algo: cql``, or discrete CQL, ``algo: discrete-cql``) and
``DQNTrainerConfig`` (``algo: dqn``) mirror the arguments of :class:`offrl.CQLTrainer` /
:class:`offrl.DQNTrainer` (torchrl's trainer API: ``log_interval``, ``save_trainer_interval``, ``clip_norm``,
...) plus what a run from a dataset needs: the ``dataset`` section, ``offline_steps``, ``batch_size``, the
``eval`` section and the algorithm's own hyperparameters in a section named after it (``cql``,
``discrete_cql`` or ``dqn``; the frozen dataclasses of :mod:`offrl.algos`).

Layers, later wins (:func:`compose_config`): dataclass defaults < bundled per-dataset YAML
(``offrl/configs/``) < ``--config FILE.yaml`` < explicit arguments (``--steps``, ``offline_steps=...``) <
``--set key=value``. A run's ``config.yaml`` is itself a valid ``--config`` (its metadata keys are ignored),
so any run can be reproduced from its folder.

>>> cfg, dataset = compose_config("offrl/pendulum/medium-v0", dotlist=["cql.min_q_weight=5"])
>>> trainer = cfg.build(dataset=dataset)                    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from offrl.config.algos import CQLConfig, DiscreteCQLConfig, DQNConfig
from offrl.config.online import OnlineConfig
from offrl.errors import UserError

if TYPE_CHECKING:
    from offrl.data import OfflineDataset

__all__ = [
    "ALGOS",
    "ALGO_CHOICES",
    "METADATA_KEYS",
    "CQLTrainerConfig",
    "DQNTrainerConfig",
    "DatasetConfig",
    "EvalConfig",
    "TrainerComponents",
    "TrainerConfig",
    "bundled_config_files",
    "compose_config",
    "config_to_yaml",
    "diff_configs",
    "load_yaml",
    "resolve_algo",
    "resolve_device",
    "saved_config",
]

ALGOS = ("cql", "discrete-cql", "dqn")
ALGO_CHOICES = ("auto", *ALGOS)
#: Keys of a run's config.yaml that record the run rather than configure it (ignored when loaded).
METADATA_KEYS = ("versions", "command", "created", "run")
#: Section holding each algorithm's hyperparameters.
ALGO_SECTION = {"cql": "cql", "discrete-cql": "discrete_cql", "dqn": "dqn"}
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class DatasetConfig:
    """Which dataset to train on and how to read it (arguments of :func:`offrl.data.load_dataset`)."""

    id: str = MISSING
    """A bundled id (``offrl/pendulum/medium-v0``), a Minari id or folder, or a D4RL-style HDF5 path."""
    cache_dir: str | None = None
    """Converted-dataset cache; default ``$OFFRL_CACHE`` or ``~/.cache/offrl``."""
    env_id: str | None = None
    """Evaluation env when the dataset does not name one (or to override it)."""
    ref_min_score: float | None = None
    """Normalized-score references; default: the dataset's metadata or the D4RL table."""
    ref_max_score: float | None = None
    digest: str | None = None
    """Content digest; filled in when the run starts. If set in a --config file, the data must match it."""
    path: str | None = None
    """Resolved location (filled in; informative)."""


@dataclass
class EvalConfig:
    """Periodic evaluation: deterministic rollouts of the policy in the dataset's env."""

    interval: int = 5000
    """Evaluate every this many gradient steps, and after the last one (0 = never)."""
    episodes: int = 10
    """Episodes per evaluation; episode i resets the env with ``seed + i``."""
    seed: int = 0
    """Env seed of the first episode. Fixed, not the training seed, so runs of different seeds are scored
    on the same start states (a paired comparison)."""
    heldout_fraction: float = 0.05
    """Share of the dataset's episodes held out of training for the TD-error diagnostic (0 = none: the
    diagnostic then reads training rows). The split depends on the dataset only, not on the seed."""


@dataclass
class TrainerConfig:
    """Fields shared by both trainer configs; names and defaults follow torchrl's trainer API."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    algo: str = MISSING
    seed: int = 0
    """Seeds torch, numpy, python ``random`` and the replay buffer's sampler."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    num_threads: int | None = None
    """torch CPU threads (``torch.set_num_threads``); null = torch's default. Small networks run fastest
    on 1: per-matmul thread hand-offs cost more than they save, and much more on a busy machine."""
    offline_steps: int = 100_000
    """Gradient steps on the dataset (``--steps``). CORL runs 1M on MuJoCo; 100k is a CPU-sized default."""
    batch_size: int = 256
    """Transitions per gradient step (CQL paper, CORL)."""
    log_interval: int = 1000
    """Write a metrics row every this many gradient steps (means over the steps since the last row)."""
    save_trainer_interval: int = 10_000
    """Checkpoint ``checkpoints/latest.pt`` every this many gradient steps (and at the end / on stop)."""
    keep_checkpoints: bool = True
    """Also keep ``checkpoints/step_<N>.pt`` at each checkpoint."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    clip_grad_norm: bool = True
    """torchrl semantics: True clips each param group's gradient norm to ``clip_norm``, False clips values."""
    clip_norm: float | None = None
    """None: no clipping (the norm is still logged)."""
    progress_bar: bool = True
    enable_logging: bool = True
    log_rewards: bool = True
    log_observations: bool = False
    log_timings: bool = False
    """Log seconds per step spent sampling, in forward, backward, optimizer, target update, eval, logging."""
    precision: str = "fp32"
    """``fp32``, or ``bf16``: the loss forward under bfloat16 autocast (parameters, optimizer and Q-values
    stay fp32). Opt-in; fast where the hardware has bf16 matmuls (AVX512-BF16 / AMX CPUs, recent GPUs)."""
    cuda_graph: bool = False
    """Capture the gradient step as a CUDA graph (tensordict's CudaGraphModule) on a CUDA device; ignored
    (eager, same numbers) on a CPU. Pair with a dataset resident on the GPU (the default there)."""
    _algos: ClassVar[tuple[str, ...]] = ALGOS

    logger: str = "csv"
    """``csv`` (always written), or also ``tensorboard`` / ``wandb`` (offline mode)."""
    # torchrl's collector arguments: used with online.steps > 0 (total_frames then = online.steps x
    # frame_skip) or when a collector is passed to build().
    total_frames: int = 0
    frame_skip: int = 1
    optim_steps_per_batch: int = 1
    """Gradient steps after each collected batch of online.frames_per_batch env steps (update-to-data ratio
    = optim_steps_per_batch / online.frames_per_batch)."""
    async_collection: bool = False
    """Collect with torchrl's MultiAsyncCollector (online.num_workers processes) while updating."""
    online: OnlineConfig = field(default_factory=OnlineConfig)
    """Online fine-tuning after the offline steps (``--online-steps N``) and Cal-QL; see offrl.online."""

    # -- derived ----------------------------------------------------------------------------------------
    @property
    def algo_section(self) -> str:
        """Name of the section holding the active algorithm's hyperparameters."""
        return ALGO_SECTION[self.algo]

    @property
    def algo_config(self) -> Any:
        """The active algorithm's hyperparameter dataclass (``CQLConfig``, ``DiscreteCQLConfig``, ``DQNConfig``)."""
        return getattr(self, self.algo_section)

    def validate(self) -> None:
        """Reject values no run can use, naming the key (types were already checked by OmegaConf)."""
        if self.algo not in self._algos:
            raise UserError(
                f"algo={self.algo!r}: {type(self).__name__} runs {' or '.join(self._algos)}; "
                f"use {'DQNTrainerConfig' if self.algo == 'dqn' else 'CQLTrainerConfig'}"
            )
        online_only = self.offline_steps == 0 and self.online.steps > 0  # offrl.online.scratch
        if self.offline_steps <= 0 and not online_only:
            raise UserError(f"--steps (offline_steps): must be a positive integer, got {self.offline_steps}")
        positive = {"--batch-size (batch_size)": self.batch_size,
                    "log_interval": self.log_interval, "save_trainer_interval": self.save_trainer_interval,
                    "--eval-episodes (eval.episodes)": self.eval.episodes, "frame_skip": self.frame_skip,
                    "optim_steps_per_batch": self.optim_steps_per_batch}
        for name, value in positive.items():
            if value <= 0:
                raise UserError(f"{name}: must be a positive integer, got {value}")
        if self.num_threads is not None and self.num_threads <= 0:
            raise UserError(f"num_threads: must be a positive integer or null, got {self.num_threads}")
        if self.eval.interval < 0:
            raise UserError(f"--eval-every: must be 0 (never) or positive, got {self.eval.interval}")
        if not 0.0 <= self.eval.heldout_fraction < 0.5:
            raise UserError(f"eval.heldout_fraction: must be in [0, 0.5), got {self.eval.heldout_fraction}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise UserError(f"clip_norm: must be positive or null, got {self.clip_norm}")
        if self.logger not in ("csv", "tensorboard", "wandb"):
            raise UserError(f"--logger {self.logger!r}: unknown logger; use csv, tensorboard or wandb")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"precision={self.precision!r}: use fp32 (default) or bf16")
        resolve_device(self.device)
        self.online.validate()

    # -- building -----------------------------------------------------------------------------------
    def load_dataset(self) -> OfflineDataset:
        """Load (convert and cache on first use) the dataset this config names."""
        from offrl.data import load_dataset

        d = self.dataset
        return load_dataset(d.id, cache_dir=d.cache_dir, env=d.env_id, ref_min_score=d.ref_min_score,
                            ref_max_score=d.ref_max_score)

    def build_components(
        self,
        *,
        dataset: OfflineDataset | None = None,
        logger: Any = None,
        save_trainer_file: str | Path | None = None,
        collector: Any = None,
        evaluator: Any = None,
    ) -> TrainerComponents:
        """Build everything a run needs: dataset, algorithm parts (networks, loss, optimizer, target
        updater, policy), seeded replay buffer, evaluator and the trainer wired to them.

        ``logger`` and ``save_trainer_file`` come from the run directory (:func:`offrl.train`); without
        them the trainer neither logs nor checkpoints. ``evaluator`` defaults to a
        :class:`offrl.evaluation.Evaluator` (rollouts + critic diagnostics) when ``eval.interval > 0``.
        """
        self.validate()
        if dataset is None:
            dataset = self.load_dataset()
        check_algo_compatible(self.algo, dataset)
        device = resolve_device(self.device)
        module = _algo_module(self.algo)
        if self.num_threads is not None:
            import torch

            torch.set_num_threads(self.num_threads)
        _seed_everything(self.seed)  # network initialisation comes from the run's seed too
        parts = module.build_from_dataset(self.algo_config, dataset, device=str(device), seed=self.seed)
        train_idx = heldout = None
        if evaluator is None and self.eval.interval > 0 and self.eval.heldout_fraction > 0:
            from offrl.evaluation import heldout_split

            # Whole episodes, seeded by the dataset alone: every seed holds out the same ones.
            train_idx, heldout_idx = heldout_split(dataset.data, fraction=self.eval.heldout_fraction, seed=0)
            heldout = dataset.data[heldout_idx].to(device) if heldout_idx.numel() else None
            train_idx = train_idx if heldout is not None else None
        replay_buffer = dataset.replay_buffer(self.batch_size, device=device, seed=self.seed, indices=train_idx)
        if evaluator is None and self.eval.interval > 0:
            try:  # fail before anything is written, not at the first evaluation
                dataset.make_env().close()
            except UserError as err:
                raise UserError(f"{err} (offrl train: --set dataset.env_id=ENV_ID, or --eval-every 0)") from None
            from offrl.evaluation import Evaluator

            # eval_* columns from env rollouts plus the critic's diag_* columns (docs/contracts.md).
            evaluator = Evaluator(dataset, critic=parts.loss_module, episodes=self.eval.episodes,
                                  seed=self.eval.seed, device=device, gamma=getattr(self.algo_config, "gamma", None),
                                  heldout=heldout)
        online = None
        if collector is None:  # online.steps > 0: fine-tune through a torchrl collector (offrl.online)
            from offrl.online.setup import OnlineMetricsLogger, prepare_online

            online = prepare_online(self.online, parts=parts, dataset=dataset, offline_buffer=replay_buffer,
                                    batch_size=self.batch_size, seed=self.seed, device=str(device),
                                    frame_skip=self.frame_skip, async_collection=self.async_collection,
                                    gamma=getattr(self.algo_config, "gamma", None))
            if online is not None:
                collector, replay_buffer = online.collector, online.replay_buffer
                logger = OnlineMetricsLogger(logger, replay_buffer) if logger is not None else None
        trainer_cls, extra = self._trainer_class_and_kwargs(parts)
        trainer = trainer_cls(
            collector=collector,
            total_frames=online.total_frames if online is not None else self.total_frames,
            frame_skip=self.frame_skip,
            optim_steps_per_batch=self.optim_steps_per_batch,
            loss_module=parts.loss_module,
            optimizer=parts.optimizer,
            logger=logger,
            clip_grad_norm=self.clip_grad_norm,
            clip_norm=self.clip_norm,
            progress_bar=self.progress_bar,
            seed=self.seed,
            save_trainer_interval=self.save_trainer_interval,
            log_interval=self.log_interval,
            save_trainer_file=None if save_trainer_file is None else str(save_trainer_file),
            replay_buffer=replay_buffer,
            enable_logging=self.enable_logging,
            log_rewards=self.log_rewards,
            log_observations=self.log_observations,
            target_net_updater=parts.target_net_updater,
            async_collection=self.async_collection,
            log_timings=self.log_timings,
            precision=self.precision,
            cuda_graph=self.cuda_graph,
            offline_steps=self.offline_steps,
            evaluator=evaluator,
            eval_interval=self.eval.interval if evaluator is not None else 0,
            policy=parts.policy,
            keep_checkpoints=self.keep_checkpoints,
            device=device,
            **extra,
            **dict(parts.trainer_kwargs or {}),
        )
        if online is not None:
            online.bind(trainer)  # env errors -> trainer.request_stop(message): checkpoint, clean stop
        return TrainerComponents(trainer=trainer, dataset=dataset, parts=parts, replay_buffer=replay_buffer,
                                 evaluator=evaluator, device=str(device), online=online)

    def build(self, **kwargs: Any) -> Any:
        """Build the trainer (see :meth:`build_components` for the arguments)."""
        return self.build_components(**kwargs).trainer

    def _trainer_class_and_kwargs(self, parts: Any) -> tuple[type, dict[str, Any]]:
        raise NotImplementedError


@dataclass
class CQLTrainerConfig(TrainerConfig):
    """Config of :class:`offrl.CQLTrainer`: continuous CQL (``algo: cql``) or discrete CQL
    (``algo: discrete-cql``), on a dataset. Hyperparameters live in ``cql`` / ``discrete_cql``."""

    algo: str = "cql"
    log_actions: bool = True
    cql: CQLConfig = field(default_factory=CQLConfig)
    discrete_cql: DiscreteCQLConfig = field(default_factory=DiscreteCQLConfig)

    _algos: ClassVar[tuple[str, ...]] = ("cql", "discrete-cql")

    def _trainer_class_and_kwargs(self, parts: Any) -> tuple[type, dict[str, Any]]:
        from offrl.trainers import CQLTrainer

        extra: dict[str, Any] = {"log_actions": self.log_actions}
        if parts.greedy_module is not None:  # discrete CQL online: epsilon-greedy exploration (offrl.online)
            extra["greedy_module"] = parts.greedy_module
        return CQLTrainer, extra


@dataclass
class DQNTrainerConfig(TrainerConfig):
    """Config of :class:`offrl.DQNTrainer`: (double) DQN on a dataset. Hyperparameters live in ``dqn``."""

    algo: str = "dqn"
    dqn: DQNConfig = field(default_factory=DQNConfig)
    mixing_strategy: str | None = None
    """Multi-agent mixing: ``qmix``, ``vdn``, ``iql`` or null (torchrl's DQNTrainer)."""
    done_key: str = "done"
    terminated_key: str = "terminated"
    reward_key: str = "reward"
    episode_reward_key: str = "reward_sum"
    aggregated_reward_key: str | None = None
    aggregated_episode_reward_key: str | None = None
    action_key: str = "action"
    observation_key: str = "observation"

    _algos: ClassVar[tuple[str, ...]] = ("dqn",)

    def _trainer_class_and_kwargs(self, parts: Any) -> tuple[type, dict[str, Any]]:
        from offrl.trainers import DQNTrainer

        keys = ("mixing_strategy", "done_key", "terminated_key", "reward_key", "episode_reward_key",
                "aggregated_reward_key", "aggregated_episode_reward_key", "action_key", "observation_key")
        extra = {k: getattr(self, k) for k in keys}
        extra["greedy_module"] = parts.greedy_module
        return DQNTrainer, extra


@dataclass
class TrainerComponents:
    """What :meth:`TrainerConfig.build_components` built, for callers that need more than the trainer."""

    trainer: Any
    dataset: Any
    parts: Any
    replay_buffer: Any
    evaluator: Any
    device: str
    online: Any = None
    """:class:`offrl.online.OnlineParts` when the run has an online phase."""


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# -- algorithm and device resolution ------------------------------------------------------------------
def _algo_module(algo: str) -> Any:
    if algo == "cql":
        from offrl.algos import cql as module
    elif algo == "discrete-cql":
        from offrl.algos import discrete_cql as module
    elif algo == "dqn":
        from offrl.algos import dqn as module
    else:  # pragma: no cover - validated before
        raise UserError(f"--algo {algo!r}: unknown algorithm; use one of {', '.join(ALGO_CHOICES)}")
    return module


def is_discrete(dataset: Any) -> bool:
    """Whether the dataset's actions are discrete (integer indices; ``info.action_space["kind"]``)."""
    return bool(dataset.info.discrete)


def resolve_algo(algo: str | None, dataset: Any) -> str:
    """``auto`` -> ``cql`` for continuous actions, ``discrete-cql`` for discrete ones; checks the rest."""
    algo = (algo or "auto").lower().replace("_", "-")
    if algo not in ALGO_CHOICES:
        raise UserError(f"--algo {algo!r}: unknown algorithm; use one of {', '.join(ALGO_CHOICES)}")
    if algo == "auto":
        return "discrete-cql" if is_discrete(dataset) else "cql"
    check_algo_compatible(algo, dataset)
    return algo


def check_algo_compatible(algo: str, dataset: Any) -> None:
    """Raise a user error when ``algo`` cannot act in the dataset's action space."""
    discrete = is_discrete(dataset)
    if algo in ("dqn", "discrete-cql") and not discrete:
        raise UserError(
            f"--algo {algo}: {dataset.name} has continuous actions; {algo} needs discrete actions "
            "(use --algo cql or auto)"
        )
    if algo == "cql" and discrete:
        raise UserError(
            f"--algo cql: {dataset.name} has discrete actions; use --algo discrete-cql, dqn or auto"
        )


def resolve_device(device: str | None) -> Any:
    """``auto`` -> ``cuda`` when available, else ``cpu``; an unusable device is a user error."""
    import torch

    device = (device or "auto").strip()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: offrl runs on cpu or cuda")
    return dev


# -- YAML in and out ----------------------------------------------------------------------------------
def load_yaml(path: str | Path, *, option: str = "--config") -> DictConfig:
    """A YAML config file as a DictConfig, run metadata keys dropped; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{option} {path}: not valid YAML ({first})") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{option} {path}: expected a mapping of config keys at the top level")
    for key in METADATA_KEYS:
        cfg.pop(key, None)
    return cfg


def config_to_yaml(cfg: TrainerConfig | DictConfig, extra: Mapping[str, Any] | None = None) -> str:
    """The resolved config as YAML, only the active algorithm's section, plus ``extra`` (run metadata)."""
    container = _to_container(cfg)
    if extra:
        container.update(extra)
    return OmegaConf.to_yaml(OmegaConf.create(container))


def _to_container(cfg: TrainerConfig | DictConfig) -> dict[str, Any]:
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    container = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    active = ALGO_SECTION.get(container.get("algo", ""))
    for section in ALGO_SECTION.values():
        if section != active:
            container.pop(section, None)
    container.pop("_algos", None)
    return container


def diff_configs(old: TrainerConfig | DictConfig, new: TrainerConfig | DictConfig,
                 *, ignore: Sequence[str] = ("progress_bar", "logger", "dataset.cache_dir", "dataset.path"),
                 ) -> list[str]:
    """Dotted keys whose values differ between two configs (``ignore``: keys that do not change results)."""
    a = _flatten(_to_container(old))
    b = _flatten(_to_container(new))
    return [k for k in sorted(set(a) | set(b)) if k not in ignore and a.get(k) != b.get(k)]


def saved_config(saved: DictConfig | Mapping[str, Any], origin: str = "config.yaml") -> TrainerConfig:
    """A saved run config (metadata keys dropped) read through its schema, so defaults added since compare
    equal; no dataset is loaded."""
    node = OmegaConf.create(dict(saved) if not isinstance(saved, DictConfig) else saved)
    for key in METADATA_KEYS:
        node.pop(key, None)
    algo = str(node.get("algo", "cql"))
    if algo not in ALGOS:
        raise UserError(f"{origin}: algo {algo!r} is not one of {', '.join(ALGOS)}")
    obj = OmegaConf.to_object(_merge(_structured(_schema_for(algo)), node, origin))
    assert isinstance(obj, TrainerConfig)
    return obj


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


# -- composing ----------------------------------------------------------------------------------------
def bundled_config_files(dataset_name: str, algo: str) -> list[Path]:
    """The bundled YAML files for a dataset and algorithm, general first.

    ``offrl/configs/<env>.<algo>.yaml`` applies to every ``offrl/<env>/*`` dataset, and
    ``offrl/configs/<env>-<flavour>.<algo>.yaml`` to one dataset (e.g. ``pendulum-medium-v0.cql.yaml``).
    """
    parts = dataset_name.strip("/").split("/")
    if len(parts) != 3 or parts[0] != "offrl":
        return []
    env, flavour = parts[1], parts[2]
    candidates = [CONFIGS_DIR / f"{env}.{algo}.yaml", CONFIGS_DIR / f"{env}-{flavour}.{algo}.yaml"]
    return [p for p in candidates if p.is_file()]


def _schema_for(algo: str) -> type[TrainerConfig]:
    return DQNTrainerConfig if algo == "dqn" else CQLTrainerConfig


def _structured(schema: type[TrainerConfig]) -> DictConfig:
    node = OmegaConf.structured(schema)
    # The algorithm dataclasses are frozen (immutable once built); the config tree must stay mergeable.
    OmegaConf.set_readonly(node, False)
    for section in ALGO_SECTION.values():
        if section in node:
            OmegaConf.set_readonly(node[section], False)
    return node


def _merge(base: DictConfig, layer: Any, origin: str) -> DictConfig:
    """Merge one layer into the schema, turning OmegaConf's errors into one-line user errors."""
    try:
        return OmegaConf.merge(base, layer)  # type: ignore[return-value]
    except ConfigKeyError as err:
        key = err.full_key or err.key
        raise UserError(f"{origin}: unknown config key '{key}'; see 'offrl train --help' or a run's config.yaml") from None
    except ValidationError as err:
        key = err.full_key or err.key
        msg = str(err).splitlines()[0]
        raise UserError(f"{origin}: bad value for '{key}': {msg}") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        raise UserError(f"{origin}: {msg}" + (f" (key '{key}')" if key else "")) from None


def _parse_dotlist(dotlist: Sequence[str]) -> DictConfig:
    for item in dotlist:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set cql.min_q_weight=5")
    try:
        return OmegaConf.from_dotlist(list(dotlist))
    except OmegaConfBaseException as err:
        raise UserError(f"--set: cannot parse {list(dotlist)} ({str(err).splitlines()[0]})") from None


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"eval.interval": 5, "cql": {"tau": 0.01}}`` -> a nested dict OmegaConf can merge."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        node = out
        *head, last = str(key).split(".")
        for part in head:
            node = node.setdefault(part, {})
        if isinstance(value, Mapping) and isinstance(node.get(last), dict):
            node[last].update(value)
        else:
            node[last] = dict(value) if isinstance(value, Mapping) else value
    return out


def compose_config(
    dataset: str | None = None,
    algo: str | None = None,
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    dotlist: Sequence[str] = (),
    base: DictConfig | Mapping[str, Any] | None = None,
    loaded: OfflineDataset | None = None,
) -> tuple[TrainerConfig, OfflineDataset]:
    """Resolve a full, validated config and load its dataset.

    ``dataset``/``algo``: the CLI's ``--dataset``/``--algo`` (``None`` = from the config file, else auto);
    ``config_file``: ``--config``; ``overrides``: explicit values by dotted key (``offline_steps``,
    ``eval.interval``, ...); ``dotlist``: ``--set key=value`` items; ``base``: a starting config (a run's
    saved config when resuming; bundled YAML is then not applied again). Returns the config dataclass
    (with ``dataset.digest``/``path`` filled in) and the loaded dataset.
    """
    file_layer = load_yaml(config_file) if config_file is not None else OmegaConf.create({})
    set_layer = _parse_dotlist(dotlist)
    explicit = OmegaConf.create(_nest(overrides or {}))
    base_layer = OmegaConf.create(dict(base) if isinstance(base, Mapping) else base) if base is not None else None

    layers = [x for x in (base_layer, file_layer, explicit, set_layer) if x is not None]
    # The dataset and algorithm decide the schema and bundled YAML, so read them first from every layer.
    raw = OmegaConf.merge(*layers) if layers else OmegaConf.create({})
    dataset_id = dataset or OmegaConf.select(raw, "dataset.id", default=None)
    if not dataset_id:
        raise UserError("--dataset: required (a bundled id like offrl/pendulum/medium-v0, a Minari id or folder, "
                        "or an HDF5 file)")
    if dataset:
        explicit = OmegaConf.merge(explicit, {"dataset": {"id": str(dataset)}})
        layers = [x for x in (base_layer, file_layer, explicit, set_layer) if x is not None]
    requested = algo if algo not in (None, "") else OmegaConf.select(raw, "algo", default="auto")
    requested = str(requested).lower().replace("_", "-")
    if requested not in ALGO_CHOICES:
        raise UserError(f"--algo {requested!r}: unknown algorithm; use one of {', '.join(ALGO_CHOICES)}")

    if loaded is None:
        probe = _structured(CQLTrainerConfig if requested != "dqn" else DQNTrainerConfig)
        probe.dataset.id = str(dataset_id)
        for layer in layers:  # dataset.* options (cache_dir, env_id, refs) apply to loading
            if "dataset" in layer:
                probe.dataset = _merge(probe.dataset, layer.dataset, _origin(layer, file_layer, config_file))
        loaded = _load(probe)
    resolved_algo = resolve_algo(requested, loaded)

    schema = _structured(_schema_for(resolved_algo))
    bundled = [] if base is not None else bundled_config_files(loaded.name, resolved_algo)
    cfg = schema
    for path in bundled:
        cfg = _merge(cfg, load_yaml(path, option="bundled config"), f"bundled config {path}")
    for layer in layers:
        cfg = _merge(cfg, layer, _origin(layer, file_layer, config_file, set_layer, base_layer))
    cfg = _merge(cfg, {"algo": resolved_algo}, "--algo")

    expected = OmegaConf.select(cfg, "dataset.digest", default=None)
    if expected and base is None and expected != loaded.digest:
        raise UserError(
            f"dataset.digest: {loaded.name} has digest {loaded.digest[:12]}..., the config expects "
            f"{str(expected)[:12]}...; the data changed (remove dataset.digest to accept it)"
        )
    cfg.dataset.digest = loaded.digest
    cfg.dataset.path = str(loaded.source)
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, TrainerConfig)
    _check_inactive_sections(layers, resolved_algo)
    obj.validate()
    return obj, loaded


def _origin(layer: Any, file_layer: Any, config_file: Any, set_layer: Any = None, base_layer: Any = None) -> str:
    if layer is file_layer and config_file is not None:
        return f"--config {config_file}"
    if layer is set_layer:
        return "--set"
    if layer is base_layer and base_layer is not None:
        return "saved run config"
    return "option"


def _check_inactive_sections(layers: Sequence[DictConfig], algo: str) -> None:
    """A value set for another algorithm's section would be silently ignored: refuse it instead."""
    active = ALGO_SECTION[algo]
    for layer in layers:
        for section in ALGO_SECTION.values():
            if section != active and section in layer and layer[section]:
                key = next(iter(layer[section]))
                raise UserError(f"{section}.{key}: set for another algorithm; this run's algo is {algo} "
                                f"(its hyperparameters are under '{active}.')")


def _load(probe: DictConfig) -> OfflineDataset:
    from offrl.data import load_dataset

    d = probe.dataset
    return load_dataset(d.id, cache_dir=d.cache_dir, env=d.env_id, ref_min_score=d.ref_min_score,
                        ref_max_score=d.ref_max_score)
