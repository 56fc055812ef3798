"""Tidy metrics logging for run directories.

torchrl's ``CSVLogger`` writes one file per scalar (``scalars/<name>.csv``), which pandas cannot read as
one table. :class:`TidyCSVLogger` is a torchrl :class:`~torchrl.record.loggers.Logger` that writes a single
tidy ``metrics.csv``: one row per logged step with ``step``, ``phase``, ``wall_time`` and one column per
metric (empty cells read back as NaN). It can mirror every scalar to other torchrl loggers (TensorBoard,
W&B), so the tidy CSV is always written whatever ``--logger`` says.

Its position (rows written, columns, the last row, elapsed time) is part of
``state_dict()``; ``load_state_dict()`` cuts ``metrics.csv`` back to that position, so a resumed run
rewrites exactly the rows the interrupted one logged after its last checkpoint.
"""

from __future__ import annotations

import io
import math
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchrl.record.loggers import Logger
from torchrl.record.loggers.common import _make_metrics_safe

from offrl.errors import UserError
from offrl.fsio import no_space_error, write_text_atomic

__all__ = [
    "EVAL_COLUMNS",
    "LOGGER_KINDS",
    "TidyCSVLogger",
    "attach_mirrors",
    "check_logger_available",
    "make_logger",
    "read_metrics",
]

#: Columns every run's CSV has from its first row, so eval columns exist (NaN) even before an evaluation.
EVAL_COLUMNS = ("eval_return_mean", "eval_return_std", "eval_length_mean", "eval_normalized_score")
_KEY_COLUMNS = ("step", "phase", "wall_time")
LOGGER_KINDS = ("csv", "tensorboard", "wandb")


