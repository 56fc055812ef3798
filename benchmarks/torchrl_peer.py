"""A plain torchrl training loop on one Minari dataset: the torchrl column of ``compare_peers.py --end-to-end``.

The loop of torchrl's sota-implementations (``cql/cql_offline.py``, ``discrete_cql``, ``dqn``) and of
``../shared/peers/bench_torchrl_plain.py``: a ``TensorDictReplayBuffer`` on ``LazyMemmapStorage`` filled from
the dataset, torchrl's ``CQLLoss`` / ``DiscreteCQLLoss`` / ``DQNLoss``, grouped Adam, ``SoftUpdate`` or
``HardUpdate``; networks, learning rates, discount, batch and penalty from the offrl config the comparison
resolved (``--config``, JSON), so all three libraries do the same work. No evaluation. Prints one JSON line:
``updates_per_s`` over every step of the loop (sample + loss + backward + optimizer + target update), as
offrl's summary.json and the d3rlpy peer count them. Needs torch, torchrl, tensordict, h5py; not offrl.

    python benchmarks/torchrl_peer.py --dataset ~/.minari/datasets/offrl/hopper/medium-v0 --algo cql \\
        --config cfg.json --steps 300 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from d3rlpy_peer import read_minari  # noqa: E402  (same folder; plain h5py reading)


def transitions(path: Path, discrete: bool) -> dict[str, np.ndarray]:
    """Every transition of the dataset: obs, action, reward, next obs, terminated (truncations keep their
    true next observation, as offrl and the d3rlpy peer do)."""
    episodes, _ = read_minari(path)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "action", "reward", "next_obs", "terminated")}
    for ep in episodes:
        n = len(ep["rewards"])
        cols["obs"].append(ep["observations"][:n])
        cols["next_obs"].append(ep["observations"][1:n + 1])
        cols["action"].append(ep["actions"][:n])
        cols["reward"].append(ep["rewards"][:n])
        cols["terminated"].append(np.asarray(ep["terminations"][:n], bool))
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["action"] = out["action"].astype(np.int64 if discrete else np.float32).reshape(len(out["reward"]), -1)
    return out


def build(algo: str, cfg: dict, data: dict[str, np.ndarray], n_actions: int | None):
    """(loss module, optimizer, target updater, total-loss function) configured like offrl's run."""
    from tensordict.nn import TensorDictModule
    from tensordict.nn.distributions import NormalParamExtractor
    from torchrl.data import Bounded, Categorical, Composite, OneHot
    from torchrl.envs.utils import ExplorationType
    from torchrl.modules import MLP, ProbabilisticActor, QValueActor, TanhNormal, ValueOperator
    from torchrl.objectives import CQLLoss, DiscreteCQLLoss, DQNLoss, HardUpdate, SoftUpdate, group_optimizers

    obs_dim = data["obs"].shape[1]
    if algo == "cql":
        c = cfg["cql"]
        act_dim = data["action"].shape[1]
        act = getattr(torch.nn, {"relu": "ReLU", "tanh": "Tanh", "elu": "ELU"}[c["activation"]])
        spec = Bounded(-torch.ones(act_dim), torch.ones(act_dim), (act_dim,))
        actor_net = torch.nn.Sequential(
            MLP(in_features=obs_dim, num_cells=list(c["hidden_sizes"]), out_features=2 * act_dim, activation_class=act),
            NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=c["scale_lb"]))
        actor = ProbabilisticActor(TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
                                   in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal,
                                   distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
                                   default_interaction_type=ExplorationType.RANDOM)
        qvalue = ValueOperator(in_keys=["observation", "action"], out_keys=["state_action_value"],
                               module=MLP(in_features=obs_dim + act_dim, num_cells=list(c["hidden_sizes"]),
                                          out_features=1, activation_class=act))
        loss = CQLLoss(actor, qvalue, loss_function=c["loss_function"], temperature=c["temperature"],
                       min_q_weight=c["min_q_weight"], max_q_backup=c["max_q_backup"],
                       deterministic_backup=c["deterministic_backup"], num_random=c["num_random"],
                       with_lagrange=c["with_lagrange"], lagrange_thresh=c["target_action_gap"])
        loss.make_value_estimator(gamma=c["gamma"])
        groups = [torch.optim.Adam(loss.actor_network_params.flatten_keys().values(), lr=c["actor_lr"]),
                  torch.optim.Adam(loss.qvalue_network_params.flatten_keys().values(), lr=c["critic_lr"]),
                  torch.optim.Adam([loss.log_alpha], lr=c["alpha_lr"])]
        keys = ["loss_actor", "loss_qvalue", "loss_cql", "loss_alpha"]
        if c["with_lagrange"]:
            groups.append(torch.optim.Adam([loss.log_alpha_prime], lr=c["alpha_prime_lr"]))
            keys.append("loss_alpha_prime")
        return loss, group_optimizers(*groups), SoftUpdate(loss, tau=c["tau"]), keys
    c = cfg["dqn" if algo == "dqn" else "discrete_cql"]
    act = getattr(torch.nn, {"relu": "ReLU", "tanh": "Tanh", "elu": "ELU"}[c["activation"]])
    aspec = OneHot(n_actions) if algo == "dqn" else Categorical(n_actions)
    qnet = QValueActor(module=MLP(in_features=obs_dim, num_cells=list(c["hidden_sizes"]), out_features=n_actions,
                                  activation_class=act), spec=Composite(action=aspec), in_keys=["observation"])
    if algo == "dqn":
        loss = DQNLoss(value_network=qnet, loss_function=c["loss_function"], delay_value=True,
                       double_dqn=c.get("double_dqn", True))
        keys = ["loss"]
    else:
        loss = DiscreteCQLLoss(qnet, loss_function=c["loss_function"], action_space="categorical", delay_value=True)
        keys = ["loss_qvalue", "loss_cql"]
    loss.make_value_estimator(gamma=c["gamma"])
    if c.get("target_update", "hard") == "hard":
        updater = HardUpdate(loss, value_network_update_interval=c["target_update_interval"])
    else:
        updater = SoftUpdate(loss, tau=c["tau"])
    return loss, torch.optim.Adam(loss.parameters(), lr=c["lr"]), updater, keys


