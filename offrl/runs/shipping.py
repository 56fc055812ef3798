"""``offrl export``: a run's deterministic policy as one file (TorchScript or ONNX) plus a JSON sidecar.

The file maps an observation batch ``[B, obs_dim]`` (float32, input ``observation``) to actions in the env's
units (output ``action``: ``[B, act_dim]`` float32 inside the action bounds, or ``[B]`` int64 indices); see
:mod:`offrl.algos.deploy`. The sidecar (``<file>.json``) holds the spaces, the dataset's digest, the
checkpoint and step, the run's config and score, and the check made at export: the exported file, loaded
back (``torch.jit.load`` / onnxruntime), against the PyTorch policy on up to 1,000 dataset observations.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from offrl.errors import UserError
from offrl.fsio import atomic_write, write_text_atomic

__all__ = ["EXPORT_FORMATS", "export_policy", "load_exported", "policy_actions_of", "space_dict"]

EXPORT_FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
CHECK_OBSERVATIONS = 1000
ONNX_HINT = "pip install 'offrl[export]'"


def _need_onnx() -> None:
    import importlib.util

    for module in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--format onnx needs the {module} package: {ONNX_HINT}")


def space_dict(space: Any) -> dict[str, Any]:
    """A gymnasium space as JSON (infinite bounds become null)."""
    import gymnasium as gym

    def bound(values: Any) -> list[Any]:
        return [None if not math.isfinite(float(x)) else float(x) for x in np.asarray(values).reshape(-1)]

    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype), "low": bound(space.low),
                "high": bound(space.high)}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    return {"type": type(space).__name__, "repr": str(space)}


def _spaces(loaded: Any) -> tuple[Any, Any]:
    if loaded.dataset is not None:
        return loaded.dataset.observation_space, loaded.dataset.action_space
    from offrl.data.envs import make_env

    env = make_env(loaded.env_id)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def _check_observations(loaded: Any, obs_space: Any) -> Any:
    """Up to 1,000 observations of the run's dataset (or sampled from the env's observation space)."""
    import torch

    if loaded.dataset is not None:
        obs = loaded.dataset.data["observation"]
        idx = torch.linspace(0, obs.shape[0] - 1, min(CHECK_OBSERVATIONS, obs.shape[0])).long()
        return obs[idx].float().contiguous()
    obs_space.seed(0)
    return torch.as_tensor(np.stack([obs_space.sample() for _ in range(CHECK_OBSERVATIONS)]), dtype=torch.float32)


def _write_torchscript(module: Any, example: Any, path: Path) -> None:
    import torch

    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))


def _write_onnx(module: Any, example: Any, path: Path) -> None:
    import torch

    noisy = logging.getLogger("torch.onnx")
    level = noisy.level
    noisy.setLevel(logging.ERROR)  # "torchvision is not installed" and progress lines: not the user's concern
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example,), dynamo=True, input_names=["observation"],
                                        output_names=["action"],
                                        dynamic_shapes={"observation": {0: torch.export.Dim("batch")}})
        atomic_write(path, lambda tmp: program.save(tmp))
    finally:
        noisy.setLevel(level)


def load_exported(path: str | os.PathLike[str]) -> Any:
    """``obs (np.ndarray [B, obs_dim]) -> actions (np.ndarray)`` from an exported file: ``torch.jit.load``
    for ``.pt``, an onnxruntime session for ``.onnx``."""
    path = Path(path)
    if path.suffix == ".onnx":
        _need_onnx()
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda obs: session.run(None, {"observation": np.asarray(obs, dtype=np.float32)})[0]
    import torch

    module = torch.jit.load(str(path))

    def act(obs: Any) -> np.ndarray:
        with torch.no_grad():
            return module(torch.as_tensor(np.asarray(obs, dtype=np.float32))).numpy()

    return act


def _summary_score(run_dir: Path) -> dict[str, Any]:
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: summary.get(k) for k in ("status", "steps", "final", "best", "selected") if k in summary}


def _scaling_note(policy: Any) -> str | None:
    """How the exported network scales its input, when the run trained on scaled observations."""
    scaler = getattr(policy, "scaler", None)
    if scaler is None:
        return None
    loc = [round(float(v), 6) for v in scaler.loc.reshape(-1)]
    scale = [round(float(v), 6) for v in scaler.scale.reshape(-1)]
    return f"; the network scales it itself ({scaler.kind}: (obs - {loc}) / {scale})"


def export_policy(target: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Export the policy of ``target`` (a run directory or one of its checkpoints) as ``fmt``; returns the
    sidecar's content (with ``file`` and ``sidecar`` paths)."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format {fmt}: unknown export format; choose one of {', '.join(EXPORT_FORMATS)}")
    if out is not None and Path(out).is_dir():
        raise UserError(f"--out {out}: is a directory; name the file to write (e.g. {Path(out) / 'policy'}"
                        f"{EXPORT_FORMATS[fmt]})")
    if fmt == "onnx":
        _need_onnx()
    from offrl.runs.policy import load_policy  # torch: after the checks that need none

    loaded = load_policy(target)
    import torch
    from omegaconf import OmegaConf

    from offrl.algos.deploy import deployable_policy

    path = Path(out) if out is not None else loaded.run_dir / "export" / f"policy{EXPORT_FORMATS[fmt]}"
    module = deployable_policy(loaded.policy)
    for p in module.parameters():
        p.requires_grad_(False)
    obs_space, act_space = _spaces(loaded)
    obs = _check_observations(loaded, obs_space)
    try:
        (_write_torchscript if fmt == "torchscript" else _write_onnx)(module, obs[:2], path)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot write the exported policy ({exc.strerror}); choose another "
                        "path") from None
    exported = load_exported(path)(obs.numpy())
    with torch.no_grad():
        reference = module(obs).numpy()
    policy_actions = policy_actions_of(loaded.policy, obs)
    diff = float(np.max(np.abs(exported.astype(np.float64).reshape(len(obs), -1)
                               - policy_actions.astype(np.float64).reshape(len(obs), -1))))
    diff_module = float(np.max(np.abs(exported.astype(np.float64) - reference.astype(np.float64))))
    config = OmegaConf.to_container(OmegaConf.load(loaded.run_dir / "config.yaml"), resolve=True)
    discrete = exported.dtype.kind in "iu"
    sidecar: dict[str, Any] = {
        "format": fmt, "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "input": {"name": "observation", "shape": ["batch", *obs_space.shape], "dtype": "float32",
                  "meaning": "the env's raw observation" + (_scaling_note(loaded.policy) or "")},
        "output": {"name": "action", "shape": ["batch"] if discrete else ["batch", *act_space.shape],
                   "dtype": str(exported.dtype),
                   "meaning": "action index (argmax of Q)" if discrete else "action in the env's units (within bounds)"},
        "observation_space": space_dict(obs_space), "action_space": space_dict(act_space),
        "env_id": loaded.dataset.info.env_id if loaded.dataset is not None else loaded.env_id,
        "dataset": {"id": loaded.name, "digest": loaded.dataset.digest if loaded.dataset is not None else None},
        "run": {"dir": str(loaded.run_dir), "checkpoint": str(loaded.checkpoint), "step": loaded.step,
                "algo": loaded.config.algo, "score": _summary_score(loaded.run_dir)},
        "config": config,
        "check": {"observations": len(obs), "max_abs_diff_vs_pytorch_policy": max(diff, diff_module)},
        "versions": {"torch": torch.__version__},
    }
    write_text_atomic(path.with_name(path.name + ".json"), json.dumps(sidecar, indent=2, default=str) + "\n")
    return {**sidecar, "path": str(path), "sidecar": str(path.with_name(path.name + ".json"))}


def policy_actions_of(policy: Any, obs: Any) -> np.ndarray:
    """The run's TensorDict policy in deterministic mode on an observation batch (a tensor)."""
    import torch
    from tensordict import TensorDict
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        return policy(TensorDict({"observation": obs}, batch_size=[obs.shape[0]]))["action"].numpy()
