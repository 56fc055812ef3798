"""Restoring a trained policy from a run directory or a checkpoint, for ``offrl eval`` and datasets from runs.

A checkpoint holds parameters only (docs/contracts.md, "Checkpoints"); the networks' shapes come from the
run's ``config.yaml`` and its dataset, so the run directory (``<run>/checkpoints/<file>``) must be intact.
A run trained online from scratch (``dataset.id: env:<ID>``) has no dataset: its networks are sized from
the env, which is also where it is evaluated (raw returns, no reference scores).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offrl.errors import UserError, root_cause_line

if TYPE_CHECKING:
    from offrl.evaluation.rollout import EvalResult

__all__ = ["LoadedPolicy", "evaluate_checkpoint", "load_policy"]


@dataclass
class LoadedPolicy:
    policy: Any  # deterministic TensorDictModule: observation -> action
    dataset: Any  # the run's OfflineDataset (env, reference scores); None for a run trained from scratch
    config: Any  # the run's TrainerConfig
    step: int | None  # gradient step of the checkpoint
    checkpoint: Path
    run_dir: Path
    env_id: str | None = None  # the env of a run trained online from scratch

    @property
    def name(self) -> str:
        """The dataset's name, or ``env:<ID>`` for a run trained from scratch."""
        return self.dataset.name if self.dataset is not None else f"env:{self.env_id}"


def _locate(path: Path) -> tuple[Path, Path]:
    """(run_dir, checkpoint) from a run directory or a checkpoint path."""
    if not path.exists():
        raise UserError(f"{path}: no such run directory or checkpoint")
    if path.is_dir() and (path / "config.yaml").is_file():
        ckpt = path / "checkpoints" / "latest.pt"
        if not ckpt.exists():
            raise UserError(f"{path}: no checkpoints/latest.pt in this run directory; the run saved no checkpoint yet")
        return path, ckpt
    # a checkpoint file (torch backend) or directory (memmap backend) inside <run>/checkpoints/
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{path}: cannot find the run's config.yaml next to this checkpoint "
                        "(expected <run>/checkpoints/<file>); pass the run directory")
    return run_dir, path


def load_policy(path: str | os.PathLike[str], *, device: str = "cpu") -> LoadedPolicy:
    """Rebuild the deterministic policy saved in ``path`` (a run directory or one of its checkpoints)."""
    run_dir, ckpt = _locate(Path(path))  # before the heavy imports: a wrong path fails fast
    from offrl.config import compose_config, env_of_config, load_yaml, saved_config
    from offrl.runs.assemble import load_config_dataset
    from offrl.trainers.checkpoint import load_checkpoint

    saved = load_yaml(run_dir / "config.yaml", option="config")
    env_id = env_of_config(saved)
    from offrl.config.marl import MARL_ALGOS

    if env_id is not None:  # trained online from scratch: networks sized from the env
        cfg = saved_config(saved, origin=str(run_dir / "config.yaml"))
        dataset = None
        if cfg.algo in MARL_ALGOS:
            from offrl.online.marl import build_marl_parts_for_env

            parts = build_marl_parts_for_env(cfg.algo, cfg.algo_config, env_id, device=device)
        else:
            from offrl.online.setup import build_parts_for_env

            parts = build_parts_for_env(cfg.algo, cfg.algo_config, env_id, device=device)
    else:
        cfg, dataset = compose_config(config_file=run_dir / "config.yaml", overrides={"device": device},
                                      load=load_config_dataset)
        if cfg.algo in MARL_ALGOS:
            from offrl.algos.marl import build_marl_from_dataset

            parts = build_marl_from_dataset(cfg.algo_config, dataset, strategy=cfg.algo, device=device)
        else:
            from offrl.algos import build_from_dataset

            parts = build_from_dataset(cfg.algo_config, dataset, device=device)
    state = load_checkpoint(ckpt)
    if "loss_module" not in state:
        raise UserError(f"{ckpt}: not an offrl trainer checkpoint (no 'loss_module' entry)")
    try:
        parts.loss_module.load_state_dict(state["loss_module"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise UserError(f"{ckpt}: does not match the networks of {run_dir / 'config.yaml'} "
                        f"({root_cause_line(err)}); was the "
                        "config edited after training, or the checkpoint copied from another run?") from None
    step = state.get("step")
    return LoadedPolicy(parts.policy, dataset, cfg, int(step) if step is not None else None, ckpt, run_dir,
                        env_id=env_id)


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    *,
    episodes: int = 10,
    seed: int = 0,
    env: str | None = None,
    device: str = "cpu",
) -> tuple[EvalResult, LoadedPolicy]:
    """Evaluate a saved policy in its dataset's env (or ``env``), with the dataset's reference scores."""
    _locate(Path(path))  # a wrong path fails before torch is even imported
    if env is not None:  # an env that cannot be made fails before the dataset load and network rebuild
        from offrl.data.envs import make_env

        make_env(env).close()
    from offrl.evaluation.rollout import evaluate

    loaded = load_policy(path, device=device)
    if loaded.config.algo in ("qmix", "vdn", "iql"):
        raise UserError(f"{path}: offrl eval scores single-agent policies; a multi-agent run's team returns are "
                        "its eval_* columns (metrics.csv, summary.json), measured in its env during training")
    if env is not None:
        _check_spaces(env, loaded.dataset if loaded.dataset is not None else loaded.env_id)
    target = env if env is not None else (loaded.dataset if loaded.dataset is not None else loaded.env_id)
    gamma = getattr(loaded.config.algo_config, "gamma", None) or 0.99
    result = evaluate(loaded.policy, target, episodes=episodes, seed=seed, device=device, ref=loaded.dataset,
                      gamma=gamma)
    return result, loaded


def _check_spaces(env_id: str, dataset: Any) -> None:
    """An ``--env`` whose spaces differ from the dataset's (or, for a run trained from scratch, its env's:
    ``dataset`` is then that env's id) cannot run the policy: say so in one line."""
    import gymnasium as gym

    from offrl.data.envs import make_env

    e = make_env(env_id)
    if isinstance(dataset, str):
        trained = make_env(dataset)
        want_obs, want_act, source = trained.observation_space, trained.action_space, f"env {dataset}"
        trained.close()
    else:
        want_obs, want_act, source = dataset.observation_space, dataset.action_space, dataset.name
    try:
        pairs = (("observation", e.observation_space, want_obs),
                 ("action", e.action_space, want_act))
        for what, got, want in pairs:
            if isinstance(want, gym.spaces.Box) and isinstance(got, gym.spaces.Box):
                same = got.shape == want.shape
            elif isinstance(want, gym.spaces.Discrete) and isinstance(got, gym.spaces.Discrete):
                same = int(got.n) == int(want.n)
            else:
                same = type(got) is type(want)
            if not same:
                raise UserError(f"--env {env_id}: its {what} space {got} does not match the policy's {want} "
                                f"(trained on {source}); choose an env with the same spaces")
    finally:
        e.close()
