"""Train d3rlpy's CQL / DiscreteCQL / DoubleDQN on one bundled dataset and write an offrl run directory.

The peer rows of the benchmark report (``benchmarks/suite.py``). Runs in the peer's own virtual environment
(d3rlpy, torch, numpy, h5py, gymnasium; no offrl, no pyyaml), so the dataset is read with plain h5py from the
Minari files (``<dataset>/data/main_data.hdf5`` + ``metadata.json``) and the run directory is written by hand
in offrl's format (docs/contracts.md, "Run directory"): ``config.yaml`` (JSON, which is valid YAML),
``metrics.csv`` (``step``, ``phase``, ``wall_time``, ``loss_*``, ``updates_per_s``, ``eval_*``) and
``summary.json``.

Same protocol as offrl: the step budget, batch size, log and eval intervals and the hyperparameters come from
the offrl config the suite resolved (``--config``, a JSON file); evaluation is deterministic
(``predict``), ``eval.episodes`` episodes (the last evaluation: ``eval.final_episodes``), episode ``i`` reset
with ``eval.seed + i`` in the dataset's env, every ``eval.interval`` gradient steps and after the last one; normalized score = 100 (R - ref_min) /
(ref_max - ref_min) with the dataset metadata's references.

    /tmp/peer-d3rlpy/bin/python benchmarks/d3rlpy_peer.py --dataset datasets/offrl/cartpole/medium-v0 \\
        --algo discrete-cql --config cfg.json --out runs/suite --name seed0
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: The run folder's resume point (``--resume``), removed when the run completes.
RESUME_DIR = "resume"
#: offrl algorithm -> the run directory's algo name for the peer.
PEER_ALGOS = {"cql": "d3rlpy-cql", "discrete-cql": "d3rlpy-discrete-cql", "dqn": "d3rlpy-dqn"}
#: d3rlpy update() keys -> offrl metric names (d3rlpy's ``temp`` is SAC's alpha, its ``alpha`` CQL's alpha').
RENAME = {"temp": "alpha", "alpha": "alpha_prime", "loss": "loss"}


def this_machine() -> str:
    """``cpu model (isa flags)`` as offrl's runs record it: offrl/hardware.py loaded by path (this script runs
    in d3rlpy's environment, where offrl and its dependencies are not installed)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("offrl_hardware", Path(__file__).resolve().parents[1] / "offrl"
                                                  / "hardware.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.machine()


