"""Run directories: where a training run lives, created atomically, read back (:class:`Run`) by users,
reports and resume.

Layout (docs/contracts.md, "Run directory"): ``<out>/<dataset slug>/<algo>/<name>/`` holding
``config.yaml``, ``metrics.csv``, ``checkpoints/{latest.pt, step_<N>.pt}`` and ``summary.json``.
The folder is built under a temporary sibling and renamed into place, so an error before training starts
leaves nothing behind, and a folder that exists is always a complete run.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from offrl.errors import UserError
from offrl.fsio import NO_SPACE_ERRNOS, current_umask
from offrl.fsio import write_text_atomic as _write_text_atomic

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "LATEST_CHECKPOINT",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "Run",
    "check_writable",
    "create_run_dir",
    "dataset_slug",
    "default_run_name",
    "is_run_dir",
    "lock_run_dir",
    "package_versions",
    "read_config_notes",
    "read_summary",
    "run_dir_path",
    "runs_root",
    "sweep_temporaries",
    "write_json_atomic",
    "write_text_atomic",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LATEST_CHECKPOINT = "latest.pt"


def runs_root(out: str | os.PathLike[str] | None = None) -> Path:
    """Where runs go: ``out``, else ``$OFFRL_RUNS``, else ``./runs``."""
    if out:
        return Path(out).expanduser()
    env = os.environ.get("OFFRL_RUNS")
    return Path(env).expanduser() if env else Path("runs")


def dataset_slug(name: str) -> str:
    """A dataset id as one folder name: ``offrl/pendulum/medium-v0`` -> ``offrl__pendulum__medium-v0``."""
    return name.strip("/").replace("/", "__").replace("\\", "__")


def default_run_name(seed: int) -> str:
    """``seed<S>-<YYYYmmdd-HHMMSS>`` (UTC)."""
    return f"seed{seed}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def run_dir_path(out: str | os.PathLike[str] | None, dataset: str, algo: str, name: str) -> Path:
    """``<out>/<dataset slug>/<algo>/<name>``."""
    if not name or "/" in name or name in (".", ".."):
        raise UserError(f"--name {name!r}: a run name must be a single folder name (no '/')")
    return runs_root(out) / dataset_slug(dataset) / algo / name


def check_writable(path: str | os.PathLike[str], option: str = "--out") -> None:
    """Fail early, with a user error, if runs cannot be created under ``path`` (its existing ancestor)."""
    path = Path(path).absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{option} {path}: {probe} is not a folder; choose another output folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: folder {probe} is not writable; choose a writable output folder")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename (no torn files)."""
    _write_text_atomic(path, text)