def _format(value: Any) -> str:
    """A cell: floats via ``repr`` so they read back bit-identically; None/NaN as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, (list, tuple)):  # a multi-element tensor: log its mean, a tidy cell is a scalar
        values = [float(v) for v in value]
        return repr(sum(values) / len(values)) if values else ""
    return str(value)


def _cell_ok(column: str, cell: str) -> bool:
    """A cell as offrl writes it: the phase name, an integer step, or a number (empty: not logged)."""
    if column == "phase":
        return cell in ("offline", "online")
    if column == "step":
        return cell.isdigit()
    if not cell:
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True


class _TidyCSVFile:
    """The experiment object: an append-only CSV, one line per (step, phase).

    A row for the same step and phase as the last line is merged into that line (rewritten in place), so
    every row is on disk as soon as it is logged. A new column rewrites the file once with a wider header.
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns: list[str] = list(columns)
        self.rows = 0
        self.last: dict[str, Any] | None = None  # the last line's values, for merging
        self._last_len = 0  # bytes of the last line, newline included
        self._fh: io.TextIOBase | None = None

    def _open(self) -> io.TextIOBase:
        if self._fh is None:
            if self.rows == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(self.path, ",".join(self.columns) + "\n")
            self._fh = open(self.path, "a", newline="")  # noqa: SIM115 - kept open for the run
        return self._fh

    def _line(self, row: Mapping[str, Any]) -> str:
        return ",".join(_format(row.get(c)) for c in self.columns) + "\n"

    def write_row(self, row: Mapping[str, Any]) -> None:
        last = self.last
        merge = last is not None and (last["step"], last["phase"]) == (row["step"], row["phase"])
        if merge:
            row = {**last, **row}
        new = [k for k in row if k not in self.columns]
        if new:
            self._grow(new)
        fh = self._open()
        line = self._line(row)
        try:
            if merge:
                fh.flush()
                fh.truncate(os.fstat(fh.fileno()).st_size - self._last_len)
            fh.write(line)
            fh.flush()
        except OSError as err:
            full = no_space_error(err, self.path)
            if full is not None:
                raise full from None
            raise
        if not merge:
            self.rows += 1
        self.last = dict(row)
        self._last_len = len(line.encode())

    def _grow(self, new: Sequence[str]) -> None:
        """Add columns: rewrite the file with the wider header, old rows padded with empty cells."""
        self.close()
        self.columns.extend(new)
        if self.rows == 0 or not self.path.exists():
            return
        lines = self.path.read_text().splitlines()[1 : self.rows + 1]
        pad = "," * len(new)
        write_text_atomic(self.path, "\n".join([",".join(self.columns), *(ln + pad for ln in lines)]) + "\n")
        self._last_len += len(pad)

    def checksum(self) -> int:
        """CRC-32 of the data rows written so far (the checkpoint records it; resume checks it)."""
        self.flush()
        if not self.rows or not self.path.exists():
            return 0
        return zlib.crc32("\n".join(self.path.read_text().splitlines()[1 : self.rows + 1]).encode())

    def truncate(self, rows: int, columns: Sequence[str], last: Mapping[str, Any] | None,
                 checksum: int | None = None) -> None:
        """Keep the first ``rows`` data rows under the header ``columns``; drop everything after.

        Columns added after the checkpoint are dropped too (the file may have been widened since). The rows
        kept must be the ones the checkpoint recorded (``checksum``, ``last``): a torn or edited row is a
        :class:`UserError`, never carried into the resumed run.
        """
        self.close()
        try:
            lines = self.path.read_text().splitlines() if self.path.exists() else []
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{self.path}: unreadable ({err}); restore it or start a new run") from None
        header, data = (lines[0].split(","), lines[1:]) if lines else ([], [])
        if len(data) < rows:
            raise UserError(
                f"{self.path}: has {len(data)} metric rows but the checkpoint expects {rows}; "
                "the run directory was modified, start a new run"
            )
        position = {name: i for i, name in enumerate(header)}
        kept = []
        for i, line in enumerate(data[:rows]):
            cells = line.split(",")  # cells are numbers or phase names: never quoted, never a comma
            if len(cells) != len(header):
                raise UserError(f"{self.path}: data row {i + 1} has {len(cells)} cells for {len(header)} columns, "
                                "not what the checkpoint recorded (the file was edited or damaged); restore it "
                                "from a backup or start a new run")
            kept.append(",".join(cells[position[c]] if c in position else "" for c in columns))
        self.columns = list(columns)
        self._check_kept(kept, header, rows, last, checksum)
        self.rows = rows
        self.last = None if last is None else dict(last)
        self._last_len = len(kept[-1].encode()) + 1 if kept else 0
        write_text_atomic(self.path, "\n".join([",".join(self.columns), *kept]) + "\n")

    def _check_kept(self, kept: list[str], header: list[str], rows: int, last: Mapping[str, Any] | None,
                    checksum: int | None) -> None:
        def damaged(why: str) -> UserError:
            return UserError(f"{self.path}: {why}, not what the checkpoint recorded (the file was edited or "
                             "damaged); restore it from a backup or start a new run")

        if rows and "step" not in header:
            raise damaged("no step column in the header")
        for i, line in enumerate(kept):
            if not all(_cell_ok(c, cell) for c, cell in zip(self.columns, line.split(","), strict=True)):
                raise damaged(f"data row {i + 1} holds a value offrl does not write")
        if checksum is not None and zlib.crc32("\n".join(kept).encode()) != checksum:
            raise damaged(f"the first {rows} rows differ")
        if last is not None and kept and kept[-1] + "\n" != self._line(last):
            raise damaged(f"row {rows} differs")

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class TidyCSVLogger(Logger):
    """A torchrl logger writing one tidy CSV (``<log_dir>/metrics.csv``), one row per logged step.

    Scalars logged for the same step and phase (through :meth:`log_scalar` or :meth:`log_row`) merge into
    one row; every row is on disk as soon as it is logged (``tail -f`` works). ``mirrors`` are other torchrl
    loggers that receive every scalar as well (``name`` with ``phase/`` prefix, e.g. ``offline/loss_qvalue``).

    Args:
        exp_name: experiment name (kept for torchrl's interface and mirrors).
        log_dir: folder of the CSV; created on the first write, not before (a failed build leaves nothing).
        filename: the CSV's name.
        phase: the ``phase`` column for :meth:`log_scalar` calls (``offline`` or ``online``).
        columns: metric columns present from the first row (default: the eval columns).
        mirrors: torchrl loggers to forward every scalar to.
    """

    def __init__(
        self,
        exp_name: str,
        log_dir: str | os.PathLike[str],
        *,
        filename: str = "metrics.csv",
        phase: str = "offline",
        columns: Sequence[str] = EVAL_COLUMNS,
        mirrors: Sequence[Logger] = (),
    ) -> None:
        self._path = Path(log_dir) / filename
        self._initial_columns = [*_KEY_COLUMNS, *(c for c in columns if c not in _KEY_COLUMNS)]
        super().__init__(exp_name=exp_name, log_dir=str(log_dir))
        self.phase = phase
        self.mirrors = list(mirrors)
        self._t0 = time.perf_counter()
        self._elapsed_before = 0.0  # wall time of earlier sessions of this run (resume)

    # -- torchrl Logger interface -------------------------------------------------------------------
    def _create_experiment(self) -> _TidyCSVFile:
        return _TidyCSVFile(self._path, self._initial_columns)

    @property
    def path(self) -> Path:
        """The tidy CSV file."""
        return self._path

    @property
    def wall_time(self) -> float:
        """Seconds of training so far, over all sessions of a resumed run."""
        return self._elapsed_before + time.perf_counter() - self._t0

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        """Add one scalar to the row of ``step`` (default: the last row's step, else 0)."""
        self.log_row(self._default_step() if step is None else int(step), self.phase, {name: value})

    def _default_step(self) -> int:
        last = self.experiment.last
        return int(last["step"]) if last is not None else 0

    def log_row(self, step: int, phase: str, metrics: Mapping[str, Any]) -> None:
        """Log several metrics for one step at once (the trainer's fast path); tensors become floats.

        The row is on disk when this returns; a second call for the same step and phase merges into it.
        """
        values = _make_metrics_safe(dict(metrics))
        row = {"step": int(step), "phase": phase, "wall_time": round(self.wall_time, 6), **values}
        self.experiment.write_row(row)
        for mirror in self.mirrors:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    mirror.log_scalar(f"{phase}/{name}", value, step=int(step))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, *, keys_sep: str = "/"):
        safe = _make_metrics_safe(metrics, keys_sep=keys_sep)  # type: ignore[arg-type]
        self.log_row(self._default_step() if step is None else int(step), self.phase, safe)
        return safe

    def log_hparams(self, cfg: Any) -> None:
        """Hyperparameters live in the run's ``config.yaml``; only mirrors receive them."""
        for mirror in self.mirrors:
            mirror.log_hparams(cfg)

    def log_video(self, name: str, video: Any, step: int | None = None, **kwargs: Any) -> None:
        for mirror in self.mirrors:
            mirror.log_video(name, video, step=step, **kwargs)

    def log_histogram(self, name: str, data: Sequence, **kwargs: Any) -> None:
        for mirror in self.mirrors:
            mirror.log_histogram(name, data, **kwargs)

    def flush(self, timeout: float | None = None) -> None:
        """Flush the file and the mirrors."""
        self.experiment.flush()
        for mirror in self.mirrors:
            mirror.flush()

    def close(self, timeout: float | None = None) -> None:  # type: ignore[override]
        """Close the file and the mirrors."""
        if self._service_shutdown:
            return
        self.experiment.close()
        for mirror in self.mirrors:
            try:
                mirror.shutdown()
            except Exception:  # a mirror failing to close must not lose the run
                pass
        self._service_shutdown = True

    shutdown = close

    # -- resume ------------------------------------------------------------------------------------
    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "rows": self.experiment.rows,
            "columns": list(self.experiment.columns),
            "last": None if self.experiment.last is None else dict(self.experiment.last),
            "crc32": self.experiment.checksum(),
            "wall_time": self.wall_time,
        }

    def _load_checkpoint_state(self, state_dict: Mapping[str, Any]) -> None:
        """Cut ``metrics.csv`` back to the checkpoint's position and restore its last row and clock."""
        if not state_dict:
            return
        checksum = state_dict.get("crc32")  # absent in checkpoints of older offrl versions
        self.experiment.truncate(int(state_dict["rows"]), state_dict["columns"], state_dict.get("last"),
                                 None if checksum is None else int(checksum))
        self._elapsed_before = float(state_dict.get("wall_time", 0.0))
        self._t0 = time.perf_counter()

    def __repr__(self) -> str:
        return f"TidyCSVLogger(path={str(self._path)!r}, phase={self.phase!r}, mirrors={self.mirrors!r})"


