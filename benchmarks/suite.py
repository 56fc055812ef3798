"""The benchmark suite behind ``reports/``: every bundled dataset x its algorithms x seeds, one command.

    python benchmarks/suite.py --out reports/ --seeds 3 --d3rlpy-python /tmp/peer-d3rlpy/bin/python

For each bundled dataset (``offrl datasets list``) it trains the algorithms that fit its actions (CQL for
continuous actions; discrete CQL and DQN for discrete ones) with ``offrl.train`` and the dataset's bundled
config (``--steps N`` or ``--steps cartpole=N,pendulum=M`` overrides the step budget), ``--seeds`` seeds
each, ``--jobs`` runs at a time (one process per run, one torch thread each). Each dataset x algorithm
config is resolved once at the start and pinned (``<runs>/.configs/``), so all its seeds train on the same
values. Where d3rlpy can be imported (in this interpreter, or in the one named by ``--d3rlpy-python``), the
same datasets, seeds, step budget, batch size, networks and evaluation protocol also train d3rlpy's CQL /
DiscreteCQL / DoubleDQN through ``benchmarks/d3rlpy_peer.py``, which writes offrl run directories, so they
appear in the report as peer rows (``d3rlpy-cql``, ...).

Runs go to ``--runs`` (scratch, default ``runs/suite``; a completed run of the same config is reused unless
``--fresh``). The report goes to ``--out``: ``index.html`` + PNGs (``offrl.report.build_report``),
``summary.csv``, ``summary.md`` (the table) and ``README.md`` (command, machine, budget, wall time, table);
``--report-only --note TEXT`` rebuilds them from the runs without training, keeping the training call's facts and
every note given before (both in ``<runs>/.suite.json``) and adding TEXT.
A study longer than one session grows in steps: ``--first-seed K --seeds N`` trains seeds K .. K+N-1 beside the
runs already in ``--runs`` (copied back from a report's ``runs/`` folder, where ``benchmarks/collect_runs.py`` put
them), and ``--completed-only`` publishes what has finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offrl.bench import cpu_model

REPO = Path(__file__).resolve().parents[1]
PEER_SCRIPT = Path(__file__).resolve().with_name("d3rlpy_peer.py")
CONTINUOUS_ALGOS, DISCRETE_ALGOS = ("cql",), ("discrete-cql", "dqn")
PEER_ALGOS = {"cql": "d3rlpy-cql", "discrete-cql": "d3rlpy-discrete-cql", "dqn": "d3rlpy-dqn"}
SECTIONS = {"cql": "cql", "discrete-cql": "discrete_cql", "dqn": "dqn"}  # algo -> its config section


@dataclass(frozen=True)
class Job:
    """One training run: offrl's (``peer=False``) or d3rlpy's mirror of it."""

    dataset: str
    algo: str
    seed: int
    peer: bool = False

    @property
    def label(self) -> str:
        return f"{self.dataset} {PEER_ALGOS[self.algo] if self.peer else self.algo} seed {self.seed}"

    def run_dir(self, runs: Path) -> Path:
        algo = PEER_ALGOS[self.algo] if self.peer else self.algo
        return runs / self.dataset.replace("/", "__") / algo / f"seed{self.seed}"

    def cost(self) -> float:
        """Rough relative cost, to start the longest runs first."""
        return (10.0 if self.algo == "cql" else 1.0) * (0.8 if self.peer else 1.0)


def peer_baseline(jobs: Sequence[Job]) -> str | None:
    """The report's baseline: d3rlpy's run of the one offrl algorithm the suite trained beside it, so that its
    differences read offrl minus d3rlpy (as ``settled.py``'s do); None (the report's default) otherwise."""
    ours = {job.algo for job in jobs if not job.peer}
    theirs = {job.algo for job in jobs if job.peer}
    return PEER_ALGOS[next(iter(ours))] if len(ours) == 1 and ours == theirs else None


def _fail(message: str) -> None:
    """A user mistake: one line on stderr, exit status 2."""
    print(f"suite: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def find_d3rlpy(python: str | None, no_peers: bool) -> tuple[str | None, str]:
    """The interpreter that can import d3rlpy (``--d3rlpy-python``, else this one) and its version."""
    if no_peers:
        return None, "skipped (--no-peers)"
    if python is None:
        if importlib.util.find_spec("d3rlpy") is None:
            return None, "skipped (d3rlpy not importable here; pass --d3rlpy-python)"
        python = sys.executable
    try:
        out = subprocess.run([python, "-c", "import d3rlpy; print(d3rlpy.__version__)"], capture_output=True,
                             text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        _fail(f"--d3rlpy-python {python}: cannot run it ({err}); give a Python that has d3rlpy, or --no-peers")
    if out.returncode != 0:
        _fail(f"--d3rlpy-python {python}: 'import d3rlpy' failed; pip install 'offrl[bench]' there, or --no-peers")
    return python, out.stdout.strip().splitlines()[-1]


def plan(datasets: Sequence[str], algos: Sequence[str] | None, seeds: int, peers: bool,
         peer_algos: Sequence[str], overrides: dict[str, dict[str, Any]],
         dotlist: Sequence[str] = (), first_seed: int = 0) -> tuple[list[Job], dict[tuple[str, str], dict]]:
    """The jobs and offrl's resolved config of each dataset x algorithm (seed-free).

    The config is resolved once, here, and every seed (and the d3rlpy peer) trains on exactly it, even if
    the bundled YAML changes while the suite runs. Jobs go seed by seed (longest first within a seed), so a
    suite stopped early still has every row with fewer seeds. Seeds are ``first_seed`` ..
    ``first_seed + seeds - 1`` (a later call adds seeds to a study without touching the earlier ones).
    """
    import gymnasium as gym

    from offrl.data import load_dataset
    from offrl.runs import compose_run_config
    from offrl.runs.compose import resolve_dataset_defaults

    jobs: list[Job] = []
    configs: dict[tuple[str, str], dict[str, Any]] = {}
    for ds in datasets:
        data = load_dataset(ds)  # also fills the cache once, before the workers start
        fitting = DISCRETE_ALGOS if isinstance(data.action_space, gym.spaces.Discrete) else CONTINUOUS_ALGOS
        for algo in fitting:
            if algos and algo not in algos:
                continue
            mine = [d for d in dotlist if d.split(".")[0] not in set(SECTIONS.values()) - {SECTIONS[algo]}]
            cfg, _ = compose_run_config(ds, algo, dotlist=mine, **{**overrides.get(ds.split("/")[1], {}), "seed": 0})
            cfg, _ = resolve_dataset_defaults(cfg, data)  # as offrl.train does: the pinned config is what runs
            resolved = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
            resolved.pop("seed")
            for other in (set(SECTIONS.values()) | {"mixing"}) - {SECTIONS[algo]}:  # inactive sections
                resolved.pop(other, None)
            configs[(ds, algo)] = resolved
            for seed in range(first_seed, first_seed + seeds):
                jobs.append(Job(ds, algo, seed))
                if peers and algo in peer_algos:
                    jobs.append(Job(ds, algo, seed, peer=True))
    jobs.sort(key=lambda j: (j.seed, -j.cost()))
    return jobs, configs


def config_hash(config: dict[str, Any]) -> str:
    """Short digest of a resolved config (the peer records it; a run is reused only when it matches)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _same_config(job: Job, run: Path, config: dict[str, Any]) -> bool:
    """The run folder holds a run of exactly this config (for the peer: the config it was given is kept
    beside the runs, is the one the run recorded, and agrees with today's on everything the peer reads)."""
    import yaml

    try:
        saved = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    if job.peer:
        try:
            given = json.loads(_peer_config_file(job, run.parents[2]).read_text())
        except (OSError, ValueError):
            return False
        return (saved.get("mirrors_offrl_config") == given.get("config_hash")
                and _mirrored(job, given) == _mirrored(job, config)
                and _last_episodes(saved) == _last_episodes(config))
    mine = _flat(saved)
    return all(json.dumps(mine.get(k), sort_keys=True) == json.dumps(v, sort_keys=True)
               or (k not in mine and _added_default(k) == v)
               for k, v in _flat(config).items() if k not in OUTCOME_FREE)


