"""d3rlpy's Fitted Q Evaluation on policies exported by offrl: the peer column of `benchmarks/ope_trust.py`.

Runs in the d3rlpy peer's own virtual environment (d3rlpy, torch, numpy; no offrl). Input: an ``.npz`` with
the evaluation episodes (``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts`` per step,
episodes back to back) and TorchScript policies written by ``offrl export --format torchscript`` (an
observation batch -> actions in the env's units; discrete: the action index). For each policy, d3rlpy's
``FQE`` (continuous) or ``DiscreteFQE`` (discrete) is fitted with its default config (``FQEConfig``: its
default encoder, lr 1e-4, batch 100, target copied every 100 steps; ``--lr`` and ``--target-update-interval``
change the last two) for ``--steps`` gradient steps, with
``gamma`` from the run, and the estimate is the mean of Q(s0, pi(s0)) over the episodes' first states
(what d3rlpy's ``InitialStateValueEstimationEvaluator`` reports).

    /tmp/peer-d3rlpy/bin/python benchmarks/d3rlpy_fqe_peer.py --data eps.npz --gamma 0.99 --steps 3000 \\
        --discrete --policies step_250.pt step_500.pt --out d3rlpy_fqe.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


class _TargetImpl:
    """What d3rlpy's FQE reads from the evaluated algorithm: ``predict_best_action`` on a torch batch."""

    def __init__(self, policy, discrete: bool) -> None:
        self.policy, self.discrete = policy, discrete

    def predict_best_action(self, x):
        import torch

        with torch.no_grad():
            action = self.policy(x.float())
        return action.long().reshape(-1) if self.discrete else action.float()


class _Target:
    """A stand-in for a trained d3rlpy algorithm: ``impl`` for FQE's updates, ``predict`` for evaluation."""

    def __init__(self, policy, discrete: bool) -> None:
        self.impl = _TargetImpl(policy, discrete)

    def predict(self, x: np.ndarray) -> np.ndarray:
        import torch

        return self.impl.predict_best_action(torch.as_tensor(x)).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--policies", nargs="+", required=True)
    p.add_argument("--gamma", type=float, required=True)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--discrete", action="store_true")
    p.add_argument("--target-update-interval", type=int, default=None,
                   help="FQEConfig.target_update_interval (default: d3rlpy's, 100)")
    p.add_argument("--lr", type=float, default=None, help="FQEConfig.learning_rate (default: d3rlpy's, 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import d3rlpy
    import torch

    torch.set_num_threads(1)
    data = np.load(args.data)
    actions = data["actions"].astype(np.int64 if args.discrete else np.float32)
    dataset = d3rlpy.dataset.MDPDataset(
        observations=data["observations"].astype(np.float32), actions=actions,
        rewards=data["rewards"].astype(np.float32), terminals=data["terminals"].astype(np.float32),
        timeouts=data["timeouts"].astype(np.float32),
        action_space=d3rlpy.constants.ActionSpace.DISCRETE if args.discrete else d3rlpy.constants.ActionSpace.CONTINUOUS,
        action_size=int(data["n_actions"]) if args.discrete else None)
    s0 = np.stack([ep.observations[0] for ep in dataset.episodes]).astype(np.float32)
    results = []
    for path in args.policies:
        d3rlpy.seed(args.seed)
        policy = torch.jit.load(path)
        target = _Target(policy, args.discrete)
        overrides = {k: v for k, v in (("target_update_interval", args.target_update_interval),
                                       ("learning_rate", args.lr)) if v is not None}
        config = d3rlpy.ope.FQEConfig(gamma=args.gamma, **overrides)
        fqe = (d3rlpy.ope.DiscreteFQE if args.discrete else d3rlpy.ope.FQE)(algo=target, config=config, device="cpu:0")
        t0 = time.time()
        fqe.fit(dataset, n_steps=args.steps, n_steps_per_epoch=args.steps, show_progress=False, save_interval=10**9,
                logger_adapter=d3rlpy.logging.NoopAdapterFactory())
        a0 = target.predict(s0)
        value = float(np.mean(fqe.predict_value(s0, a0)))
        results.append({"policy": path, "value": value, "seconds": round(time.time() - t0, 1)})
        print(f"{path}: {value:.3f} ({results[-1]['seconds']} s)", flush=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"d3rlpy": d3rlpy.__version__, "steps": args.steps, "gamma": args.gamma,
                   "config": {"target_update_interval": config.target_update_interval,
                              "learning_rate": config.learning_rate, "batch_size": config.batch_size},
                   "episodes": len(s0), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