def write_json_atomic(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """JSON version of :func:`write_text_atomic` (NaN written as null, so any JSON reader accepts it)."""
    write_text_atomic(path, json.dumps(_nan_to_none(payload), indent=2, sort_keys=False) + "\n")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, Mapping):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def create_run_dir(path: str | os.PathLike[str], files: Mapping[str, str]) -> Path:
    """Create the run folder ``path`` with ``files`` (name -> text) and an empty ``checkpoints/``, atomically.

    Raises :class:`UserError` if the folder exists or cannot be written.
    """
    path = Path(path)
    if path.exists():
        raise UserError(f"--name: run folder {path} already exists; pick another --name or --resume it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_dead_builds(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent))
    except OSError as err:
        raise UserError(f"--out: cannot create {path.parent} ({err.strerror}); choose a writable folder") from None
    try:
        (tmp / CHECKPOINT_DIR).mkdir()
        for name, text in files.items():
            (tmp / name).write_text(text)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; a run folder is an ordinary folder
        os.rename(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY):  # another process created it first
            raise UserError(f"--name: run folder {path} already exists; pick another --name or --resume it") from None
        if err.errno in NO_SPACE_ERRNOS:
            raise UserError(f"no space left on device writing {path}; free space or choose another --out") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _sweep_dead_builds(path: Path) -> None:
    """Remove ``.<name>.<pid>-*.tmp`` folders that processes killed while creating ``path`` left behind (a
    process that is still alive may be creating it right now: its folder stays)."""
    for entry in path.parent.glob(f".{glob.escape(path.name)}.*-*.tmp"):
        pid = entry.name[len(path.name) + 2:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def read_config_notes(path: str | os.PathLike[str]) -> list[str]:
    """The ``defaults_from_data`` lines a run's config.yaml records (which defaults the dataset chose, why)."""
    import yaml

    try:
        saved = yaml.safe_load((Path(path) / CONFIG_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    notes = saved.get("defaults_from_data") if isinstance(saved, dict) else None
    return [str(n) for n in notes] if isinstance(notes, list) else []


class RunLock:
    """An exclusive ``flock`` on a run folder (on the folder itself: no lock file, released when the process
    ends, however it ends). One process trains in a run folder at a time."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def lock_run_dir(path: str | os.PathLike[str]) -> RunLock:
    """Lock ``path`` for this process, or raise a one-line :class:`UserError` if another process holds it."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise UserError(f"{path}: run folder is in use by another offrl process (training or resuming it); "
                            f"wait for it to end, then --resume {path}") from None
        raise
    return RunLock(path, fd)


def sweep_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary siblings a killed process left in a run folder and its ``checkpoints/``
    (``.summary.json.*.tmp``, ``.latest.pt.tmp-*``, ...). Call it holding the folder's lock."""
    removed = []
    # Without latest.pt a memmap checkpoint (a folder) may have been killed between its two renames: its
    # temporary folders are then the only copies, left for the user to recover. A torch checkpoint's
    # temporary file never held a published checkpoint: it goes.
    keep_folders = not (Path(path) / CHECKPOINT_DIR / LATEST_CHECKPOINT).exists()
    for folder in (Path(path), Path(path) / CHECKPOINT_DIR):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            name = entry.name
            if not (name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name)):
                continue
            if entry.is_dir() and not entry.is_symlink():
                if keep_folders and folder.name == CHECKPOINT_DIR:
                    continue
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """True for a folder made by :func:`create_run_dir` (it has ``config.yaml`` and ``checkpoints/``)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / CHECKPOINT_DIR).is_dir()


def read_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's ``summary.json`` as a dict (empty if the run has none yet)."""
    file = Path(path) / SUMMARY_FILE
    if not file.exists():
        return {}
    try:
        summary = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{file}: damaged summary ({str(err).splitlines()[0]}); --resume the run to rewrite "
                        "it") from None
    if not isinstance(summary, dict):
        raise UserError(f"{file}: damaged summary (not a JSON object); --resume the run to rewrite it")
    return summary


def package_versions() -> dict[str, str]:
    """Versions that decide a run's numbers: offrl, torch, torchrl, tensordict, numpy, gymnasium, python."""
    out: dict[str, str] = {}
    for dist in ("offrl", "torch", "torchrl", "tensordict", "numpy", "gymnasium", "minari"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    out["python"] = platform.python_version()
    return out


@dataclass(frozen=True)
class Run:
    """A run directory: ``dir``, and its ``summary`` (dict), ``metrics`` (DataFrame), ``config`` and ``policy()``
    (the trained policy as a plain torch module)."""

    dir: Path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Run:
        """Open an existing run folder (``UserError`` if it is not one)."""
        path = Path(path)
        if not is_run_dir(path):
            raise UserError(f"{path}: not an offrl run folder (no {CONFIG_FILE} and {CHECKPOINT_DIR}/)")
        return cls(path)

    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json``: status, steps, updates/s, final and best score, dataset, references."""
        return read_summary(self.dir)

    @property
    def metrics(self):  # -> pandas.DataFrame
        """``metrics.csv`` as a tidy DataFrame (one row per logged step; NaN where a value was not logged)."""
        from offrl.runs.metrics_log import read_metrics  # torchrl and pandas: only when asked

        return read_metrics(self.dir / METRICS_FILE)

    @property
    def config(self) -> DictConfig:
        """The fully resolved ``config.yaml`` (hyperparameters plus run metadata)."""
        return OmegaConf.load(self.dir / CONFIG_FILE)  # type: ignore[return-value]

    @property
    def checkpoint(self) -> Path:
        """``checkpoints/latest.pt`` (may not exist before the first checkpoint)."""
        return self.dir / CHECKPOINT_DIR / LATEST_CHECKPOINT

    def policy(self, checkpoint: str | os.PathLike[str] | None = None, *, device: str = "cpu"):  # -> torch.nn.Module
        """The run's deterministic policy as a plain ``torch.nn.Module`` in eval mode, without gradients: a float32
        batch of the env's raw observations ``[B, obs_dim]`` in, actions in the env's units out (discrete: int64
        indices). It is the module ``offrl export`` traces (the exported file matches it to 1e-5).
        ``checkpoint``: ``checkpoints/latest.pt`` by default, else a file name in this run's ``checkpoints/``
        (``"step_5000.pt"``, looked up there first) or a path."""
        from offrl.algos.deploy import deployable_policy
        from offrl.runs.policy import load_policy

        target = self.dir if checkpoint is None else self._checkpoint_file(checkpoint)
        return deployable_policy(load_policy(target, device=device).policy).requires_grad_(False)

    def _checkpoint_file(self, checkpoint: str | os.PathLike[str]) -> Path:
        path = Path(checkpoint)
        if (self.dir / CHECKPOINT_DIR / path).exists():  # this run's, before a same-named file elsewhere
            return self.dir / CHECKPOINT_DIR / path
        if path.exists():
            return path
        kept = sorted((p.name for p in (self.dir / CHECKPOINT_DIR).glob("*") if not p.name.startswith(".")),
                      key=lambda name: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)])
        raise UserError(f"{self.dir}: no checkpoint {str(checkpoint)!r}; this run keeps "
                        + (", ".join(kept) if kept else "none yet"))

    def __str__(self) -> str:
        return str(self.dir)
