"""Datasets made from training runs: ``offrl datasets make --from-run RUN_DIR`` and
``offrl datasets make --policy CHECKPOINT --env ID --episodes K [--noise e]``.

* :func:`dataset_from_run` writes the online replay buffer saved in a run's checkpoint (the transitions
  the run collected while fine-tuning or training online) as a Minari dataset: D4RL's "replay" flavour.
* :func:`dataset_from_policy` rolls out a checkpoint's policy (D4RL's "medium" / "expert" flavours are
  rollouts of a partially / fully trained policy), optionally with exploration noise: Gaussian noise of
  ``noise`` x half the action range for continuous actions (clipped to the bounds), epsilon-greedy with
  ``epsilon = noise`` for discrete ones.

Both write with :func:`offrl.datagen.write.write_dataset` (atomic), under
``$MINARI_DATASETS_PATH`` by default, so ``offrl.data.load_dataset(<id>)`` finds them. Reference scores
(for normalized scores) are taken from the run's dataset when it has them, else from the user.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from offrl.data.minari_writer import Episode
from offrl.datagen.export import dataset_from_actor
from offrl.datagen.rollout import noisy_action
from offrl.datagen.write import refs_metadata, write_dataset
from offrl.errors import UserError

__all__ = ["dataset_from_policy", "dataset_from_run", "episodes_from_rows", "online_rows"]


def episodes_from_rows(rows: TensorDict) -> Iterator[Episode]:
    """Minari episodes from TED rows with ``episode`` and ``step``: rows are ordered by (episode, step) and
    cut where the step index jumps (rows lost to a full buffer). A piece that does not end in ``done``
    (the run stopped, or later rows were overwritten) ends *truncated*, as offrl's Minari reader reads it."""
    if rows.shape[0] == 0:
        return
    episode = rows.get("episode").reshape(-1).numpy()
    step = rows.get("step").reshape(-1).numpy()
    order = np.lexsort((step, episode))
    episode, step = episode[order], step[order]
    idx = torch.as_tensor(order)
    obs = rows.get("observation")[idx].numpy()
    next_obs = rows.get(("next", "observation"))[idx].numpy()
    action = rows.get("action")[idx].numpy()
    reward = rows.get(("next", "reward"))[idx].reshape(-1).numpy().astype(np.float64)
    term = rows.get(("next", "terminated"))[idx].reshape(-1).numpy().astype(bool)
    trunc = rows.get(("next", "truncated"))[idx].reshape(-1).numpy().astype(bool)
    breaks = np.flatnonzero((np.diff(episode) != 0) | (np.diff(step) != 1)) + 1
    for seg in np.split(np.arange(len(order)), breaks):
        a, b = int(seg[0]), int(seg[-1]) + 1
        seg_trunc = trunc[a:b].copy()
        if not (term[b - 1] or seg_trunc[-1]):
            seg_trunc[-1] = True
        yield Episode(observations=np.concatenate([obs[a:b], next_obs[b - 1:b]], 0), actions=action[a:b],
                      rewards=reward[a:b], terminations=term[a:b], truncations=seg_trunc)


def _run_files(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    from omegaconf import OmegaConf

    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"--from-run {run_dir}: not an offrl run folder (no config.yaml); pass a folder printed "
                        "by 'offrl train'")
    ckpt = run_dir / "checkpoints" / "latest.pt"
    if not ckpt.exists():
        raise UserError(f"--from-run {run_dir}: no checkpoints/latest.pt; the run saved no checkpoint")
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    assert isinstance(cfg, dict)
    return ckpt, cfg


def _run_env_and_refs(cfg: dict[str, Any], env_id: str | None) -> tuple[gym.Env, tuple[Any, Any, str | None]]:
    """The run's env (``env_id`` > ``online.env_id`` > the run's dataset's env) and reference scores."""
    from offrl.online.collect import env_factory

    dataset_id = (cfg.get("dataset") or {}).get("id")
    env_id = env_id or (cfg.get("online") or {}).get("env_id") or (cfg.get("dataset") or {}).get("env_id")
    refs: tuple[Any, Any, str | None] = (None, None, None)
    dataset = None
    if dataset_id and dataset_id != "???" and not str(dataset_id).startswith("env:"):  # env:ID: from scratch
        from offrl.data import load_dataset

        dataset = load_dataset(dataset_id, cache_dir=(cfg.get("dataset") or {}).get("cache_dir"))
        info = dataset.info
        refs = (info.ref_min_score, info.ref_max_score, info.ref_source)
    return env_factory(dataset, env_id).gym(), refs


def online_rows(checkpoint: str | os.PathLike[str]) -> TensorDict:
    """The online replay rows saved in a trainer checkpoint (empty when the run had no online phase)."""
    from offrl.trainers.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    buffer_state = (state.get("replay_buffer") or {}).get("buffer") or {}
    rows = buffer_state.get("rows") if isinstance(buffer_state, dict) else None
    if not rows:
        raise UserError(f"{checkpoint}: this checkpoint holds no online replay buffer (the run had no online "
                        "phase, e.g. no --online-steps); use --policy to roll out its policy instead")
    td = TensorDict(rows)
    td.batch_size = [next(iter(td.values(True, True))).shape[0]]
    return td


