"""The config schema: dataclasses that are OmegaConf structured configs, and their validation.

``CQLTrainerConfig`` (continuous CQL, ``algo: cql``, or discrete CQL, ``algo: discrete-cql``) and
``DQNTrainerConfig`` (``algo: dqn``) mirror the arguments of :class:`offrl.CQLTrainer` /
:class:`offrl.DQNTrainer` (torchrl's trainer API: ``log_interval``, ``save_trainer_interval``, ``clip_norm``,
...) plus what a run needs: its source (the ``dataset`` section; ``dataset.id: env:<ENV_ID>`` for a run
trained online from scratch), ``offline_steps``, ``batch_size``, the ``eval`` section and the algorithm's
own hyperparameters in a section named after it (``cql``, ``discrete_cql`` or ``dqn``; the frozen
dataclasses of :mod:`offrl.config.algos`). Building a trainer from a config is :mod:`offrl.runs`' job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import MISSING, DictConfig, OmegaConf

from offrl.config.algos import CQLConfig, DiscreteCQLConfig, DQNConfig
from offrl.config.marl import MARL_ALGOS, MARL_KEYS, MixingConfig
from offrl.config.online import OnlineConfig
from offrl.config.ranges import check_algo_ranges, check_finite_floats, check_ref_scores
from offrl.errors import UserError

__all__ = [
    "ALGOS",
    "ALGO_CHOICES",
    "ALGO_SECTION",
    "ENV_PREFIX",
    "METADATA_KEYS",
    "CQLTrainerConfig",
    "DQNTrainerConfig",
    "DatasetConfig",
    "EvalConfig",
    "TrainerConfig",
    "check_algo_compatible",
    "env_of_config",
    "is_discrete",
    "is_multiagent",
    "marl_defaults",
    "resolve_algo",
    "resolve_device",
    "schema_for",
    "structured_config",
]

ALGOS = ("cql", "discrete-cql", "dqn", *MARL_ALGOS)
ALGO_CHOICES = ("auto", *ALGOS)
#: Keys of a run's config.yaml that record the run rather than configure it (ignored when loaded).
METADATA_KEYS = ("versions", "command", "created", "run", "config_origins", "defaults_from_data", "vectorized_seeds")
#: Section holding each algorithm's hyperparameters.
ALGO_SECTION = {"cql": "cql", "discrete-cql": "discrete_cql", "dqn": "dqn", **dict.fromkeys(MARL_ALGOS, "mixing")}
#: ``dataset.id`` of a run trained online from scratch: ``env:<ENV_ID>``.
ENV_PREFIX = "env:"


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
    final_episodes: int = 20
    """Episodes of the run's last evaluation (at least ``episodes``): the score a run ends with carries a
    Student-t 95% interval over episodes, and 20 episodes make it about a third as wide as 5 (docs/reports.md)."""
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
    """torch CPU threads (``torch.set_num_threads``); null = torch's default. Small networks gain little or
    nothing from a second thread on an idle machine and lose much on a busy one (docs/threads.md)."""
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
    """torchrl semantics: True clips the gradient norm over all parameters to ``clip_norm``, False clips values."""
    clip_norm: float | None = None
    """None: no clipping (the norm is still logged)."""
    progress_bar: bool = True
    enable_logging: bool = True
    """torchrl semantics: False drops the metric hooks (the batches' reward / action / observation
    statistics, ``done_percentage``, ``episode_reward_mean``); losses, norms and evaluations are still logged."""
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
    # frame_skip) or when a collector is passed to offrl.runs.build_components().
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
        online_only = self.offline_steps == 0 and self.online.steps > 0  # from scratch in an env
        if self.offline_steps <= 0 and not online_only:
            raise UserError(f"--steps (offline_steps): must be a positive integer, got {self.offline_steps}")
        positive = {"--batch-size (batch_size)": self.batch_size,
                    "log_interval": self.log_interval, "save_trainer_interval": self.save_trainer_interval,
                    "--eval-episodes (eval.episodes)": self.eval.episodes, "frame_skip": self.frame_skip,
                    "eval.final_episodes": self.eval.final_episodes,
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
        if self.seed < 0 or self.eval.seed < 0:
            raise UserError(f"{'seed' if self.seed < 0 else 'eval.seed'}: must be 0 or positive, got "
                            f"{min(self.seed, self.eval.seed)}")
        check_ref_scores(self.dataset.ref_min_score, self.dataset.ref_max_score, "dataset.ref_min_score",
                         "dataset.ref_max_score")
        check_finite_floats(self)
        check_algo_ranges(self.algo_section, self.algo_config)
        check_algo_ranges("online", self.online)
        resolve_device(self.device)
        self.online.validate()


@dataclass
class CQLTrainerConfig(TrainerConfig):
    """Config of :class:`offrl.CQLTrainer`: continuous CQL (``algo: cql``) or discrete CQL
    (``algo: discrete-cql``), on a dataset. Hyperparameters live in ``cql`` / ``discrete_cql``."""

    algo: str = "cql"
    log_actions: bool = True
    cql: CQLConfig = field(default_factory=CQLConfig)
    discrete_cql: DiscreteCQLConfig = field(default_factory=DiscreteCQLConfig)

    _algos: ClassVar[tuple[str, ...]] = ("cql", "discrete-cql")


@dataclass
class DQNTrainerConfig(TrainerConfig):
    """Config of :class:`offrl.DQNTrainer`: (double) DQN (``algo: dqn``, hyperparameters in ``dqn``) or a
    multi-agent Q-learner (``algo: qmix``, ``vdn`` or ``iql``, hyperparameters in ``mixing``). Keys are
    torchrl's: nested ones written with dots (``agents.reward`` = ``("agents", "reward")``)."""

    algo: str = "dqn"
    dqn: DQNConfig = field(default_factory=DQNConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    mixing_strategy: str | None = None
    """Multi-agent mixing: ``qmix``, ``vdn``, ``iql`` (set by ``algo``) or null (torchrl's DQNTrainer)."""
    done_key: str = "done"
    terminated_key: str = "terminated"
    reward_key: str = "reward"
    episode_reward_key: str = "reward_sum"
    aggregated_reward_key: str | None = None
    aggregated_episode_reward_key: str | None = None
    action_key: str = "action"
    observation_key: str = "observation"

    _algos: ClassVar[tuple[str, ...]] = ("dqn", *MARL_ALGOS)

    def validate(self) -> None:
        super().validate()
        if self.algo in MARL_ALGOS and self.mixing_strategy != self.algo:
            raise UserError(f"mixing_strategy={self.mixing_strategy!r}: algo {self.algo} trains with "
                            f"mixing_strategy {self.algo}; drop the key (or pick --algo {self.mixing_strategy})")
        if self.algo == "dqn" and self.mixing_strategy is not None:
            raise UserError(f"mixing_strategy={self.mixing_strategy!r}: algo dqn is single-agent; use "
                            f"--algo {self.mixing_strategy} for a multi-agent dataset or env")
        if self.algo in ("qmix", "vdn") and (self.aggregated_reward_key is None
                                            or self.aggregated_episode_reward_key is None):
            raise UserError(f"aggregated_reward_key / aggregated_episode_reward_key: algo {self.algo} needs both "
                            "(where the agent-averaged rewards go), e.g. reward and episode_reward")


def marl_defaults(algo: str) -> dict[str, Any]:
    """The config keys a multi-agent ``algo`` sets unless a layer says otherwise: its mixing strategy and
    torchrl's multi-agent keys (no aggregated keys for independent learners: nothing is aggregated)."""
    if algo not in MARL_ALGOS:
        return {}
    keys = dict(MARL_KEYS)
    if algo == "iql":
        keys.pop("aggregated_reward_key")
        keys.pop("aggregated_episode_reward_key")
    return {"mixing_strategy": algo, **keys}


def schema_for(algo: str) -> type[TrainerConfig]:
    """The config dataclass that runs ``algo``."""
    return DQNTrainerConfig if algo in ("dqn", *MARL_ALGOS) else CQLTrainerConfig


def structured_config(schema: type[TrainerConfig]) -> DictConfig:
    """``schema``'s defaults as a mergeable OmegaConf tree (the algorithm sections are frozen dataclasses)."""
    node = OmegaConf.structured(schema)
    OmegaConf.set_readonly(node, False)
    for section in ALGO_SECTION.values():
        if section in node:
            OmegaConf.set_readonly(node[section], False)
    return node


def env_of_config(node: Any) -> str | None:
    """The env id of a from-scratch run's config (``dataset.id`` = ``env:<ID>``), else None."""
    dataset_id = OmegaConf.select(node, "dataset.id", default=None) if node is not None else None
    if isinstance(dataset_id, str) and dataset_id.startswith(ENV_PREFIX):
        return dataset_id[len(ENV_PREFIX):]
    return None


# -- algorithm and device resolution ------------------------------------------------------------------
def is_discrete(dataset: Any) -> bool:
    """Whether the dataset's actions are discrete (integer indices; ``info.action_space["kind"]``)."""
    return bool(dataset.info.discrete)


def is_multiagent(dataset: Any) -> bool:
    """Whether the dataset has an agent axis (docs/multiagent.md)."""
    return bool(dataset.info.extra.get("multiagent"))


def resolve_algo(algo: str | None, dataset: Any) -> str:
    """``auto`` -> ``cql`` for continuous actions, ``discrete-cql`` for discrete ones; checks the rest."""
    algo = (algo or "auto").lower().replace("_", "-")
    if algo not in ALGO_CHOICES:
        raise UserError(f"--algo {algo!r}: unknown algorithm; use one of {', '.join(ALGO_CHOICES)}")
    if algo == "auto":
        if is_multiagent(dataset):
            return "qmix"
        return "discrete-cql" if is_discrete(dataset) else "cql"
    check_algo_compatible(algo, dataset)
    return algo


def check_algo_compatible(algo: str, dataset: Any) -> None:
    """Raise a user error when ``algo`` cannot act in the dataset's action space (or agent count)."""
    multiagent = is_multiagent(dataset)
    if multiagent and algo not in MARL_ALGOS:
        raise UserError(f"--algo {algo}: {dataset.name} is a multi-agent dataset; use --algo qmix, vdn or iql")
    if algo in MARL_ALGOS:
        if not multiagent:
            advice = "--algo dqn or discrete-cql" if is_discrete(dataset) else "--algo cql (continuous actions)"
            raise UserError(f"--algo {algo}: {dataset.name} is a single-agent dataset; {algo} needs one with an "
                            f"agent axis (docs/multiagent.md); use {advice}")
        return
    discrete = is_discrete(dataset)
    if algo == "cql" and not discrete:
        _check_action_range(dataset)
    if algo in ("dqn", "discrete-cql") and not discrete:
        raise UserError(
            f"--algo {algo}: {dataset.name} has continuous actions; {algo} needs discrete actions "
            "(use --algo cql or auto)"
        )
    if algo == "cql" and discrete:
        raise UserError(
            f"--algo cql: {dataset.name} has discrete actions; use --algo discrete-cql, dqn or auto"
        )


def _check_action_range(dataset: Any) -> None:
    """CQL's tanh policy maps onto ``[low, high]`` per action dimension: a dimension whose bounds are equal
    (every action there the same constant, outside [-1, 1]) trains to NaN; refuse it up front."""
    space = getattr(dataset.info, "action_space", None) or {}
    low, high = space.get("low"), space.get("high")
    if low is None or high is None:
        return
    width = 1
    for n in space.get("shape") or [1]:
        width *= int(n)
    lows = list(low) if isinstance(low, (list, tuple)) else [low] * width
    highs = list(high) if isinstance(high, (list, tuple)) else [high] * width
    for k, (lo, hi) in enumerate(zip(lows, highs, strict=False)):
        if lo is not None and hi is not None and float(lo) >= float(hi):
            raise UserError(
                f"--algo cql: {dataset.source}: the dataset's action bounds are equal on dimension {k} (low = high "
                f"= {float(lo):g}: every action there is the same constant), so CQL's policy has no range to act "
                "in; drop that constant column from the actions, or rescale the actions into [-1, 1]")


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