def check_logger_available(kind: str) -> None:
    """Raise a :class:`UserError` naming the extra to install when ``kind``'s package is missing."""
    import importlib.util

    if kind not in LOGGER_KINDS:
        raise UserError(f"--logger {kind!r}: unknown logger; use one of {', '.join(LOGGER_KINDS)}")
    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(kind)
    if package is not None and importlib.util.find_spec(package) is None:
        raise UserError(f"--logger {kind}: the {package} package is missing; pip install 'offrl[{kind}]'")


def attach_mirrors(logger: TidyCSVLogger, kind: str, run_dir: str | os.PathLike[str], exp_name: str) -> None:
    """Mirror ``logger``'s scalars to torchrl's TensorBoard or W&B logger (files under ``run_dir``)."""
    check_logger_available(kind)
    run_dir = Path(run_dir)
    if kind == "tensorboard":
        from torchrl.record.loggers import TensorboardLogger

        logger.mirrors.append(TensorboardLogger(exp_name=exp_name, log_dir=str(run_dir / "tensorboard")))
    elif kind == "wandb":
        from torchrl.record.loggers import WandbLogger

        # Offline mode: nothing leaves the machine; `wandb sync <run>/wandb/offline-run-*` uploads later.
        logger.mirrors.append(WandbLogger(exp_name=exp_name, offline=True, save_dir=str(run_dir), project="offrl"))


def make_logger(kind: str, run_dir: str | os.PathLike[str], exp_name: str, *, phase: str = "offline") -> TidyCSVLogger:
    """The run's logger: always the tidy CSV, mirrored to TensorBoard or W&B (offline mode) on request.

    A missing optional package is a :class:`UserError` naming the extra to install.
    """
    check_logger_available(kind)
    logger = TidyCSVLogger(exp_name, run_dir, phase=phase)
    attach_mirrors(logger, kind, run_dir, exp_name)
    return logger


def read_metrics(path: str | os.PathLike[str]):  # -> pandas.DataFrame
    """Read a run's ``metrics.csv`` (or the run folder) into a pandas DataFrame."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.exists():
        return pd.DataFrame(columns=[*_KEY_COLUMNS, *EVAL_COLUMNS])
    return pd.read_csv(path)
