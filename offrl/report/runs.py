"""Reading run directories back: config.yaml, metrics.csv and summary.json into a :class:`RunRecord`.

Only the files of the run directory are read (never checkpoints, never the dataset). Damage is reported
as warnings and whatever can be read is kept: a crashed run has no summary.json, a run killed mid-write
has a torn last line, a hand-edited CSV may hold text where numbers belong.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from offrl.errors import UserError

__all__ = ["RunRecord", "find_run_dirs", "flatten", "load_run", "load_runs"]

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.yaml", "metrics.csv", "summary.json"
# Config keys that record or steer the run without changing what is learned: not part of a run's identity.
_NOT_IDENTITY = (
    "seed", "versions", "command", "created", "run", "device", "progress_bar", "logger", "enable_logging",
    "log_rewards", "log_actions", "log_observations", "log_timings", "save_trainer_interval",
    "keep_checkpoints", "dataset.path", "dataset.cache_dir", "dataset.digest", "name", "out", "vectorized_seeds",
    # provenance: where the defaults came from (its wording changes between offrl versions), and the d3rlpy
    # peer's hash of the offrl config it mirrors (its own settings are in its config)
    "config_origins", "mirrors_offrl_config",
)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    return out


@dataclass
class RunRecord:
    """One run directory as read back; ``warnings`` lists what could not be read."""

    path: Path
    config: dict[str, Any]
    metrics: pd.DataFrame
    summary: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)

    @property
    def flat_config(self) -> dict[str, Any]:
        return flatten(self.config)

    @property
    def dataset(self) -> str:
        ds = self.config.get("dataset")
        if isinstance(ds, dict) and ds.get("id"):
            return str(ds["id"])
        if isinstance(ds, str):
            return ds
        sds = (self.summary or {}).get("dataset")
        if isinstance(sds, dict) and sds.get("id"):
            return str(sds["id"])
        # <out>/<dataset slug>/<algo>/<name>: the folder names are the last resort
        return self.path.parent.parent.name.replace("__", "/") or "unknown"

    @property
    def algo(self) -> str:
        return str(self.config.get("algo") or (self.summary or {}).get("algo") or self.path.parent.name)

    @property
    def seed(self) -> Any:
        seed = self.config.get("seed", (self.summary or {}).get("seed"))
        return seed if seed is not None else self.path.name

    @property
    def status(self) -> str:
        """``completed``/``stopped``/``crashed``/``running`` from summary.json; ``incomplete`` without one
        (still running, or killed before it could write its summary)."""
        if self.summary is None:
            return "incomplete"
        return str(self.summary.get("status") or "unknown")

    @property
    def identity(self) -> tuple[tuple[str, str], ...]:
        """Everything that defines what was learned, except the seed: runs sharing it are seeds of one
        experiment."""
        flat = self.flat_config
        keep = {
            k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in _NOT_IDENTITY)
        }
        keep["dataset.id"], keep["algo"] = self.dataset, self.algo
        return tuple(sorted((k, repr(v)) for k, v in keep.items()))

    def ref(self) -> dict[str, Any]:
        ref = (self.summary or {}).get("ref") or {}
        if ref.get("min") is None:
            ds = self.config.get("dataset") if isinstance(self.config.get("dataset"), dict) else {}
            if ds.get("ref_min_score") is not None and ds.get("ref_max_score") is not None:
                return {"min": ds["ref_min_score"], "max": ds["ref_max_score"], "source": "user"}
        return ref

    @property
    def behaviour_return(self) -> float:
        """Mean episode return of the dataset's behaviour policy (summary.json), NaN when unknown."""
        ds = (self.summary or {}).get("dataset") or {}
        return _float(ds.get("mean_return"))

    @property
    def updates_per_s(self) -> float:
        ups = _float((self.summary or {}).get("updates_per_s"))
        if math.isnan(ups) and "updates_per_s" in self.metrics:
            ups = _float(self.metrics["updates_per_s"].dropna().iloc[-1]) if self.metrics["updates_per_s"].notna().any() else ups
        return ups

    @property
    def steps(self) -> int:
        # the furthest of summary.json's count and the metrics' last row: a run still going (or resumed) has
        # logged past the summary.json it wrote when it started
        counts = [_float((self.summary or {}).get("steps"))]
        if len(self.metrics) and self.metrics["step"].notna().any():
            counts.append(_float(self.metrics["step"].max()))
        counts = [c for c in counts if not math.isnan(c)]
        return int(max(counts)) if counts else 0


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / METRICS_FILE).is_file() or (path / SUMMARY_FILE).is_file())


