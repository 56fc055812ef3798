"""Do offrl's environment and a peer's give the same episodes? One fixed policy, the same seeds, both Pythons.

The peers evaluate in their own virtual environments (d3rlpy 2.8.1 pins gymnasium 1.0; offrl runs a newer
one), so "same env id, seeds and time limit" is a claim about two installs. This script checks it: in each
Python it rolls out a fixed deterministic policy (``tanh(W obs)``, ``W`` drawn from numpy seed 0, scale 0.3)
for episodes reset with seeds ``0..N-1`` in every named env, and compares the returns and lengths.

    python benchmarks/peer_env_check.py --peer-python /tmp/peer-d3rlpy/bin/python \
        [--envs Walker2d-v5,Hopper-v5,HalfCheetah-v5,Pendulum-v1] [--episodes 3]

Prints one line per env and episode, then ``same`` or ``DIFFERENT``; exit 0 when every episode agrees to
1e-6, 1 when one differs, 2 on bad input (one line).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

_ROLLOUT = r"""
import json, sys
import numpy as np, gymnasium as gym
envs, episodes = sys.argv[1].split(","), int(sys.argv[2])
out = {"gymnasium": gym.__version__, "episodes": []}
for env_id in envs:
    env = gym.make(env_id)
    n_act, n_obs = env.action_space.shape[0], env.observation_space.shape[0]
    w = (np.random.default_rng(0).standard_normal((n_act, n_obs)) * 0.3).astype(np.float32)
    low, high = env.action_space.low, env.action_space.high
    for i in range(episodes):
        obs, _ = env.reset(seed=i)
        total, n, done = 0.0, 0, False
        while not done:
            a = low + (np.tanh(w @ np.asarray(obs, dtype=np.float32)) + 1) * (high - low) / 2
            obs, r, term, trunc, _ = env.step(a.astype(np.float32))
            total, n, done = total + float(r), n + 1, bool(term or trunc)
        out["episodes"].append([env_id, i, total, n])
    env.close()
print(json.dumps(out))
"""


def rollouts(python: str, envs: list[str], episodes: int) -> dict:
    """The fixed policy's episodes in ``python``'s gymnasium (raises RuntimeError with its last stderr line)."""
    proc = subprocess.run([python, "-c", _ROLLOUT, ",".join(envs), str(episodes)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{python}: the rollout failed ({last})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(ours: dict, peer: dict, tol: float = 1e-6) -> tuple[list[str], bool]:
    """Lines ``env episode: return (length) here / there`` and whether every episode agrees."""
    lines, same = [f"gymnasium {ours['gymnasium']} (here) / {peer['gymnasium']} (peer)"], True
    for (env_id, i, r1, n1), (_, _, r2, n2) in zip(ours["episodes"], peer["episodes"], strict=True):
        ok = n1 == n2 and abs(r1 - r2) <= tol * max(1.0, abs(r1))
        same &= ok
        lines.append(f"{env_id} episode {i}: {r1:.6f} ({n1} steps) / {r2:.6f} ({n2} steps){'' if ok else '  <-'}")
    return lines, same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", required=True, help="the peer's Python (its own gymnasium)")
    parser.add_argument("--envs", default="Walker2d-v5,Hopper-v5,HalfCheetah-v5,Pendulum-v1")
    parser.add_argument("--episodes", type=int, default=3)
    args = parser.parse_args(argv)
    if args.episodes < 1:
        print(f"peer_env_check: --episodes {args.episodes}: must be at least 1", file=sys.stderr)
        return 2
    if not Path(args.peer_python).is_file():
        print(f"peer_env_check: --peer-python {args.peer_python}: no such file; pass the peer's Python "
              "(e.g. /tmp/peer-d3rlpy/bin/python)", file=sys.stderr)
        return 2
    envs = [e for e in args.envs.split(",") if e]
    try:
        ours = rollouts(sys.executable, envs, args.episodes)
        peer = rollouts(args.peer_python, envs, args.episodes)
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        print(f"peer_env_check: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    lines, same = compare(ours, peer)
    print("\n".join(lines))
    print("same" if same else "DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