#: Config keys that do not change what a run learns (paths, logging, checkpoint cadence, threads: the suite
#: trains on one): a run that differs from the plan only in these is still a run of the plan's config. The
#: dataset's digest is one of them so that a study resumes on another machine, whose regenerated MuJoCo
#: datasets hold other bytes of the same recipe; the report lists the bytes each run read (``provenance``).
OUTCOME_FREE = frozenset({
    "dataset.path", "dataset.cache_dir", "dataset.digest", "progress_bar", "num_threads", "log_interval", "save_trainer_interval",
    "keep_checkpoints", "enable_logging", "log_timings", "log_rewards", "log_observations", "log_actions", "logger",
    "online.scratch_dir",
})


#: Config keys offrl added after runs of a long study had started, with the value that reproduces what those
#: runs did (a run recorded without the key ran that way): by the key's last part.
ADDED_KEYS = {"observation_scaler": "none",  # 2026-12-06: observations were always raw before
              "reward_scaler": "none", "reward_scale": 1.0, "reward_bias": 0.0}  # 2026-12-06: rewards too
_UNSET = object()


def _added_default(key: str) -> Any:
    return ADDED_KEYS.get(key.rsplit(".", 1)[-1], _UNSET)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _last_episodes(config: dict[str, Any]) -> int:
    """Episodes of a run's last evaluation. A peer run recorded before d3rlpy_peer.py ran
    ``eval.final_episodes`` has no such key: its last evaluation ran ``eval.episodes``."""
    ev = config.get("eval") or {}
    return max(int(ev.get("episodes") or 0), int(ev.get("final_episodes") or 0))