def find_run_dirs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Each path is a run directory or a folder holding run directories at any depth."""
    found: list[Path] = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise UserError(f"{path}: no such file or folder; give run directories or folders that contain them")
        if not path.is_dir():
            raise UserError(f"{path}: not a folder; give a run directory (with metrics.csv) or a folder of runs")
        if is_run_dir(path):
            found.append(path)
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            if METRICS_FILE in filenames or SUMMARY_FILE in filenames:
                found.append(Path(dirpath))
                dirnames[:] = [d for d in dirnames if d != "checkpoints"]
    unique = sorted(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        listed = ", ".join(str(p) for p in paths)
        raise UserError(f"{listed}: no run directories found (a run has metrics.csv or summary.json); run 'offrl train' first or point at its --out folder")
    return unique


def _read_metrics(path: Path, warnings: list[str]) -> pd.DataFrame:
    """Tolerant CSV read: torn or malformed lines are skipped with a warning, non-numbers become NaN."""
    empty = pd.DataFrame({"step": pd.Series(dtype=float), "phase": pd.Series(dtype=object)})
    if not path.is_file():
        warnings.append(f"{path}: missing; only summary.json is shown")
        return empty
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        warnings.append(f"{path}: unreadable ({err.strerror})")
        return empty
    if "\x00" in text:
        warnings.append(f"{path}: contains NUL bytes (damaged); they were dropped")
        text = text.replace("\x00", "")
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if r]
    if not rows:
        warnings.append(f"{path}: empty")
        return empty
    header, body = rows[0], rows[1:]
    if "step" not in header:
        warnings.append(f"{path}: no 'step' column in the header; the file is not a metrics table")
        return empty
    good = [r for r in body if len(r) == len(header)]
    bad = len(body) - len(good)
    if bad:
        warnings.append(f"{path}: skipped {bad} damaged line(s) (wrong number of fields)")
    df = pd.DataFrame(good, columns=header)
    for col in df.columns:
        if col == "phase":
            continue
        raw = df[col].str.strip()
        missing = raw.str.lower().isin(["", "nan", "none", "null"])
        numeric = pd.to_numeric(raw.where(~missing), errors="coerce")
        garbage = numeric.isna() & ~missing
        if garbage.any():
            warnings.append(f"{path}: column {col!r} has {int(garbage.sum())} non-numeric value(s), read as missing")
        df[col] = numeric
    if "phase" not in df.columns:
        df["phase"] = "offline"
    df["phase"] = df["phase"].replace("", np.nan).fillna("offline").astype(str)
    n_before = len(df)
    df = df[df["step"].notna()]
    if len(df) < n_before:
        warnings.append(f"{path}: {n_before - len(df)} row(s) without a step were dropped")
    num = df.select_dtypes("number")
    inf = np.isinf(num.to_numpy(dtype=float)).sum() if len(num.columns) else 0
    if inf:
        warnings.append(f"{path}: {int(inf)} infinite value(s) (diverged?) shown as gaps")
        df[num.columns] = num.replace([np.inf, -np.inf], np.nan)
    loss_cols = [c for c in df.columns if c.startswith("loss_")]
    if loss_cols:
        losses = df[loss_cols]
        eval_only = losses.isna().all(axis=1) & df.filter(like="eval_").notna().any(axis=1)
        diverged = losses.isna().any(axis=1) & ~eval_only
        if diverged.any():
            first = int(df.loc[diverged, "step"].iloc[0])
            warnings.append(f"{path}: NaN losses in {int(diverged.sum())} row(s) from step {first} (training diverged?); shown as gaps")
    return df.sort_values("step", kind="stable").reset_index(drop=True)


def _read_yaml(path: Path, warnings: list[str]) -> dict[str, Any]:
    if not path.is_file():
        warnings.append(f"{path}: missing; dataset and algorithm taken from the folder names")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        warnings.append(f"{path}: not valid YAML ({str(err).splitlines()[0]}); ignored")
        return {}
    return data if isinstance(data, dict) else {}


def _read_summary(path: Path, warnings: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        warnings.append(f"{path}: not valid JSON ({err}); treated as missing")
        return None
    return data if isinstance(data, dict) else None


def load_run(path: str | os.PathLike[str]) -> RunRecord:
    """Read one run directory."""
    path = Path(path)
    warnings: list[str] = []
    config = _read_yaml(path / CONFIG_FILE, warnings)
    summary = _read_summary(path / SUMMARY_FILE, warnings)
    metrics = _read_metrics(path / METRICS_FILE, warnings)
    return RunRecord(path=path, config=config, metrics=metrics, summary=summary, warnings=warnings)


def load_runs(paths: Sequence[str | os.PathLike[str]]) -> list[RunRecord]:
    """Find and read every run directory under ``paths``."""
    return [load_run(p) for p in find_run_dirs(paths)]