def read_minari(path: Path) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Episodes (observations T+1, actions, rewards, terminations, truncations) and metadata.json."""
    data = path / "data" if (path / "data").is_dir() else path
    meta = json.loads((data / "metadata.json").read_text())
    import h5py

    episodes = []
    with h5py.File(data / "main_data.hdf5", "r") as f:
        names = sorted((k for k in f if k.startswith("episode_")), key=lambda k: int(k.split("_")[1]))
        for name in names:
            g = f[name]
            episodes.append({k: np.asarray(g[k]) for k in ("observations", "actions", "rewards",
                                                            "terminations", "truncations")})
    return episodes, meta


def build_replay_buffer(episodes: list[dict[str, np.ndarray]], discrete: bool, n_actions: int | None) -> Any:
    """A d3rlpy ReplayBuffer holding every transition with its true next observation.

    d3rlpy's transition picker reads ``observations[t + 1]`` as the next observation and counts
    ``size - 1`` transitions in an episode that did not terminate, so a truncated episode keeps its final
    observation (T + 1 rows) with a padding action and reward; a terminated one keeps T rows and gets a zero
    next observation with ``terminal = 1``, as in offrl.
    """
    import d3rlpy

    built = []
    for ep in episodes:
        obs = ep["observations"].astype(np.float32)
        act = ep["actions"].astype(np.int64 if discrete else np.float32)
        act = act.reshape(len(act), -1)
        rew = ep["rewards"].astype(np.float32).reshape(-1, 1)
        terminated = bool(ep["terminations"][-1])
        if terminated:
            built.append(d3rlpy.dataset.Episode(obs[:-1], act, rew, True))
        else:
            built.append(d3rlpy.dataset.Episode(obs, np.concatenate([act, np.zeros_like(act[:1])]),
                                                np.concatenate([rew, np.zeros_like(rew[:1])]), False))
    kwargs: dict[str, Any] = {}
    if discrete:
        kwargs = {"action_space": d3rlpy.ActionSpace.DISCRETE, "action_size": n_actions}
    else:
        kwargs = {"action_space": d3rlpy.ActionSpace.CONTINUOUS, "action_size": built[0].actions.shape[1]}
    return d3rlpy.dataset.ReplayBuffer(d3rlpy.dataset.InfiniteBuffer(), episodes=built, **kwargs)


def make_agent(algo: str, cfg: dict[str, Any], action_space: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """d3rlpy's algorithm configured like offrl's (same nets, learning rates, discount, penalty weight)."""
    import d3rlpy

    batch = int(cfg["batch_size"])
    if algo == "cql":
        c = cfg["cql"]
        enc = d3rlpy.models.VectorEncoderFactory(hidden_units=list(c["hidden_sizes"]), activation=c["activation"])
        low, high = np.asarray(action_space["low"], np.float32), np.asarray(action_space["high"], np.float32)
        kw = dict(
            batch_size=batch, gamma=c["gamma"], tau=c["tau"], n_critics=2,
            actor_learning_rate=c["actor_lr"], critic_learning_rate=c["critic_lr"],
            temp_learning_rate=0.0 if c["fixed_alpha"] else c["alpha_lr"], initial_temperature=c["alpha_init"],
            # offrl's min_q_weight is CQL's alpha; without the Lagrange variant d3rlpy's alpha stays at 1.
            conservative_weight=c["min_q_weight"], initial_alpha=1.0,
            alpha_learning_rate=c["alpha_prime_lr"] if c["with_lagrange"] else 0.0,
            alpha_threshold=c["target_action_gap"], n_action_samples=c["num_random"],
            soft_q_backup=not c["deterministic_backup"], max_q_backup=c["max_q_backup"],
            actor_encoder_factory=enc, critic_encoder_factory=enc,
            action_scaler=d3rlpy.preprocessing.MinMaxActionScaler(minimum=low, maximum=high),
        )
        agent_cfg = d3rlpy.algos.CQLConfig(**kw)
    else:
        c = cfg["discrete_cql" if algo == "discrete-cql" else "dqn"]
        enc = d3rlpy.models.VectorEncoderFactory(hidden_units=list(c["hidden_sizes"]), activation=c["activation"])
        kw = dict(batch_size=batch, gamma=c["gamma"], learning_rate=c["lr"], encoder_factory=enc,
                  target_update_interval=c["target_update_interval"], n_critics=1)
        if algo == "discrete-cql":
            agent_cfg = d3rlpy.algos.DiscreteCQLConfig(alpha=c["min_q_weight"], **kw)
        else:  # offrl's DQN is double DQN by default
            make = d3rlpy.algos.DoubleDQNConfig if c.get("double_dqn", True) else d3rlpy.algos.DQNConfig
            agent_cfg = make(**kw)
    scaler = c.get("observation_scaler", "none")
    if scaler != "none":  # fitted on the dataset before training (main), with the formula of offrl.data.scaling
        make_scaler = {"standard": d3rlpy.preprocessing.StandardObservationScaler,
                       "min_max": d3rlpy.preprocessing.MinMaxObservationScaler}[scaler]
        agent_cfg = dataclasses.replace(agent_cfg, observation_scaler=make_scaler())
    reward = _reward_scaler(c)
    if reward is not None:  # fitted on the dataset before training (main), as offrl.data.reward_scaling does
        agent_cfg = dataclasses.replace(agent_cfg, reward_scaler=reward)
    shown = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in kw.items()
             if not k.endswith("_factory") and k != "action_scaler"}
    shown["hidden_units"] = list(c["hidden_sizes"])
    shown["observation_scaler"] = scaler
    shown["reward_scaler"] = None if reward is None else type(reward).__name__
    return agent_cfg.create(device="cpu:0"), shown


def _reward_scaler(c: dict[str, Any]) -> Any:
    """d3rlpy's reward scaler for offrl's ``reward_scaler`` / ``reward_scale`` / ``reward_bias`` (None: none).
    d3rlpy takes one scaler, so a fitted kind or a multiplier together with a shift has no d3rlpy mirror."""
    import d3rlpy

    kind, scale, bias = c.get("reward_scaler", "none"), float(c.get("reward_scale", 1.0)), float(c.get("reward_bias", 0.0))
    pre = d3rlpy.preprocessing
    if kind == "none":
        if bias == 0.0:
            return None if scale == 1.0 else pre.MultiplyRewardScaler(multiplier=scale)
        if scale == 1.0:
            return pre.ConstantShiftRewardScaler(shift=bias)
    elif bias == 0.0:
        make = {"standard": pre.StandardRewardScaler, "min_max": pre.MinMaxRewardScaler,
                "return_based": pre.ReturnBasedRewardScaler}[kind]
        return make(multiplier=scale)
    raise SystemExit(f"d3rlpy_peer: reward_scaler={kind} with reward_scale={scale:g} and reward_bias={bias:g} has no "
                     "d3rlpy equivalent (d3rlpy takes one reward scaler); drop the shift or the scale")


def make_env(meta: dict[str, Any]) -> Any:
    """The dataset's env from its Minari ``env_spec`` (id and time limit)."""
    import gymnasium as gym

    spec = json.loads(meta["env_spec"]) if isinstance(meta["env_spec"], str) else meta["env_spec"]
    kwargs = dict(spec.get("kwargs") or {})
    return gym.make(spec["id"], max_episode_steps=spec.get("max_episode_steps"), **kwargs)


