"""Where a dataset lives and which reader opens it: a user's path or id → a :class:`ResolvedSource`.

Resolution order for ``source``: an existing path (D4RL-style / d3rlpy 1.x HDF5 file, multi-agent HDF5
file, d3rlpy 2.x dump, ``.npz`` demonstration archive, Minari ``<name>-vN`` folder or its ``data/``, HDF5
or Arrow); then a bundled id under :func:`offrl.data.catalog.bundled_root`; then a Minari id under
``MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``), or a multi-agent ``<id>.hdf5`` there.
Nothing is downloaded.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from offrl.data import catalog
from offrl.data.d3rlpy import is_d3rlpy2_file, read_d3rlpy2
from offrl.data.d4rl import hdf5_errors, is_minari_file, open_hdf5, read_d4rl
from offrl.data.marl_hdf5 import is_marl_file, read_marl_hdf5
from offrl.data.minari import data_format, minari_data_dir, minari_root, read_minari
from offrl.data.minari_arrow import arrow_files, read_minari_arrow
from offrl.data.npz import is_npz_file, read_npz
from offrl.data.references import VERSION_RE
from offrl.data.source import RawSource
from offrl.errors import UserError, did_you_mean

__all__ = ["ResolvedSource", "resolve_source"]


@dataclass
class ResolvedSource:
    """Where a dataset lives, which files make its content, and how to open it."""

    path: Path
    files: list[Path]
    name: str
    open: Callable[[], RawSource]


def _minari_name(data_dir: Path) -> str:
    try:
        meta = json.loads((data_dir / "metadata.json").read_text())
        if isinstance(meta.get("dataset_id"), str) and meta["dataset_id"]:
            return meta["dataset_id"]
    except (OSError, ValueError, AttributeError):  # unreadable, or not an object: the reader says so
        pass
    return data_dir.parent.name


def _minari_source(data_dir: Path, name: str, shown: Path) -> ResolvedSource:
    if data_format(data_dir) == "arrow":
        meta = json.loads((data_dir / "metadata.json").read_text())
        return ResolvedSource(
            shown, arrow_files(data_dir), name, lambda: read_minari_arrow(data_dir, name, meta, shown)
        )
    files = [data_dir / "main_data.hdf5"]
    if (data_dir / "metadata.json").is_file():
        files.append(data_dir / "metadata.json")
    return ResolvedSource(shown, files, name, lambda: read_minari(data_dir, name, shown))


def _latest_version(candidate: Path) -> Path:
    """``.../human`` (no ``-vN``) → the highest ``.../human-vN`` present, as Minari resolves ids."""
    if candidate.exists() or re.search(r"-v\d+$", candidate.name) or not candidate.parent.is_dir():
        return candidate
    versions = [
        (int(m.group(1)), p)
        for p in candidate.parent.glob(f"{candidate.name}-v*")
        if (m := re.fullmatch(re.escape(candidate.name) + r"-v(\d+)", p.name))
    ]
    return max(versions)[1] if versions else candidate


def _marl_file(candidate: Path) -> Path | None:
    """``<id>.hdf5`` (the highest ``-vN`` when the id has none): where ``offrl datasets make`` writes a
    multi-agent dataset under ``MINARI_DATASETS_PATH``."""
    if re.search(r"-v\d+$", candidate.name):
        path = candidate.with_name(candidate.name + ".hdf5")
        return path if path.is_file() else None
    if not candidate.parent.is_dir():
        return None
    versions = [(int(m.group(1)), p) for p in candidate.parent.glob(f"{candidate.name}-v*.hdf5")
                if (m := re.fullmatch(re.escape(candidate.name) + r"-v(\d+)\.hdf5", p.name))]
    return max(versions)[1] if versions else None


def _on_demand_recipe(text: str) -> str | None:
    """The on-demand recipe ``text`` names (``offrl/hopper/medium-v0``, ``hopper/medium-v0``, ``hopper/medium``)."""
    return catalog.match_name(text, catalog.on_demand_names())


def _known_ids() -> list[str]:
    """Bundled ids (and their short forms) and the Minari datasets on disk: what a mistyped id may mean."""
    ids = []
    for full in catalog.list_bundled():
        short = full.removeprefix("offrl/")
        ids += [full, short, VERSION_RE.sub("", short)]
    root = minari_root()
    if root.is_dir():
        ids += [p.relative_to(root).as_posix() for p in root.glob("**/*-v*") if minari_data_dir(p) is not None]
    return ids


def _refuse_incomplete_minari(folder: Path, text: str) -> None:
    """A Minari dataset folder whose ``data/metadata.json`` is there but whose HDF5 data file is not (a copy or
    a download cut short): one line that says so, instead of "not a Minari dataset" or "not found"."""
    meta = folder / "data" / "metadata.json"
    if not meta.is_file() or (folder / "data" / "main_data.hdf5").exists():
        return
    try:
        data_format = json.loads(meta.read_text()).get("data_format", "hdf5")
    except (OSError, ValueError, AttributeError):
        return
    if data_format != "hdf5":
        return
    recipe = _on_demand_recipe(text)
    fix = f"`offrl datasets make {recipe}` makes it again" if recipe else "restore the file or download the dataset again"
    raise UserError(f"{folder}: a Minari dataset whose data/main_data.hdf5 is missing (its data/metadata.json is "
                    f"there); {fix}")


def resolve_source(source: str | os.PathLike) -> ResolvedSource:
    """Find ``source`` on disk (see the module docstring for the order); a one-line UserError if absent."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            data_dir = minari_data_dir(path)
            if data_dir is None:
                _refuse_incomplete_minari(path, text)
                raise UserError(
                    f"{path}: a folder but not a Minari dataset (no data/main_data.hdf5 or Arrow data/metadata.json inside); pass a "
                    "<name>-vN dataset folder or an HDF5 file"
                )
            return _minari_source(data_dir, _minari_name(data_dir), path)
        if is_npz_file(path):
            return ResolvedSource(path, [path], path.stem, lambda: read_npz(path))
        with open_hdf5(path) as f, hdf5_errors(path):
            minari_file, d3rlpy2, marl = is_minari_file(f), is_d3rlpy2_file(f), is_marl_file(f)
        if marl:
            return ResolvedSource(path, [path], path.stem, lambda: read_marl_hdf5(path))
        if minari_file:
            return _minari_source(path.parent, _minari_name(path.parent), path.parent.parent)
        if d3rlpy2:
            return ResolvedSource(path, [path], path.stem, lambda: read_d3rlpy2(path))
        return ResolvedSource(path, [path], path.stem, lambda: read_d4rl(path))

    looked: list[str] = []
    bundled = catalog.bundled_path(text)
    if bundled is not None and minari_data_dir(bundled) is not None:
        rel = bundled.relative_to(catalog.bundled_root()).as_posix()
        return _minari_source(minari_data_dir(bundled), rel, bundled)  # type: ignore[arg-type]
    looked.append(f"bundled datasets in {catalog.bundled_root()}")
    if not path.is_absolute() and ".." not in Path(text).parts:
        candidate = _latest_version(minari_root() / text)
        data_dir = minari_data_dir(candidate)
        if data_dir is not None:
            name = candidate.relative_to(minari_root()).as_posix()
            return _minari_source(data_dir, name, candidate)
        if candidate.is_dir():
            _refuse_incomplete_minari(candidate, text)
        marl_file = _marl_file(minari_root() / text) or _marl_file(minari_root() / "offrl" / text)
        if marl_file is not None:  # a generated multi-agent dataset (offrl datasets make)
            name = marl_file.relative_to(minari_root()).with_suffix("").as_posix()
            return ResolvedSource(marl_file, [marl_file], name, lambda: read_marl_hdf5(marl_file, name))
    looked.append(f"Minari datasets in {minari_root()} (MINARI_DATASETS_PATH)")
    if path.is_symlink():  # a dangling link or a loop: say so, not "no such file"
        try:
            path.resolve(strict=True)
        except (RuntimeError, OSError) as err:  # RuntimeError: a loop before Python 3.13, OSError(ELOOP) since
            if isinstance(err, RuntimeError) or getattr(err, "errno", None) == errno.ELOOP:
                raise UserError(f"{path}: a symbolic link loop; point the link at the dataset file") from None
            raise UserError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist") from None
    if text.endswith((".hdf5", ".h5")) or os.sep in text and path.is_absolute():
        raise UserError(f"{path}: no such file (see `offrl datasets list` for the datasets offrl can find)")
    recipe = _on_demand_recipe(text)
    if recipe is not None:
        raise UserError(f"dataset {text!r} is generated on demand and has not been made yet in {minari_root()}; run "
                        f"`offrl datasets make {recipe}` first")
    raise UserError(
        f"dataset {text!r} not found: no such file or folder, and not among {' or '.join(looked)}"
        f"{did_you_mean(text, _known_ids())}; see `offrl datasets list`"
    )
