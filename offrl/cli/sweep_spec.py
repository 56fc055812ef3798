"""``offrl sweep``'s spec: datasets × algorithms × a grid of config values × seeds, from flags or a YAML sweep
file, checked whole before any trial starts (a bad spec is one line, exit 2), then planned into trials: one
ordinary ``offrl train`` run folder each, under ``<sweep>/runs/<dataset>/<algo>/<config tag>-seed<S>``."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from offrl.errors import UserError

__all__ = ["SweepOptions", "SweepSpec", "Trial", "grid_item", "load_sweep_file", "plan_trials", "sweep_dir"]

#: The spec's keys in a sweep file: what decides the trials' results (the sweep's identity).
SPEC_KEYS = ("datasets", "algos", "seeds", "grid", "set", "config", "steps", "batch_size", "eval_every",
             "eval_episodes")
#: How the sweep runs (not part of its identity): also allowed in a sweep file.
OPTION_KEYS = ("name", "out", "cpus_per_run", "gpus_per_run", "max_concurrent", "retries", "address", "engine",
               "cache_dir")
SPEC_FILE = "sweep.yaml"


@dataclass
class SweepSpec:
    """What a sweep trains: every dataset × algorithm × grid point × seed is one trial."""

    datasets: list[str] = field(default_factory=list)
    algos: list[str] = field(default_factory=lambda: ["auto"])
    seeds: list[int] = field(default_factory=lambda: [0])
    grid: dict[str, list[str]] = field(default_factory=dict)  # key -> values as --set tokens
    set: list[str] = field(default_factory=list)  # fixed key=value for every trial
    config: str | None = None
    steps: int | None = None
    batch_size: int | None = None
    eval_every: int | None = None
    eval_episodes: int | None = None

    def identity(self) -> dict[str, Any]:
        out = asdict(self)
        if self.config is not None:  # the file's content decides the results, not its name
            out["config"] = hashlib.sha256(Path(self.config).read_bytes()).hexdigest()[:16]
        return out

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class SweepOptions:
    """How a sweep runs: where, on what, how many at once."""

    name: str | None = None
    out: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_concurrent: int | None = None
    retries: int = 3
    address: str | None = None
    engine: str = "auto"
    cache_dir: str | None = None


@dataclass(frozen=True)
class Trial:
    """One run of the sweep: its source, algorithm, grid values, seed and run folder."""

    dataset: str  # as given (an id or a path)
    dataset_name: str  # the loaded dataset's name (its folder under runs/)
    algo: str  # resolved (never auto)
    seed: int
    values: tuple[tuple[str, str], ...]  # the grid point: (key, --set token)
    sets: tuple[str, ...]  # the fixed key=value items that apply to this trial's algorithm
    run_dir: str
    dataset_is_path: bool

    @property
    def tag(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.values) or "base"

    @property
    def label(self) -> str:
        return f"{self.dataset_name} {self.algo} {self.tag} seed {self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "values": [list(kv) for kv in self.values], "sets": list(self.sets)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Trial:
        return cls(**{**d, "values": tuple(tuple(kv) for kv in d["values"]), "sets": tuple(d["sets"])})


def _token(value: Any) -> str:
    """A YAML value as a ``--set`` token (what OmegaConf's dotlist parses back to the same value)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, list, dict)) or value is None:
        return json.dumps(value)
    return str(value)


def _split_values(text: str) -> list[str]:
    """``1,5,10`` -> ``['1', '5', '10']``; commas inside brackets stay (``[16,16],[32,32]``)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [v for v in out if v]


def grid_item(text: str) -> tuple[str, list[str]]:
    """``--grid KEY=V1,V2,...`` -> (key, values); an empty grid is a user error."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--grid {text!r}: expected KEY=V1,V2,... (e.g. --grid cql.min_q_weight=1,5,10)")
    parsed = _split_values(values)
    if not parsed:
        raise UserError(f"--grid {key}: the grid is empty; give one or more values (e.g. --grid {key}=1,5,10)")
    return key, parsed