def evaluate(agent: Any, env: Any, episodes: int, seed: int, discrete: bool) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic rollouts; episode ``i`` reset with ``seed + i``, each run to its own end."""
    returns, lengths = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, n, done = 0.0, 0, False
        while not done:
            action = agent.predict(np.asarray(obs, dtype=np.float32)[None])[0]
            action = int(action) if discrete else np.asarray(action, dtype=np.float32)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, n, done = total + float(reward), n + 1, bool(terminated or truncated)
        returns.append(total)
        lengths.append(n)
    return np.asarray(returns), np.asarray(lengths)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


class CsvRows:
    """metrics.csv with a header that grows: rewritten whole when a new column appears (rows are few)."""

    def __init__(self, path: Path) -> None:
        self.path, self.columns, self.rows = path, ["step", "phase", "wall_time"], []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.columns += [k for k in row if k not in self.columns]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, restval="")
            w.writeheader()
            for r in self.rows:
                w.writerow({k: repr(float(v)) if isinstance(v, (float, np.floating)) else v for k, v in r.items()})
        os.replace(tmp, self.path)


def save_checkpoint(agent: Any, run: Path, step: int, seconds: float, evals: list[dict[str, Any]], rows: CsvRows,
                    resumed: int) -> None:
    """What ``--resume`` continues from: the networks and optimizers (d3rlpy's ``save_model``), the RNG
    streams (numpy's global one samples d3rlpy's batches), the step, the evaluations and the logged rows;
    state.json is written last, so a process killed in between leaves the previous resume point intact."""
    import torch

    folder = run / RESUME_DIR
    folder.mkdir(exist_ok=True)
    tag = f"step{step}"
    agent.save_model(str(folder / f".{tag}.d3.tmp"))
    os.replace(folder / f".{tag}.d3.tmp", folder / f"{tag}.d3")
    torch.save({"numpy": np.random.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()},
               folder / f".{tag}.rng.tmp")
    os.replace(folder / f".{tag}.rng.tmp", folder / f"{tag}.rng")
    _write_json(folder / "state.json", {"step": step, "seconds": seconds, "tag": tag, "evals": evals,
                                        "rows": rows.rows, "columns": rows.columns, "resumed": resumed})
    for old in folder.iterdir():
        if not old.name.startswith((f"{tag}.", "state.json")):
            old.unlink(missing_ok=True)


def load_checkpoint(agent: Any, run: Path, rows: CsvRows) -> tuple[int, float, list[dict[str, Any]]]:
    """Restore ``save_checkpoint``'s state; returns (step, seconds so far, evaluations)."""
    import torch

    folder = run / RESUME_DIR
    state = json.loads((folder / "state.json").read_text())
    agent.load_model(str(folder / f"{state['tag']}.d3"))
    if hasattr(agent, "_grad_step"):
        agent._grad_step = int(state["step"])  # DQN's hard target copies count these
    rng = torch.load(folder / f"{state['tag']}.rng", weights_only=False)
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    rows.columns, rows.rows = list(state["columns"]), []
    for row in state["rows"]:
        rows.add(row)
    return int(state["step"]), float(state["seconds"]), list(state["evals"])


def train(args: argparse.Namespace) -> Path:
    """Train, evaluate and write the run directory; returns its path."""
    import d3rlpy
    import torch

    torch.set_num_threads(args.threads)
    cfg = json.loads(Path(args.config).read_text())
    episodes, meta = read_minari(Path(args.dataset))
    action_space = json.loads(meta["action_space"])
    discrete = action_space["type"] == "Discrete"
    if (args.algo == "cql") == discrete:
        raise SystemExit(f"d3rlpy_peer: --algo {args.algo} does not fit the {action_space['type']} actions of {args.dataset}")
    seed = int(cfg["seed"])
    d3rlpy.seed(seed)
    rb = build_replay_buffer(episodes, discrete, action_space.get("n"))
    agent, hparams = make_agent(args.algo, cfg, action_space)
    # what d3rlpy's fit() does first: fit the scalers not given their statistics (observation, reward), on the
    # data's transitions and episodes; this runner calls update() itself
    from d3rlpy.algos.utility import build_scalers_with_transition_picker
    build_scalers_with_transition_picker(agent, rb)
    agent.build_with_dataset(rb)
    env = make_env(meta)
    ref_min, ref_max = meta.get("ref_min_score"), meta.get("ref_max_score")
    dataset_id = cfg["dataset"]["id"]
    algo = PEER_ALGOS[args.algo]
    run = Path(args.out) / dataset_id.replace("/", "__") / algo / args.name
    state_file = run / RESUME_DIR / "state.json"
    resumed = bool(args.resume) and state_file.is_file()
    run.mkdir(parents=True, exist_ok=args.force or resumed)
    steps, log_every = int(cfg["offline_steps"]), int(cfg["log_interval"])
    ev = cfg["eval"]
    # the last evaluation runs eval.final_episodes episodes, as offrl's evaluator does (the same episodes, seeds
    # eval.seed + i, for both libraries' "last" score)
    final_episodes = max(int(ev["episodes"]), int(ev.get("final_episodes") or 0))
    config = {
        "dataset": {"id": dataset_id, "digest": cfg["dataset"].get("digest"), "path": str(Path(args.dataset).resolve()),
                    "ref_min_score": None, "ref_max_score": None},
        "algo": algo, "seed": seed, "device": "cpu", "offline_steps": steps, "batch_size": int(cfg["batch_size"]),
        "log_interval": log_every, "eval": {"interval": int(ev["interval"]), "episodes": int(ev["episodes"]),
                                            "final_episodes": final_episodes, "seed": int(ev["seed"])},
        "d3rlpy": {"class": type(agent).__name__, **hparams},
        "mirrors_offrl_config": cfg.get("config_hash"),  # the suite reuses a finished run only if this matches
        "versions": {"d3rlpy": d3rlpy.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "command": [sys.executable, *sys.argv], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not resumed:
        (run / "config.yaml").write_text("# d3rlpy peer run (benchmarks/d3rlpy_peer.py); JSON, which is valid YAML\n"
                                         + json.dumps(config, indent=2) + "\n")
    ep_returns = [float(np.sum(e["rewards"])) for e in episodes]
    summary: dict[str, Any] = {
        "status": "running", "algo": algo, "seed": seed, "steps": 0, "target_steps": steps, "updates_per_s": None,
        "wall_time": 0.0, "device": "cpu", "final": None, "best": None,
        "dataset": {"id": dataset_id, "digest": cfg["dataset"].get("digest"), "mean_return": float(np.mean(ep_returns)),
                    "episodes": len(episodes), "transitions": int(sum(len(e["rewards"]) for e in episodes))},
        "ref": {"min": ref_min, "max": ref_max, "source": "dataset metadata" if ref_min is not None else None},
        "peer": {"library": "d3rlpy", "version": d3rlpy.__version__, "class": type(agent).__name__},
    }
    rows = CsvRows(run / "metrics.csv")
    evals: list[dict[str, Any]] = []
    start, before = 0, 0.0  # steps and seconds of the earlier process(es) of a resumed run
    if resumed:
        start, before, evals = load_checkpoint(agent, run, rows)
        summary["resumed"] = int(json.loads(state_file.read_text()).get("resumed", 0)) + 1
    machines: list[str] = []  # the CPUs that trained the run, each once (a resumed run may have moved)
    if resumed:
        try:
            machines = json.loads((run / "summary.json").read_text()).get("machines") or []
        except (OSError, ValueError, AttributeError):
            machines = []
    here = this_machine()
    summary["machines"] = [*machines, here] if here not in machines else machines
    _write_json(run / "summary.json", summary)
    t0 = time.perf_counter() - before
    acc: dict[str, list[float]] = {}
    last_log_t, last_log_step = time.perf_counter(), start
    step = start
    try:
        for step in range(start + 1, steps + 1):
            metrics = agent.update(rb.sample_transition_batch(int(cfg["batch_size"])))
            for k, v in metrics.items():
                acc.setdefault(k, []).append(float(v))
            row: dict[str, Any] = {}
            if step % log_every == 0 or step == steps:
                now = time.perf_counter()
                for k, vs in acc.items():
                    name = RENAME.get(k) or (f"loss_{k[:-5]}" if k.endswith("_loss") else k)
                    row[name] = float(np.mean(vs))
                row["updates_per_s"] = (step - last_log_step) / max(now - last_log_t, 1e-9)
                acc, last_log_t, last_log_step = {}, now, step
            if ev["interval"] and (step % int(ev["interval"]) == 0 or step == steps):
                n_episodes = final_episodes if step == steps else int(ev["episodes"])
                returns, lengths = evaluate(agent, env, n_episodes, int(ev["seed"]), discrete)
                mean = float(returns.mean())
                norm = (100.0 * (mean - ref_min) / (ref_max - ref_min)) if ref_min is not None else math.nan
                row.update(eval_return_mean=mean, eval_return_std=float(returns.std()),
                           eval_length_mean=float(lengths.mean()), eval_normalized_score=norm,
                           eval_episodes=float(n_episodes))
                evals.append({"step": step, "return_mean": mean, "return_std": float(returns.std()),
                              "length_mean": float(lengths.mean()), "normalized_score": _num(norm),
                              "episodes": n_episodes,
                              # per episode (seeded ev.seed, ev.seed + 1, ...): the last evaluation's first
                              # eval.episodes of them compare with a run whose last one ran fewer
                              "episode_returns": [round(float(r), 4) for r in returns]})
                last_log_t = time.perf_counter()  # the next row's updates/s counts updates only
            if row:
                rows.add({"step": step, "phase": "offline", "wall_time": time.perf_counter() - t0, **row})
            if "eval_return_mean" in row and step < steps:  # a resume point at every evaluation
                save_checkpoint(agent, run, step, time.perf_counter() - t0, evals, rows, summary.get("resumed", 0))
                last_log_t = time.perf_counter()
        summary["status"] = "completed"
    except KeyboardInterrupt:
        summary["status"] = "stopped"
        raise
    except Exception:
        summary["status"] = "crashed"
        raise
    finally:
        seconds = time.perf_counter() - t0
        summary.update(steps=step, wall_time=seconds, updates_per_s=step / seconds if seconds > 0 and step else None)
        if summary["status"] == "completed":
            shutil.rmtree(run / RESUME_DIR, ignore_errors=True)
        if evals:
            summary["final"] = evals[-1]
            summary["best"] = max(evals, key=lambda e: e["return_mean"])
        _write_json(run / "summary.json", summary)
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a Minari dataset folder (<name>-vN, holding data/)")
    p.add_argument("--algo", required=True, choices=sorted(PEER_ALGOS), help="offrl algorithm to mirror")
    p.add_argument("--config", required=True, help="JSON file: the offrl config resolved for this run")
    p.add_argument("--out", required=True, help="runs root; the run goes to <out>/<dataset slug>/d3rlpy-<algo>/<name>")
    p.add_argument("--name", default=None, help="run folder name (default seed<S>)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run folder's last resume point (saved at every evaluation), if it has one")
    args = p.parse_args(argv)
    if args.name is None:
        args.name = f"seed{json.loads(Path(args.config).read_text())['seed']}"
    run = train(args)
    final = json.loads((run / "summary.json").read_text())["final"] or {}
    print(json.dumps({"run": str(run), **final}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