def main(argv: list[str] | None = None) -> int:
    from tensordict import TensorDict
    from torchrl.data import LazyMemmapStorage, TensorDictReplayBuffer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a Minari dataset folder")
    p.add_argument("--algo", required=True, choices=("cql", "discrete-cql", "dqn"))
    p.add_argument("--config", required=True, help="JSON: the offrl config the comparison resolved")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = json.loads(Path(args.config).read_text())
    torch.manual_seed(int(cfg.get("seed", 0)))
    discrete = args.algo != "cql"
    meta = json.loads((Path(args.dataset) / "data" / "metadata.json").read_text())
    n_actions = json.loads(meta["action_space"]).get("n") if discrete else None
    d = transitions(Path(args.dataset), discrete)
    n = len(d["reward"])
    action = torch.as_tensor(d["action"])
    if discrete:
        action = action.reshape(-1)
        if args.algo == "dqn":  # DQNLoss's one-hot action space
            action = torch.nn.functional.one_hot(action, n_actions)
    terminated = torch.as_tensor(d["terminated"]).reshape(n, 1)
    data = TensorDict({"observation": torch.as_tensor(d["obs"], dtype=torch.float32), "action": action,
                       "next": {"observation": torch.as_tensor(d["next_obs"], dtype=torch.float32),
                                "reward": torch.as_tensor(d["reward"], dtype=torch.float32).reshape(n, 1),
                                "done": terminated.clone(), "terminated": terminated}}, batch_size=[n])
    rb = TensorDictReplayBuffer(storage=LazyMemmapStorage(n, scratch_dir=tempfile.mkdtemp()),
                                batch_size=int(cfg["batch_size"]))
    rb.extend(data)
    loss_module, optimizer, updater, keys = build(args.algo, cfg, d, n_actions)
    with torch.no_grad():  # materialize lazy modules
        loss_module(rb.sample())
    optimizer.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(args.steps):
        values = loss_module(rb.sample())
        sum(values[k] for k in keys).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        updater.step()
    seconds = time.perf_counter() - t0
    import torchrl

    print(json.dumps({"peer": f"torchrl plain loop {torchrl.__version__}", "algo": args.algo, "steps": args.steps,
                      "threads": torch.get_num_threads(), "updates_per_s": args.steps / seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