def _completed(job: Job, run: Path, config: dict[str, Any]) -> bool:
    """A finished run of exactly this config (an earlier suite's), which ``--fresh`` would retrain."""
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return (summary.get("status") == "completed" and summary.get("steps") == config["offline_steps"]
            and _same_config(job, run, config))


def _resumable(job: Job, run: Path, config: dict[str, Any]) -> bool:
    """A stopped run of exactly this config with a resume point (an interrupted suite)."""
    point = (run / "resume" / "state.json").is_file() if job.peer else any((run / "checkpoints").glob("*"))
    return point and _same_config(job, run, config)


def dataset_folder(name: str) -> Path:
    """The Minari folder of a bundled or generated on-demand dataset (what the d3rlpy peer reads)."""
    from offrl.data.catalog import bundled_path
    from offrl.data.minari import minari_root

    return bundled_path(name) or minari_root() / name


PEER_IGNORES = frozenset({"fused", "orthogonal_init"})  # offrl settings the d3rlpy peer does not read


def _mirrored(job: Job, config: dict[str, Any]) -> str:
    """What d3rlpy_peer.py reads from offrl's config, as a comparable string."""
    ev = config.get("eval") or {}
    keep = {k: config.get(k) for k in ("offline_steps", "batch_size", "log_interval")}
    section = {k: v for k, v in (config.get(SECTIONS[job.algo]) or {}).items()
               if k not in PEER_IGNORES and _added_default(k) != v}  # an added key at its old behaviour: absent
    keep.update(dataset=(config.get("dataset") or {}).get("id"), section=section,
                eval={k: ev.get(k) for k in ("interval", "episodes", "final_episodes", "seed")})
    return json.dumps(keep, sort_keys=True)


def _peer_config_file(job: Job, runs: Path) -> Path:
    return runs / ".peer-configs" / f"{job.dataset.replace('/', '__')}.{job.algo}.seed{job.seed}.json"


def _pinned(runs: Path, dataset: str, algo: str) -> Path:
    return runs / ".configs" / f"{dataset.replace('/', '__')}.{algo}.yaml"


def pin_configs(runs: Path, configs: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Write each resolved config once, before any job starts (the workers read them; a reused run's is
    written too, so ``<runs>/.configs`` always shows what this suite's runs used)."""
    import yaml

    from offrl.fsio import write_text_atomic

    for (dataset, algo), config in configs.items():
        path = _pinned(runs, dataset, algo)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, yaml.safe_dump(config, sort_keys=False), fsync=False)


def run_job(job: Job, runs: Path, args: argparse.Namespace, config: dict[str, Any]) -> tuple[Job, float, str]:
    """Run one job in its own process (one torch thread); returns (job, seconds, error or '')."""
    run = job.run_dir(runs)
    if not args.fresh and _completed(job, run, config):
        return job, 0.0, "reused"
    resume = not args.fresh and _resumable(job, run, config)
    if run.exists() and not resume:
        shutil.rmtree(run)  # a partial run of another config (or --fresh): start it over
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "RL_WARNINGS": "False"}
    if job.peer:
        cfg_file = _peer_config_file(job, runs)
        cfg_file.parent.mkdir(parents=True, exist_ok=True)
        cfg_file.write_text(json.dumps({**config, "seed": job.seed, "config_hash": config_hash(config)}, indent=1))
        cmd = [args.d3rlpy_python, str(PEER_SCRIPT), "--dataset", str(dataset_folder(job.dataset)), "--algo", job.algo,
               "--config", str(cfg_file), "--out", str(runs), "--name", f"seed{job.seed}", "--threads", "1"]
        if resume:
            cmd.append("--resume")
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one",
               json.dumps({"dataset": job.dataset, "algo": job.algo, "seed": job.seed, "runs": str(runs),
                           "config": str(_pinned(runs, job.dataset, job.algo)), "resume": str(run) if resume else None})]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or [f"exit {proc.returncode}"]
        (runs / ".logs").mkdir(parents=True, exist_ok=True)
        log = runs / ".logs" / f"{job.label.replace('/', '__').replace(' ', '.')}.log"
        log.write_text(proc.stdout + "\n" + proc.stderr)
        return job, seconds, f"{lines[-1]} (log: {log})"
    return job, seconds, ""


