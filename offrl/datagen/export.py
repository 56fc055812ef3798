"""Trained actors as behaviour policies: export an offrl CQL/SAC trainer checkpoint's actor as an
actor-only checkpoint (``offrl datasets export-actor``), measure an actor's returns, and record a dataset of
an actor-only checkpoint's rollouts (``offrl datasets make --policy FILE.npz``). Numpy only: no torch unless
a trainer checkpoint is read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from offrl.data.envs import make_env
from offrl.data.minari_writer import Episode
from offrl.data.references import d4rl_reference
from offrl.datagen.policies import (
    ACTOR_FORMAT,
    ActorPolicy,
    actor_from_trainer_checkpoint,
    fit_problem,
    load_actor,
    save_actor,
)
from offrl.datagen.recipes import file_sha256
from offrl.datagen.rollout import noisy_action, rollout
from offrl.datagen.write import refs_metadata, write_dataset
from offrl.errors import UserError
from offrl.fsio import write_text_atomic

__all__ = ["EXPORT_EVAL_SEED", "actor_returns", "dataset_from_actor", "export_actor"]


def dataset_from_actor(checkpoint: str | Path, *, episodes: int, env_id: str | None = None, noise: float = 0.0,
                       seed: int = 0, name: str | None = None, root: str | Path | None = None,
                       ref_min: float | None = None, ref_max: float | None = None) -> Path:
    """``offrl datasets make --policy FILE.npz``: roll out an actor-only checkpoint (``datasets/behaviour/``
    files, or one written by ``offrl datasets export-actor``) for ``episodes`` episodes.

    Same conventions as :func:`offrl.datagen.from_run.dataset_from_policy`: the deterministic action plus
    Gaussian ``noise`` x half the action range, clipped; episode ``i`` resets with ``seed + i``; the noise
    draws from ``numpy.random.default_rng(seed)``. Env: ``env_id``, else the one the checkpoint names.
    References: ``ref_min``/``ref_max``, else D4RL's for the checkpoint's ``d4rl_reference`` task, if any.
    """
    if int(episodes) <= 0:
        raise UserError(f"--episodes: must be a positive integer, got {episodes}")
    if not 0.0 <= float(noise):
        raise UserError(f"--noise: must be >= 0, got {noise}")
    path = Path(checkpoint)
    actor = load_actor(path, what="actor checkpoint (--policy)")
    env_id = env_id or actor.meta.get("env_id")
    if not env_id:
        raise UserError(f"--policy {path}: the checkpoint names no env; pass --env ID")
    env = make_env(env_id)
    try:
        problem = fit_problem(actor, env)
        if problem:
            raise UserError(f"--policy {path}: {problem}; pass the env it was trained in with --env")
        task = actor.meta.get("d4rl_reference")
        table = d4rl_reference(f"{task}-random-v2") if task else None
        refs = (table[0], table[1], "D4RL table") if table else (None, None, None)
        rng = np.random.default_rng(seed)
        space = env.action_space

        def policy(obs: np.ndarray, _rng: np.random.Generator) -> np.ndarray:
            return noisy_action(actor.act(obs), space, float(noise), rng)

        def rollouts() -> Iterator[Episode]:
            for i in range(int(episodes)):
                yield rollout(env, policy, rng, int(seed) + i)

        name = name or f"offrl-runs/{path.parent.name}-{path.stem}/policy-v0"
        extra: dict[str, Any] = {
            "algorithm_name": f"{actor.meta.get('algo', 'offrl')} actor rollouts", "author": ["offrl"],
            "description": f"{episodes} episodes of {path} (noise {noise})",
            "offrl_source": {"kind": "actor", "checkpoint": str(path), "sha256": file_sha256(path),
                             "step": actor.meta.get("training_steps"), "noise": float(noise), "seed": int(seed),
                             "episodes": int(episodes)}}
        extra.update(refs_metadata(refs, ref_min, ref_max))
        return write_dataset(name, root, rollouts(), env, extra)
    finally:
        env.close()


def _return_stats(returns: np.ndarray, seed: int, actions: str, refs: tuple[float, float] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"mean": float(returns.mean()), "std": float(returns.std()), "min": float(returns.min()),
                           "max": float(returns.max()), "episodes": len(returns), "reset_seeds": f"{seed} + i",
                           "actions": actions}
    if refs is not None:
        out["d4rl_normalized"] = float(100 * (returns.mean() - refs[0]) / (refs[1] - refs[0]))
    return out


EXPORT_EVAL_SEED = 900_000_000  # measured returns of exported actors: episode i resets with this + i


def actor_returns(actor: ActorPolicy, env_id: str, *, episodes: int = 20, seed: int = EXPORT_EVAL_SEED,
                  sample: bool = False, noise_std: float = 0.0, rng_seed: int = 0) -> np.ndarray:
    """Returns of ``episodes`` rollouts of ``actor`` in ``env_id`` (deterministic actions unless ``sample`` /
    ``noise_std``); episode ``i`` resets with ``seed + i``."""
    env = make_env(env_id)
    try:
        problem = fit_problem(actor, env)
        if problem:
            raise UserError(f"--env {env_id}: {problem}")
        policy = actor.with_noise(sample=sample, noise_std=noise_std, epsilon=0.0)
        rng = np.random.default_rng(rng_seed)
        return np.array([rollout(env, policy, rng, seed + i).rewards.sum() for i in range(int(episodes))])
    finally:
        env.close()


def export_actor(checkpoint: str | Path, out: str | Path, *, env_id: str, episodes: int = 20,
                 seed: int = EXPORT_EVAL_SEED, d4rl_reference: str | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the actor of an offrl CQL/SAC trainer checkpoint as an actor-only checkpoint ``out`` (``.npz``)
    plus ``out`` with ``.json`` (its metadata: env, algorithm, training steps, run config and summary, the
    measured return of ``episodes`` episodes with deterministic and with sampled actions, ``weights_sha256``).
    Returns the metadata."""
    from omegaconf import OmegaConf

    from offrl.data.references import d4rl_reference as d4rl_table
    from offrl.trainers.checkpoint import load_checkpoint

    checkpoint, out = Path(checkpoint), Path(out)
    if checkpoint.is_dir():  # a run folder
        checkpoint = checkpoint / "checkpoints" / "latest.pt"
    if out.suffix != ".npz":
        raise UserError(f"{out}: an actor checkpoint is written as a .npz file; name it <something>.npz")
    if not checkpoint.exists():
        raise UserError(f"{checkpoint}: no such trainer checkpoint; pass a run folder or its checkpoints/*.pt")
    refs = None
    if d4rl_reference is not None:
        refs = d4rl_table(f"{d4rl_reference}-random-v2")
        if refs is None:
            raise UserError(f"--d4rl-reference {d4rl_reference!r}: not a D4RL task (e.g. hopper, halfcheetah)")
    state = load_checkpoint(checkpoint)
    run_dir = checkpoint.parent.parent
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    if (run_dir / "summary.json").is_file():
        try:
            full_summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
            summary = {k: full_summary.get(k) for k in ("status", "steps", "wall_time", "updates_per_s")}
        except (OSError, ValueError):
            pass  # provenance only
    if (run_dir / "config.yaml").is_file():
        full = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
        assert isinstance(full, dict)
        config = {k: full.get(k) for k in ("algo", "seed", "batch_size", "optim_steps_per_batch", "cql", "online",
                                           "command") if k in full}
    activation = str(((config.get("cql") or {}).get("activation")) or "relu")
    scale_lb = float(((config.get("cql") or {}).get("scale_lb")) or 1e-4)
    actor_std = str(((config.get("cql") or {}).get("actor_std")) or "softplus")
    actor = actor_from_trainer_checkpoint(checkpoint, activation=activation, scale_lb=scale_lb, actor_std=actor_std)
    returns = actor_returns(actor, env_id, episodes=episodes, seed=seed)
    sampled = actor_returns(actor, env_id, episodes=episodes, seed=seed, sample=True)
    cql_cfg = config.get("cql") or {}
    sac = float(cql_cfg.get("min_q_weight", 1.0)) == 0.0 and not cql_cfg.get("with_lagrange", False)
    meta: dict[str, Any] = {
        "format": ACTOR_FORMAT, "env_id": env_id,
        "algo": "SAC (offrl cql, min_q_weight=0)" if sac else f"offrl {state.get('algo')}",
        "training_steps": int(state.get("step", 0)), "env_steps": int(state.get("frames", 0)),
        "source_checkpoint": checkpoint.name, "run_config": config, "run_summary": summary,
        "measured_return": _return_stats(returns, seed, "deterministic (tanh of the mean)", refs),
        "measured_return_sampled": _return_stats(sampled, seed, "sampled from the policy (rng seed 0)", refs),
    }
    if refs is not None:
        meta["d4rl_reference"] = d4rl_reference
    meta.update(extra or {})
    actor.meta = meta
    try:
        save_actor(out, actor)
        sidecar = dict(meta, weights_sha256=file_sha256(out), weights_file=out.name)
        write_text_atomic(out.with_suffix(".json"), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise UserError(f"{exc.filename or out}: cannot write the actor checkpoint ({exc.strerror}); choose "
                        "another output path") from None
    return sidecar