def load_sweep_file(path: str | os.PathLike[str]) -> tuple[SweepSpec, dict[str, Any]]:
    """A YAML sweep file -> (spec, options given in it). Errors name the file and the key."""
    from offrl.cli.seeds import seed_list

    path = Path(path)
    where = f"sweep file {path}"
    if not path.is_file():
        raise UserError(f"{where}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{where}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping (datasets:, seeds:, grid:, ...) at the top level")
    raw = {str(k).replace("-", "_"): v for k, v in raw.items()}
    raw["datasets"] = raw.pop("datasets", raw.pop("dataset", None))
    raw["algos"] = raw.pop("algos", raw.pop("algo", None))
    unknown = sorted(set(raw) - set(SPEC_KEYS) - set(OPTION_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}'; a sweep file has "
                        f"{', '.join(SPEC_KEYS + OPTION_KEYS)}")
    spec = SweepSpec()
    if raw["datasets"] is not None:
        spec.datasets = [str(d) for d in _as_list(raw["datasets"])]
    if raw["algos"] is not None:
        spec.algos = [str(a) for a in _as_list(raw["algos"])]
    if raw.get("seeds") is not None:
        seeds = raw["seeds"]
        try:
            spec.seeds = seed_list(",".join(map(str, seeds)) if isinstance(seeds, list) else str(seeds))
        except Exception as err:  # argparse.ArgumentTypeError
            raise UserError(f"{where}: seeds: {err}") from None
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise UserError(f"{where}: grid: expected a mapping of config key -> list of values")
    for key, values in grid.items():
        values = [_token(v) for v in _as_list(values)] if values is not None else []
        if not values:
            raise UserError(f"{where}: grid {key}: the grid is empty; give one or more values (e.g. [1, 5, 10])")
        spec.grid[str(key)] = values
    sets = raw.get("set") or {}
    spec.set = [f"{k}={_token(v)}" for k, v in sets.items()] if isinstance(sets, dict) else [str(s) for s in sets]
    if raw.get("config") is not None:
        spec.config = str((path.parent / str(raw["config"])).resolve())
    for key in ("steps", "batch_size", "eval_every", "eval_episodes"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < (0 if key == "eval_every" else 1):
                raise UserError(f"{where}: {key}: expected a positive integer, got {raw[key]!r}")
            setattr(spec, key, raw[key])
    options = {k: raw[k] for k in OPTION_KEYS if raw.get(k) is not None}
    if "out" in options:
        options["out"] = str((path.parent / str(options["out"])).resolve())
    return spec, options


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_spec(spec: SweepSpec, options: SweepOptions) -> None:
    """The checks that need no dataset: something to sweep over, sane resources, no key set twice."""
    if not spec.datasets:
        raise UserError("--dataset: required (repeat it for several datasets), or a sweep file with datasets:")
    if len(set(spec.datasets)) != len(spec.datasets):
        raise UserError("--dataset: a dataset is listed twice")
    for key in spec.grid:
        if key in ("seed", "algo", "dataset.id"):
            raise UserError(f"--grid {key}: not a grid key; use --seeds, --algo or --dataset")
        if len(set(spec.grid[key])) != len(spec.grid[key]):
            raise UserError(f"--grid {key}: a value is listed twice ({', '.join(spec.grid[key])})")
    fixed = {item.split("=", 1)[0].strip() for item in spec.set}
    twice = sorted(fixed & set(spec.grid))
    if twice:
        raise UserError(f"--set {twice[0]}: the key is also in --grid; give it in one place")
    if "seed" in fixed:
        raise UserError("--set seed: use --seeds (e.g. --seeds 0,1,2)")
    if options.cpus_per_run <= 0:
        raise UserError(f"--cpus-per-run {options.cpus_per_run}: must be positive (fractions allowed on Ray)")
    if options.gpus_per_run < 0:
        raise UserError(f"--gpus-per-run {options.gpus_per_run}: must be 0 or positive (e.g. 0.5 shares a GPU)")
    if options.max_concurrent is not None and options.max_concurrent < 1:
        raise UserError(f"--max-concurrent {options.max_concurrent}: must be 1 or more")
    if options.retries < 0:
        raise UserError(f"--retries {options.retries}: must be 0 or more")
    if options.engine not in ("auto", "ray", "local"):
        raise UserError(f"--engine {options.engine}: use auto, ray or local")


def sweep_dir(spec: SweepSpec, options: SweepOptions) -> Path:
    """``--out``, else ``<runs>/sweeps/<--name or sweep-<digest of the spec>>`` (the same command finds the
    same folder again), made absolute: trials may run on other nodes of a cluster."""
    from offrl.runs.rundir import runs_root

    if options.out:
        return Path(options.out).expanduser().absolute()
    name = options.name or f"sweep-{spec.digest()}"
    if "/" in name or name in (".", ".."):
        raise UserError(f"--name {name!r}: a sweep name must be a single folder name (no '/')")
    return (runs_root() / "sweeps" / name).absolute()


def threads_per_run(spec: SweepSpec, options: SweepOptions) -> list[str]:
    """``num_threads=<cpus per run>`` unless the spec sets num_threads itself (recorded in each run's config)."""
    if any(item.split("=", 1)[0].strip() == "num_threads" for item in spec.set) or "num_threads" in spec.grid:
        return []
    return [f"num_threads={max(1, int(options.cpus_per_run))}"]


def plan_trials(spec: SweepSpec, options: SweepOptions, root: Path) -> list[Trial]:
    """Every trial of the sweep, each config composed once here (this loads and caches each dataset), so a
    bad dataset, key or value fails before any trial starts."""
    from offrl.config import ALGO_SECTION
    from offrl.runs.compose import compose_run_config
    from offrl.runs.rundir import run_dir_path

    sections = set(ALGO_SECTION.values())

    def applies(key: str, section: str) -> bool:
        """A key under an algorithm's section (cql.min_q_weight) applies to that algorithm's trials only."""
        head = key.split(".", 1)[0].strip()
        return head not in sections or head == section

    used: set[str] = set()
    trials: list[Trial] = []
    base_set = threads_per_run(spec, options) + spec.set
    kwargs = dict(steps=spec.steps, batch_size=spec.batch_size, eval_every=spec.eval_every,
                  eval_episodes=spec.eval_episodes, cache_dir=options.cache_dir)
    from offrl.config import dataset_ref

    for dataset, algo in product([dataset_ref(d) for d in spec.datasets], spec.algos):
        probe = [item for item in base_set if item.split(".", 1)[0].strip() not in sections]
        _, data = compose_run_config(dataset, algo, config=spec.config, dotlist=probe, **kwargs)
        resolved = algo if algo != "auto" else _auto_algo(data)
        section = ALGO_SECTION[resolved]
        sets = tuple(item for item in base_set if applies(item.split("=", 1)[0], section))
        keys = [k for k in spec.grid if applies(k, section)]
        used.update(keys)
        used.update(item.split("=", 1)[0] for item in sets)
        for point in product(*(spec.grid[k] for k in keys)):
            values = tuple(zip(keys, point, strict=True))
            cfg, _ = compose_run_config(dataset, resolved, config=spec.config,
                                        dotlist=[*sets, *(f"{k}={v}" for k, v in values)], **kwargs)
            for seed in spec.seeds:
                tag = ",".join(f"{k}={v}" for k, v in values) or "base"
                name = f"{tag}-seed{seed}".replace("/", "_").replace(" ", "")
                path = run_dir_path(root / "runs", data.name, cfg.algo, name)
                trials.append(Trial(dataset, data.name, cfg.algo, seed, values, sets, str(path), Path(dataset).exists()))
    for key in [*spec.grid, *(item.split("=", 1)[0] for item in spec.set)]:
        if key not in used:
            option = "--grid" if key in spec.grid else "--set"
            raise UserError(f"{option} {key}: no trial of this sweep trains {key.split('.', 1)[0]} "
                            f"(algorithms: {', '.join(sorted({t.algo for t in trials}))})")
    return trials


def _auto_algo(data: Any) -> str:
    from offrl.config import resolve_algo

    return resolve_algo("auto", data)


def write_spec(root: Path, spec: SweepSpec, options: SweepOptions) -> None:
    """``<sweep>/sweep.yaml``: the spec (and how it last ran); a folder holding another sweep is refused."""
    from offrl.fsio import write_text_atomic

    file = root / SPEC_FILE
    identity = spec.identity()
    if file.exists():
        try:
            saved = (yaml.safe_load(file.read_text()) or {}).get("identity")
        except yaml.YAMLError:
            saved = None
        if saved != identity:
            differ = sorted(k for k in identity if (saved or {}).get(k) != identity[k])
            raise UserError(f"--out {root}: the folder holds another sweep (its {SPEC_FILE} differs in "
                            f"{', '.join(differ) or 'everything'}); pick another --name or --out")
    root.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"identity": identity, "spec": asdict(spec),
                           "options": {f.name: getattr(options, f.name) for f in fields(options)}}, sort_keys=False)
    write_text_atomic(file, text)


def spec_from_flags(spec: SweepSpec, given: Mapping[str, Any]) -> SweepSpec:
    """``spec`` (from a sweep file, or empty) with the flags the user gave on top (flags win)."""
    out = SweepSpec(**asdict(spec))
    for key, value in given.items():
        if value is None or (isinstance(value, (list, dict)) and not value):
            continue
        if key == "grid":
            out.grid = {**out.grid, **value}
        elif key == "set":
            out.set = [*out.set, *value]
        else:
            setattr(out, key, value)
    return out


def trial_states(trials: Sequence[Trial]) -> dict[str, list[Trial]]:
    """``finished`` (summary says completed), ``resume`` (a run folder without that) and ``new`` trials."""
    from offrl.runs.rundir import is_run_dir, read_summary

    states: dict[str, list[Trial]] = {"finished": [], "resume": [], "new": []}
    for trial in trials:
        path = Path(trial.run_dir)
        if not is_run_dir(path):
            states["new"].append(trial)
        elif read_summary(path).get("status") == "completed":
            states["finished"].append(trial)
        else:
            states["resume"].append(trial)
    return states