def dataset_from_run(run_dir: str | os.PathLike[str], *, name: str | None = None,
                     root: str | os.PathLike[str] | None = None, env_id: str | None = None,
                     ref_min: float | None = None, ref_max: float | None = None) -> Path:
    """Write the online transitions of ``run_dir``'s latest checkpoint as Minari dataset ``name``
    (default ``offrl-runs/<run name>/replay-v0``) under ``root`` (default ``$MINARI_DATASETS_PATH``)."""
    run_dir = Path(run_dir)
    ckpt, cfg = _run_files(run_dir)
    if cfg.get("algo") in ("qmix", "vdn", "iql"):  # the multi-agent layout
        from offrl.datagen.marl import dataset_from_marl_run

        return dataset_from_marl_run(run_dir, ckpt, cfg, name=name, root=root, ref_min=ref_min, ref_max=ref_max)
    rows = online_rows(ckpt)
    env, refs = _run_env_and_refs(cfg, env_id)
    name = name or f"offrl-runs/{run_dir.name}/replay-v0"
    extra = {"algorithm_name": f"offrl {cfg.get('algo')} online replay buffer", "author": ["offrl"],
             "description": f"online transitions collected by the run {run_dir}",
             "offrl_source": {"kind": "run", "run_dir": str(run_dir), "algo": cfg.get("algo"),
                              "dataset": (cfg.get("dataset") or {}).get("id")}}
    extra.update(refs_metadata(refs, ref_min, ref_max))
    try:
        return write_dataset(name, root, episodes_from_rows(rows), env, extra)
    finally:
        env.close()


def dataset_from_policy(checkpoint: str | os.PathLike[str], *, episodes: int, env_id: str | None = None,
                        noise: float = 0.0, seed: int = 0, name: str | None = None,
                        root: str | os.PathLike[str] | None = None, ref_min: float | None = None,
                        ref_max: float | None = None) -> Path:
    """Roll out the deterministic policy of ``checkpoint`` (a run folder or one of its checkpoints, or an
    actor-only ``.npz``: :func:`offrl.datagen.export.dataset_from_actor`) for ``episodes`` episodes with
    exploration ``noise`` and write them as Minari dataset ``name``.

    Episode ``i`` resets the env with ``seed + i``; the noise draws from ``numpy.random.default_rng(seed)``.
    """
    from offrl.runs import load_policy

    if Path(checkpoint).suffix == ".npz":  # an actor-only checkpoint (datasets/behaviour/, export-actor)
        return dataset_from_actor(checkpoint, episodes=episodes, env_id=env_id, noise=noise, seed=seed, name=name,
                                  root=root, ref_min=ref_min, ref_max=ref_max)
    if int(episodes) <= 0:
        raise UserError(f"--episodes: must be a positive integer, got {episodes}")
    if not 0.0 <= float(noise):
        raise UserError(f"--noise: must be >= 0, got {noise}")
    loaded = load_policy(checkpoint)
    if loaded.config.algo in ("qmix", "vdn", "iql"):  # the multi-agent layout, rolled out in an mpe2 env
        from offrl.datagen.marl import dataset_from_marl_policy

        return dataset_from_marl_policy(loaded, episodes=int(episodes), env_id=env_id, epsilon=float(noise),
                                        seed=int(seed), name=name, root=root, ref_min=ref_min, ref_max=ref_max)
    from offrl.online.collect import env_factory

    env = env_factory(loaded.dataset, env_id or (loaded.env_id if loaded.dataset is None else None)).gym()
    refs: tuple[Any, Any, str | None] = (None, None, None)  # a run trained from scratch has no references
    if loaded.dataset is not None:
        info = loaded.dataset.info
        refs = (info.ref_min_score, info.ref_max_score, info.ref_source)
    run_name = Path(loaded.run_dir).name
    name = name or f"offrl-runs/{run_name}/policy-v0"
    policy = loaded.policy
    rng = np.random.default_rng(seed)
    obs_dtype = env.observation_space.dtype
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    act_dtype = np.int64 if discrete else env.action_space.dtype

    def rollouts() -> Iterator[Episode]:
        from torchrl.envs.utils import ExplorationType, set_exploration_type

        for i in range(int(episodes)):
            obs, _ = env.reset(seed=seed + i)
            o, a, r, te, tr = [obs], [], [], [], []
            while True:
                with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
                    td = TensorDict({"observation": torch.as_tensor(np.asarray(obs), dtype=torch.float32)}, [])
                    action = policy(td).get("action").cpu().numpy()
                act = noisy_action(action, env.action_space, float(noise), rng)
                obs, reward, terminated, truncated, _ = env.step(act)
                o.append(obs)
                a.append(act)
                r.append(reward)
                te.append(terminated)
                tr.append(truncated)
                if terminated or truncated:
                    break
            yield Episode(observations=np.asarray(o, dtype=obs_dtype), actions=np.asarray(a, dtype=act_dtype),
                          rewards=np.asarray(r, dtype=np.float64), terminations=np.asarray(te, dtype=bool),
                          truncations=np.asarray(tr, dtype=bool), seed=seed + i)

    extra = {"algorithm_name": f"offrl {loaded.config.algo} policy rollouts", "author": ["offrl"],
             "description": f"{episodes} episodes of {checkpoint} (noise {noise})",
             "offrl_source": {"kind": "policy", "checkpoint": str(checkpoint), "step": loaded.step,
                              "noise": float(noise), "seed": int(seed), "episodes": int(episodes)}}
    extra.update(refs_metadata(refs, ref_min, ref_max))
    policy.eval()
    try:
        return write_dataset(name, root, rollouts(), env, extra)
    finally:
        env.close()