def train_one(spec: dict[str, Any]) -> None:
    """Worker side of ``--one``: one offrl run through the public API, torch on one thread."""
    import torch

    torch.set_num_threads(1)
    from offrl import train
    if spec.get("resume"):
        train(resume=spec["resume"], progress=False)
        return
    train(spec["dataset"], spec["algo"], config=spec["config"], out=spec["runs"], name=f"seed{spec['seed']}",
          seed=spec["seed"], progress=False)


def parse_steps(text: str | None) -> dict[str, int]:
    """``--steps``: ``2000`` -> {"*": 2000}; ``cartpole=2000,pendulum=2500`` -> per env."""
    if not text:
        return {}
    out: dict[str, int] = {}
    for part in text.split(","):
        env, _, n = part.rpartition("=")
        try:
            value = int(n)
        except ValueError:
            value = 0
        if value < 1:
            _fail(f"--steps {text}: give a positive number, or env=N pairs like cartpole=2000,pendulum=2500")
        out[env or "*"] = value
    return out


def _fmt(mean: float, low: float, high: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if math.isfinite(low) and math.isfinite(high):
        return f"{mean:.1f} [{low:.1f}, {high:.1f}]"
    return f"{mean:.1f}"


def markdown_table(summary: Any) -> str:
    """The report's summary (one row per dataset x algorithm) as a Markdown table."""
    lines = ["| dataset | algorithm | seeds | steps | last score, mean [95% CI] | last IQM | best score, mean "
             "| behaviour policy | updates/s |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        unit = "" if r["unit"] == "eval_normalized_score" else " (raw return)"
        behaviour = r["behaviour_normalized"] if math.isfinite(r["behaviour_normalized"]) else r["behaviour_return"]
        ups = f"{r['updates_per_s']:.0f}" if math.isfinite(r["updates_per_s"]) else "n/a"
        lines.append(
            f"| {r['dataset']} | {r['group']} | {r['seeds']} | {r['steps']} | "
            f"{_fmt(r['last_mean'], r['last_low'], r['last_high'])}{unit} | {r['last_iqm']:.1f} | "
            f"{r['best_mean']:.1f} | {behaviour:.1f} | {ups} |")
    return "\n".join(lines) + "\n"


def provenance(jobs: Sequence[Job], runs: Path) -> str:
    """Which CPUs trained the completed runs and which bytes of each dataset they read: a study resumed across
    machines, or a generated dataset made again on another CPU (MuJoCo rollouts differ in the last bits
    between CPUs), shows here instead of being averaged in silently."""
    from collections import Counter

    from offrl.runs.rundir import read_summary

    machines: Counter[str] = Counter()
    digests: dict[str, Counter[str]] = {}
    seconds: dict[str, list[float]] = {}  # cql, d3rlpy-cql, ... -> each completed run's own wall time
    for job in jobs:
        summary = read_summary(job.run_dir(runs)) if job.run_dir(runs).is_dir() else {}
        if summary.get("status") != "completed":
            continue
        if isinstance(summary.get("wall_time"), int | float):
            seconds.setdefault(job.run_dir(runs).parent.name, []).append(float(summary["wall_time"]))
        for machine in summary.get("machines") or ["not recorded"]:
            machines[machine] += 1
        digest = str((summary.get("dataset") or {}).get("digest") or "not recorded")[:12]
        digests.setdefault(job.dataset, Counter())[digest] += 1
    if not machines:
        return ""
    lines = ["- Trained on: " + "; ".join(f"{m}: {n} run{'s' * (n != 1)}" for m, n in sorted(machines.items()))]
    lines += [f"- Dataset bytes: {ds}: " + ", ".join(f"{d} ({n} run{'s' * (n != 1)})" for d, n in sorted(c.items()))
              + ("" if len(c) == 1 else " (made more than once, with different bytes: the rows mix them)")
              for ds, c in sorted(digests.items())]
    if seconds:  # what the runs cost, whatever this call reused: a rebuild's own wall time is ~0
        lines.append("- Training time (each completed run's own wall time, evaluations included): " + "; ".join(
            f"{algo} {_duration(sum(s))} over {len(s)} run{'s' * (len(s) != 1)}, median "
            f"{_duration(statistics.median(s))} a run" for algo, s in sorted(seconds.items())))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """``2.0 h``, ``45 min``, ``1.5 min``, ``12 s``: three significant figures at most, in the largest unit."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.{0 if seconds >= 600 else 1}f} min"
    return f"{seconds:.0f} s"


def aggregate_markdown(aggregate: Any) -> str:
    """Across datasets per algorithm: IQM and mean of the last normalized score with stratified CIs."""
    if aggregate is None or not len(aggregate):
        return ""
    lines = ["| algorithm | datasets | runs | IQM [95% CI] | mean [95% CI] |", "|---|---|---|---|---|"]
    for _, r in aggregate.iterrows():
        lines.append(f"| {r['group']} | {r['datasets']} | {r['runs']} | {_fmt(r['iqm'], r['iqm_low'], r['iqm_high'])} | "
                     f"{_fmt(r['mean'], r['mean_low'], r['mean_high'])} |")
    return "\n".join(lines) + "\n"


def write_readme(out: Path, *, command: str, table: str, aggregate: str, facts: dict[str, Any]) -> Path:
    """``<out>/README.md``: how the report was made and its table."""
    peers = facts["peers"]
    text = f"""# offrl benchmark report

{facts['scope']}, {facts['seeds']}, trained with `offrl.train` on the dataset's bundled config (offrl's
general defaults where it has none; `--steps` / `--set` overrides in the command below). Open [index.html](index.html) for the curves (normalized
score, diagnostics, losses, alpha) and the per-run table; `summary.csv` holds the table below.

## Command

```
{command}
```

## Machine and budget

- Machine of the training call: {facts['machine']}, shared with other work (load average {facts['load_start']}
  at the start, {facts['load_end']} at the end); no GPU.
- Software: {facts['versions']}; d3rlpy peer: {peers}.
- Budget: {facts['budget']}; {facts['jobs']} runs at a time, one process and one torch thread each.
- Evaluation: deterministic policy, {facts['eval']}, in the dataset's env; episode *i* reset with seed
  {facts['eval_seed']} + *i*, the same for every run and every evaluation. Normalized score = 100 x (R - ref_min) / (ref_max -
  ref_min), references from each dataset's metadata (offrl's Pendulum and CartPole datasets: a uniformly random
  policy = 0, the scripted expert = 100; its MuJoCo datasets: D4RL's random and expert scores of the environment).
- Runs: {facts['n_runs']} ({facts['n_failed']} failed, {facts['n_reused']} reused from an earlier suite); the training
  call's wall time {facts['wall']}, started {facts['started']}.
{facts['provenance']}

## Results

Last = the final evaluation, best = the best evaluation of each run; mean over seeds with a {facts['interval']},
IQM = interquartile mean. Behaviour policy = the dataset's own mean
episode return, normalized the same way.

{table}
Across datasets (last normalized score; rliable's stratified bootstrap, seeds resampled within each dataset):

{aggregate}
{facts['settled']}
## Notes

{facts['notes']}
"""
    path = out / "README.md"
    path.write_text(text)
    return path


PEER_NOTES = """- Peer rows (`d3rlpy-*`) are d3rlpy 2.8.1 configured like offrl's bundled config: same hidden sizes,
  learning rates, discount, batch size, step budget, target updates and penalty weight (d3rlpy CQL:
  `conservative_weight` = offrl `min_q_weight`, fixed alpha 1, `n_action_samples` = `num_random`, 2 critics,
  actions scaled to [-1, 1]). Both penalties importance-sample the same three sources (uniform, pi(s), pi(s')
  scored at s; d3rlpy 2.8.1 `cql_impl.py`). Differences that remain: d3rlpy bootstraps its deterministic backup
  from the mean action tanh(mu(s')), offrl from `cql.backup_action` (the row's config says which); d3rlpy's
  discrete Q-learning uses the Huber loss where offrl uses MSE; offrl initialises CQL's layers with torch's
  default as d3rlpy does unless `cql.orthogonal_init` is true (CORL's orthogonal init, offrl's default until
  2026-12-06; the row's config says which); the actor's std is a softplus head bounded below (offrl's default,
  torchrl's) or a clamped log-std head (d3rlpy; offrl with `cql.actor_std=exp`); d3rlpy steps its critics before
  its actor, offrl steps both from one backward unless `cql.update_order` is `critic_first`; offrl holds `eval.heldout_fraction` of the episodes out of training for its
  TD-error diagnostic, d3rlpy trains on all of them; d3rlpy reads the Minari files through
  `benchmarks/d3rlpy_peer.py` (plain
  h5py) and evaluates with gymnasium 1.0 in its own environment (same env ids, seeds and time limits).
- updates/s counts training updates per second over the whole run, evaluations included, measured with
  other runs (and other people's jobs) sharing the CPU: compare it within this table only."""


def settled_section(run_dirs: Sequence[Path], runs: Path, last_episodes: int = 0, interval: str = "t") -> str:
    """The README's "Did the curves settle?" section (benchmarks/settled.py's tables over the completed runs,
    each last evaluation scored on its first ``last_episodes`` episodes when that is not 0), or nothing when no
    run has completed."""
    spec = importlib.util.spec_from_file_location("offrl_bench_settled", Path(__file__).with_name("settled.py"))
    assert spec is not None and spec.loader is not None
    settled = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(settled)
    lines, _ = settled.tables(list(run_dirs), last_episodes, interval)
    if not lines:
        return ""
    episodes = ("evaluation runs eval.final_episodes, the others eval.episodes, so both measures include that change of "
                "episodes." if not last_episodes else
                f"evaluation is scored on its episodes 0-{last_episodes - 1} only (`--last-episodes {last_episodes}`: "
                "like for like where the libraries' last evaluations ran different episode counts; a run with no "
                "record of those episodes is left out), so both measures compare the same episodes throughout.")
    return "\n".join([
        "## Did the curves settle, and which library ends higher?", "",
        f"`python benchmarks/settled.py {runs}{f' --last-episodes {last_episodes}' if last_episodes else ''}"
        f"{' --interval bootstrap' if interval == 'bootstrap' else ''}` "
        "(completed runs only): per run, the last evaluation, the mean of its last 5 evaluations,",
        "the change from the evaluation at two thirds of the run to the last, and the trend over the last third (a",
        "least-squares line through every evaluation from two thirds on, times the steps it spans); "
        + ("Student-t 95% CIs (Welch's for the differences)" if interval == "t" else "bootstrap 95% CIs"),
        "over seeds; \"settled\" = the trend's CI within +-5 points (a single seed has no CI: \"no\"). The last",
        episodes, "Then offrl minus d3rlpy: a library is",
        "called higher only where the CI of the difference excludes 0"
        + (" (Welch's interval holds its coverage over a few seeds)." if interval == "t" else
           " (with a few seeds a side, a bootstrap CI is narrower than the seeds' real spread: a \"95%\" one over 5 "
           "seeds holds the mean about 84% of the time, benchmarks/ci_coverage.py)."), "", *lines, ""])


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="reports", help="report folder (default reports/)")
    p.add_argument("--runs", default=None, help="scratch folder for the run directories (default runs/suite)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per dataset x algorithm (default 3)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="train seeds FIRST_SEED .. FIRST_SEED + SEEDS - 1 (default 0): add seeds to a study in --runs; "
                        "the report still covers every run there")
    p.add_argument("--steps", default=None,
                   help="gradient steps per run: N for every dataset, or per env like cartpole=2000,pendulum=2500 "
                        "(default: the bundled config's)")
    p.add_argument("--eval-episodes", type=int, default=None, help="episodes per evaluation (default: bundled config)")
    p.add_argument("--datasets", default=None, help="comma-separated dataset ids (default: every bundled dataset)")
    p.add_argument("--algos", default=None, help="comma-separated: cql, discrete-cql, dqn (default: all that fit)")
    p.add_argument("--set", dest="dotlist", action="append", default=[], metavar="KEY=VALUE",
                   help="override an offrl config key for every run (repeatable; an algorithm's section applies "
                        "to that algorithm only), e.g. --set cql.backup_action=mean for an ablation row")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    p.add_argument("--interval", choices=("bootstrap", "t"), default="t",
                   help="intervals over seeds: Student-t / Welch (default) or rliable's percentile bootstrap (too "
                   "narrow over a few seeds, benchmarks/ci_coverage.py)")
    p.add_argument("--d3rlpy-python", default=None, help="a Python with d3rlpy for the peer rows (default: this one)")
    p.add_argument("--peer-algos", default="cql,discrete-cql,dqn", help="algorithms d3rlpy mirrors (default all)")
    p.add_argument("--no-peers", action="store_true", help="skip the d3rlpy peer rows")
    p.add_argument("--fresh", action="store_true", help="retrain runs that already completed in --runs")
    p.add_argument("--note", action="append", default=[], help="a line for the README's notes (repeatable)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild the report from the runs already in --runs")
    p.add_argument("--completed-only", action="store_true",
                   help="report the completed runs only (a study still training in --runs: publish what has "
                        "finished; the notes say how many of the planned runs that is)")
    p.add_argument("--last-episodes", type=int, default=0, metavar="K",
                   help="in the settled / offrl-minus-d3rlpy section, score each run's last evaluation on its "
                        "episodes 0..K-1 only (benchmarks/settled.py --last-episodes; default 0: all of them)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # worker: one offrl run (JSON spec)
    args = p.parse_args(argv)
    if args.one:
        train_one(json.loads(args.one))
        return 0

    from offrl.data.catalog import list_bundled
    from offrl.datagen.on_demand import make_on_demand
    from offrl.datagen.recipes import load_on_demand
    from offrl.errors import UserError
    from offrl.report import build_report

    if args.seeds < 1 or args.jobs < 1:
        _fail("--seeds and --jobs must be positive")
    if args.first_seed < 0:
        _fail(f"--first-seed {args.first_seed}: must be 0 or more")
    if args.last_episodes < 0:
        _fail(f"--last-episodes {args.last_episodes}: must be 0 (every episode of the last evaluation) or more")
    steps = parse_steps(args.steps)
    bundled = list_bundled()
    on_demand = sorted(load_on_demand())
    datasets = args.datasets.split(",") if args.datasets else bundled
    unknown = [d for d in datasets if d not in bundled and d not in on_demand]
    if unknown:
        _fail(f"--datasets {','.join(unknown)}: neither bundled nor an on-demand recipe; pick from "
              f"{', '.join(bundled + on_demand)}")
    for name in (d for d in datasets if d in on_demand):
        make_on_demand(name)  # generated once (a no-op when it exists from the same recipe)
    algos = args.algos.split(",") if args.algos else None
    if algos and set(algos) - set(PEER_ALGOS):
        _fail(f"--algos {args.algos}: use cql, discrete-cql, dqn")
    args.d3rlpy_python, peer_version = find_d3rlpy(args.d3rlpy_python, args.no_peers)
    out = Path(args.out)
    runs = Path(args.runs) if args.runs else Path("runs") / "suite"
    runs.mkdir(parents=True, exist_ok=True)
    envs = {d.split("/")[1] for d in datasets}
    overrides: dict[str, dict[str, Any]] = {}
    for env in envs:
        n = steps.get(env, steps.get("*"))
        overrides[env] = {k: v for k, v in {"offline_steps": n, "eval.episodes": args.eval_episodes}.items()
                          if v is not None}

    started, load_start, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), _load(), time.perf_counter()
    try:
        jobs, configs = plan(datasets, algos, args.seeds, args.d3rlpy_python is not None,
                             args.peer_algos.split(","), overrides, args.dotlist, args.first_seed)
    except UserError as err:
        _fail(str(err))
    print(f"suite: {len(jobs)} runs, {args.jobs} at a time; runs in {runs}; d3rlpy peer: {peer_version}", flush=True)
    failed: list[str] = []
    reused = 0
    if not args.report_only:
        pin_configs(runs, configs)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        todo = [] if args.report_only else jobs
        futures = [pool.submit(run_job, job, runs, args, configs[(job.dataset, job.algo)]) for job in todo]
        for i, fut in enumerate(as_completed(futures), 1):
            job, seconds, error = fut.result()
            if error == "reused":
                reused += 1
            elif error:
                failed.append(f"{job.label}: {error}")
            state = error or "ok"
            print(f"[{i}/{len(jobs)}] {job.label}: {state} ({seconds:.0f} s, {time.perf_counter() - t0:.0f} s elapsed)",
                  flush=True)
    wall = time.perf_counter() - t0

    # One row per dataset x algorithm: the suite trains every seed of a row on one pinned config, so rows
    # are not split when offrl adds a config key (with its default) between two runs of a long suite.
    sources: list[Path] = [runs]
    partial: list[str] = []  # this call's own note (not kept for later rebuilds)
    if args.completed_only:
        from offrl.runs.rundir import read_summary

        sources = [job.run_dir(runs) for job in jobs if job.run_dir(runs).is_dir()
                   and read_summary(job.run_dir(runs)).get("status") == "completed"]
        started_runs = [f"{job.label} at {summary.get('steps', 0):,} of {summary['target_steps']:,} steps"
                        if isinstance(summary.get("target_steps"), int) else f"{job.label} (started)"
                        for job in jobs if job.run_dir(runs).is_dir()
                        and (summary := read_summary(job.run_dir(runs))).get("status") != "completed"]
        partial.append(f"Completed runs only (--completed-only): {len(sources)} of the {len(jobs)} planned; "
                       + (f"training or stopped: {'; '.join(started_runs)}; " if started_runs else "")
                       + f"no run folder in {runs} yet: {len(jobs) - len(sources) - len(started_runs)}.")
        if not sources:
            _fail(f"--completed-only: no completed run in {runs} yet")
    report = build_report(sources, out=out, group_by="algo", interval=args.interval, baseline=peer_baseline(jobs),
                          title="offrl benchmark: bundled datasets"
                          + ("" if args.first_seed else f", {args.seeds} seeds"))
    keep = ["dataset", "group", "unit", "n_seeds", "seeds", "steps", "last_mean", "last_low", "last_high", "last_iqm",
            "best_mean", "best_low", "best_high", "best_iqm", "behaviour_return", "behaviour_normalized",
            "updates_per_s", "ref_source"]
    report.summary[[c for c in keep if c in report.summary]].to_csv(out / "summary.csv", index=False)
    table = markdown_table(report.summary)
    (out / "summary.md").write_text(table)
    shown = shlex.join(["python", "benchmarks/suite.py", *(argv if argv is not None else sys.argv[1:])])
    # What only the training call knows (command, wall time, load) is kept beside the runs, so that a later
    # --report-only (say, to add a --note) still shows it.
    record = runs / ".suite.json"
    if not args.report_only:
        saved: dict[str, Any] = {}
        record.write_text(json.dumps({"command": shown, "wall": f"{wall / 60:.1f} min", "started": started,
                                      "load_start": load_start, "load_end": _load(), "n_reused": reused,
                                      "failed": failed, "notes": list(args.note), "cpu": cpu_model(),
                                      "cores": os.cpu_count(), "versions": _versions()}, indent=1))
    else:  # the training call's facts, and every note given so far: a rebuild keeps them and adds new ones
        saved = json.loads(record.read_text()) if record.is_file() else {}
        kept = [n for n in saved.get("notes", []) if isinstance(n, str)]
        args.note = kept + [n for n in args.note if n not in kept]
        record.write_text(json.dumps({**saved, "notes": args.note}, indent=1))
    budget = "; ".join(sorted({f"{c['dataset']['id'].split('/')[1]} {c['algo']}: {c['offline_steps']} gradient steps, "
                               f"batch {c['batch_size']}" for c in configs.values()}))
    evals = sorted({f"{c['eval']['episodes']} episodes every {c['eval']['interval']} steps, "
                    f"{max(c['eval']['episodes'], c['eval'].get('final_episodes') or 0)} after the last"
                    for c in configs.values()})
    failed = saved.get("failed", failed)
    not_recorded = "not recorded by the training call" if args.report_only else ""  # a record from before 2026-12-07
    datasets_run = sorted({c["dataset"]["id"] for c in configs.values()})
    algos_run = sorted({c["algo"] for c in configs.values()})
    scope = (f"Datasets {', '.join(f'`{d}`' for d in datasets_run)} x offrl's {', '.join(algos_run)}"
             + (f" and d3rlpy {peer_version}'s counterparts on the same data and config" if args.d3rlpy_python else ""))
    facts = {
        "scope": scope,
        "interval": ("Student-t 95% CI" if args.interval == "t" else
                     "percentile bootstrap 95% CI (10,000 resamples)"),
        # the machine and software the runs trained on, not the one rebuilding the report
        "seeds": (f"{args.seeds} seeds each planned (completed runs only: see the notes)" if args.completed_only
                  else f"{args.seeds} seeds each"),
        "peers": peer_version, "jobs": args.jobs, "budget": budget,
        "machine": (f"{saved['cpu']}, {saved['cores']} cores" if "cpu" in saved else
                    "not recorded (\"Trained on\" below has each run's)" if args.report_only
                    else f"{cpu_model()}, {os.cpu_count()} cores"),
        "eval": "; ".join(evals), "eval_seed": "/".join(sorted({str(c["eval"]["seed"]) for c in configs.values()})),
        "versions": saved.get("versions", not_recorded or _versions()), "n_failed": len(failed),
        "n_runs": f"{len(sources)} in this report of {len(jobs)} planned" if args.completed_only else len(jobs),
        "load_start": saved.get("load_start", load_start), "load_end": saved.get("load_end", _load()),
        "n_reused": saved.get("n_reused", reused), "started": saved.get("started", started),
        "wall": saved.get("wall", "n/a (--report-only: no training in this call)" if args.report_only
                          else f"{wall / 60:.1f} min"),
        "provenance": provenance(jobs, runs),
        "settled": settled_section([job.run_dir(runs) for job in jobs], runs, args.last_episodes, args.interval),
        "notes": "\n".join([*(f"- {n}" for n in [*partial, *args.note]), PEER_NOTES,
                            *(f"- Failed: {f}" for f in failed), *(f"- Report warning: {w}" for w in report.warnings)]),
    }
    readme = write_readme(out, command=saved.get("command", shown), table=table,
                          aggregate=aggregate_markdown(report.aggregate), facts=facts)
    print(table)
    print(f"suite: report {report.html}, {readme}; {len(jobs)} runs in {wall / 60:.1f} min, {len(failed)} failed")
    for f in failed:
        print(f"suite: failed: {f}", file=sys.stderr)
    return 1 if failed else 0


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("offrl", "torch", "torchrl", "tensordict", "gymnasium"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts) + f", Python {platform.python_version()}"


if __name__ == "__main__":
    raise SystemExit(main())
