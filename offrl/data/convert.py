"""Conversion of a source into a memmapped TED TensorDict, and the on-disk cache that holds it.

The cache lives in ``cache_dir``, else ``$OFFRL_CACHE``, else ``~/.cache/offrl``::

    sources/<sha1 of the source path>.json   size + mtime_ns -> content digest (the fast path)
    datasets/<slug>-<digest16>-c<version>-g<gamma>/{rows.memmap, info.json}
    locks/<key>.lock

An entry is keyed by the source's content digest (SHA-256 of its files), the converter version and
gamma (``mc_return`` depends on it). It is built in a temporary sibling directory and renamed into
place, under a file lock, so concurrent conversions of the same dataset produce one valid entry and a
failed conversion leaves nothing behind.

Memory: rows stream from the reader in chunks and are written with ``pwrite`` into the memmap files
(not through a mapping), so the process's resident memory stays bounded by the chunk, not the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from offrl.data.cache_check import (
    check_chunk_values,
    check_spaces,
    entry_problem,
    file_crc32,
    mark_verified,
    sweep_stale_builds,
    warn_rebuild,
)
from offrl.data.health import HealthStats, time_limit_warnings
from offrl.data.source import RawSource, leaf_specs, tree_leaves
from offrl.data.ted import marl_leaves, marl_values, space_summary, ted_layout
from offrl.errors import UserError
from offrl.fsio import NO_SPACE_ERRNOS, fsync_dir, no_space_error, write_text_atomic

__all__ = [
    "CONVERTER_VERSION",
    "DEFAULT_CHUNK_BYTES",
    "cache_root",
    "content_digest",
    "remember_digest",
    "cache_key",
    "discounted_returns",
    "convert_to_dir",
    "build_cache",
    "marl_leaves",
    "space_summary",
    "ted_layout",
]

CONVERTER_VERSION = 5  # 3: d3rlpy 1.x terminal-observation rows, row_rules, return distribution; 4: rows_crc32;
# 5: integer and bool vector observations stored as float32
DEFAULT_CHUNK_BYTES = 8 << 20  # ~8 MB of packed rows per chunk; temporaries make the peak a few times that
_HASH_BLOCK = 8 << 20
ROWS_FILE = "rows.memmap"  # uint8 [N, row_bytes], see offrl.data.layout


# --------------------------------------------------------------------------- cache location and keys
def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$OFFRL_CACHE``, else ``~/.cache/offrl``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("OFFRL_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/offrl").expanduser()


def ensure_writable(root: Path) -> None:
    """Create the cache folders, or raise a UserError saying how to point offrl elsewhere."""
    try:
        for sub in ("sources", "datasets", "locks"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        probe = root / "locks" / f".probe-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"{root}: cache directory is not writable ({err.strerror or err}); pass --cache-dir DIR or set OFFRL_CACHE"
        ) from None


def _fingerprint(files: list[Path]) -> list[list[Any]]:
    return [[str(f.resolve()), st.st_size, st.st_mtime_ns] for f, st in ((f, f.stat()) for f in files)]


def _index_path(files: list[Path], root: Path) -> Path:
    return root / "sources" / (hashlib.sha1(str(files[0].resolve()).encode()).hexdigest() + ".json")


def content_digest(files: list[Path], root: Path | None = None) -> str:
    """SHA-256 over the files' bytes (and names). With ``root``, reuse a remembered digest whose
    size + mtime still match (the fast path: a cached load never re-reads the source)."""
    return _digest(files, root)[0]


def _digest(files: list[Path], root: Path | None) -> tuple[str, bool]:
    """``(digest, remembered)``: ``remembered`` when it came from the size + mtime index."""
    if root is not None:
        try:
            entry = json.loads(_index_path(files, root).read_text())
            if entry.get("fingerprint") == _fingerprint(files):
                return str(entry["digest"]), True
        except (OSError, ValueError, KeyError):
            pass
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                h.update(block)
    return h.hexdigest(), False


def remember_digest(files: list[Path], root: Path, digest: str) -> None:
    """Record ``digest`` for the files' current size + mtime (only for sources that converted fine)."""
    index = _index_path(files, root)
    try:
        # a killed writer's temporary (a concurrent writer losing its own only skips this optimisation)
        for stale in index.parent.glob(f".{index.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        write_text_atomic(index, json.dumps({"fingerprint": _fingerprint(files), "digest": digest}))
    except OSError:
        pass  # the fast path is an optimisation; a read-only index only costs a re-hash


def cache_key(name: str, digest: str, gamma: float) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "__"))[:80]
    return f"{slug}-{digest[:16]}-c{CONVERTER_VERSION}-g{gamma:g}"


# --------------------------------------------------------------------------- numerics
def discounted_returns(
    reward: np.ndarray, done: np.ndarray, gamma: float, carry: float = 0.0
) -> tuple[np.ndarray, float]:
    """Return-to-go ``G_t = r_t + gamma * (1 - done_t) * G_{t+1}`` for a chunk, vectorised.

    ``carry`` is ``G`` of the row just after the chunk (0 at the end of the data); returns ``(G, G[0])``
    so chunks can be processed back to front. A log-depth scan composes the affine maps
    ``x -> r_t + a_t x`` (Hillis-Steele), so no Python loop over rows and no gamma**t underflow.
    """
    b = np.asarray(reward, dtype=np.float64).copy()
    a = np.where(np.asarray(done, bool), 0.0, float(gamma))
    n = b.shape[0]
    shift = 1
    while shift < n:
        b[:-shift] += a[:-shift] * b[shift:]
        a[:-shift] = a[:-shift] * a[shift:]
        shift *= 2
    g = b + a * carry
    return g, (float(g[0]) if n else carry)


def _pwrite_all(fd: int, buf: np.ndarray, offset: int) -> None:
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):  # pwrite may write less than asked for very large buffers
        done += os.pwrite(fd, view[done:], offset + done)


def _pread_into(fd: int, buf: np.ndarray, offset: int) -> None:
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise RuntimeError("unexpected end of the rows file")
        done += got


def default_chunk_rows(raw: RawSource) -> int:
    """Rows per chunk so that one chunk of packed rows is about ``DEFAULT_CHUNK_BYTES``."""
    return max(1024, DEFAULT_CHUNK_BYTES // ted_layout(raw.observation_space, raw.action_space, raw.multiagent).row_bytes)


# --------------------------------------------------------------------------- conversion
def convert_to_dir(
    raw: RawSource, dest: Path, *, gamma: float, chunk_rows: int | None = None, allow_nan: bool = False
) -> dict[str, Any]:
    """Stream ``raw`` into ``dest/rows.memmap`` (packed TED rows); write and return ``dest/info.json``'s payload."""
    chunk_rows = int(chunk_rows or default_chunk_rows(raw))
    n = raw.transitions
    layout = ted_layout(raw.observation_space, raw.action_space, raw.multiagent)
    agent_reward_sum = np.zeros(int(raw.multiagent["n_agents"]) if raw.multiagent else 0)
    check_spaces(raw.path, raw.observation_space, raw.action_space, leaf_specs(raw.observation_space))
    dtypes = {f.key: np.dtype(f.dtype) for f in layout.fields}
    # One flat file of packed rows, written with pwrite (never through a mapping, so RSS stays bounded
    # by the chunk); it is opened later as a tensordict MemoryMappedTensor. No torch needed here.
    fd = os.open(dest / ROWS_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    os.ftruncate(fd, n * layout.row_bytes)
    R = layout.row_bytes
    stats = HealthStats()
    row = 0
    episode, step, prev_done = -1, -1, True
    try:
        try:
            for chunk in raw.iter_chunks(chunk_rows):
                m = len(chunk["reward"])
                if row + m > n:
                    raise RuntimeError(f"reader yielded more rows than it counted ({row + m} > {n})")
                term = np.asarray(chunk["terminated"], bool)
                trunc = np.asarray(chunk["truncated"], bool) & ~term
                done = term | trunc
                # Episode ids and in-episode steps, carried across chunk boundaries.
                starts = np.r_[prev_done, done[:-1]]
                ep = episode + np.cumsum(starts)
                idx = np.arange(m)
                last_start = np.maximum.accumulate(np.where(starts, idx, -1))
                st = np.where(last_start >= 0, idx - last_start, step + 1 + idx)
                episode, step, prev_done = int(ep[-1]), int(st[-1]), bool(done[-1])

                ted = {
                    "observation": chunk["observation"],
                    "next_observation": chunk["next_observation"],
                    "action": chunk["action"],
                    "reward": chunk["reward"],
                    "terminated": term,
                    "truncated": trunc,
                    "done": done,
                    "episode": ep,
                    "step": st,
                }
                for key in ("source_row", "next_source_row"):  # where a row came from, for error messages
                    if key in chunk:
                        ted[key] = chunk[key]
                stats.update(ted)
                if stats.nonfinite and not allow_nan:
                    key = next(iter(stats.nonfinite))
                    raise UserError(
                        f"{raw.path}: NaN/inf values in {key} ({stats.first_nonfinite}); fix the data or pass "
                        "--allow-nan (load_dataset(..., allow_nan=True)) to accept them"
                    )
                if raw.multiagent:
                    values = marl_values(chunk)
                    agent_reward_sum += np.nan_to_num(np.asarray(chunk["agent_reward"], np.float64)).sum(0)
                else:
                    values = {("observation", *p): v for p, v in tree_leaves(chunk["observation"])}
                    values.update(
                        {("next", "observation", *p): v for p, v in tree_leaves(chunk["next_observation"])}
                    )
                    values[("action",)] = chunk["action"]
                values.update(
                    {
                        ("next", "reward"): chunk["reward"],
                        ("next", "terminated"): term,
                        ("next", "truncated"): trunc,
                        ("next", "done"): done,
                        ("episode",): ep,
                        ("step",): st,
                    }
                )
                check_chunk_values(raw.path, values, dtypes, row, raw.action_space)
                try:
                    _pwrite_all(fd, layout.pack(values, m), row * R)
                except OSError as err:  # the cache's disk, not the source: never blame the source file
                    raise no_space_error(err, dest / ROWS_FILE) or err from None
                row += m
        except OSError as err:  # h5py raises OSError when a chunk of a damaged file cannot be read
            if err.errno in NO_SPACE_ERRNOS:
                raise
            raise UserError(
                f"{raw.path}: truncated or corrupt HDF5 data ({str(err).splitlines()[0] if str(err) else err}); "
                "re-create or re-download it"
            ) from None
        if row != n:
            raise RuntimeError(f"reader yielded {row} rows but counted {n}")

        # Monte-Carlo return-to-go, back to front: read rows, fill mc_return, write them back.
        carry = 0.0
        buf = np.empty((min(chunk_rows, n), R), dtype=np.uint8)
        for s in reversed(range(0, n, chunk_rows)):
            m = min(chunk_rows, n - s)
            part = buf[:m]
            _pread_into(fd, part, s * R)
            g, carry = discounted_returns(
                layout.np_view(part, ("next", "reward"))[:, 0],
                layout.np_view(part, ("next", "done"))[:, 0],
                gamma,
                carry,
            )
            layout.np_view(part, ("mc_return",))[:, 0] = g
            try:
                _pwrite_all(fd, part, s * R)
            except OSError as err:
                raise no_space_error(err, dest / ROWS_FILE) or err from None
        os.fsync(fd)  # the rows are on disk before info.json says the entry is complete
    finally:
        os.close(fd)
    os.chmod(dest / ROWS_FILE, 0o444)  # the cache is read-only data

    from minari.serialization import serialize_space  # minari's JSON form of gymnasium spaces

    obs_specs = leaf_specs(raw.observation_space)
    max_steps = raw.metadata.get("max_episode_steps")
    lengths, _, terminated = stats.episode_arrays()
    info = {
        "converter_version": CONVERTER_VERSION,
        "format": raw.format,
        "name": raw.name,
        "source": str(raw.path),
        "gamma": gamma,
        **stats.summary(),
        "source_rows": raw.source_rows,
        "dropped_rows": raw.dropped_rows,
        "had_next_observations": raw.had_next_observations,
        "observation_shape": (
            list(obs_specs[0][1])
            if obs_specs[0][0] == ()
            else {"/".join(p): list(s) for p, s, _ in obs_specs}
        ),
        "observation_dtype": (
            str(obs_specs[0][2]) if obs_specs[0][0] == () else {"/".join(p): str(d) for p, _, d in obs_specs}
        ),
        "action_space": space_summary(raw.action_space),
        "layout": layout.to_json(),
        "observation_space_json": serialize_space(raw.observation_space),
        "action_space_json": serialize_space(raw.action_space),
        "nonfinite": int(sum(stats.nonfinite.values())),
        "first_nonfinite": stats.first_nonfinite,
        "row_rules": raw.rules,
        "time_limit_warnings": time_limit_warnings(lengths, terminated, max_steps),
        "warnings": stats.warnings(
            max_episode_steps=max_steps,
            # Minari's next observations are the next row by construction; only a file's own
            # next_observations can disagree with it.
            had_next_observations=raw.had_next_observations and raw.format != "minari",
        ),
        "metadata": raw.metadata,
    }
    if raw.multiagent:  # per-agent episode returns: every row belongs to a finished episode
        episodes = max(int(lengths.size), 1)
        info["multiagent"] = {**raw.multiagent, "agent_return_mean": (agent_reward_sum / episodes).tolist()}
    info["rows_crc32"] = file_crc32(dest / ROWS_FILE)  # verified on load (offrl.data.cache_check)
    write_text_atomic(dest / "info.json", json.dumps(info, indent=1, default=_json_default))
    return info


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def build_cache(
    raw_factory: Any,
    files: list[Path],
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    gamma: float = 0.99,
    chunk_rows: int | None = None,
    allow_nan: bool = False,
) -> tuple[Path, str, bool]:
    """Return ``(entry dir, digest, converted_now)``, converting with ``raw_factory()`` on a cache miss.

    ``raw_factory`` validates and opens the source (a :class:`RawSource`); it is only called on a miss.
    """
    from filelock import FileLock

    root = cache_root(cache_dir)
    digest, remembered = _digest(files, root)
    key = cache_key(name, digest, gamma)
    final = root / "datasets" / key
    if (final / "info.json").is_file():
        problem = entry_problem(final, ROWS_FILE)  # size always; the checksum once per process
        if problem is None:
            if any((root / "datasets").glob(f".tmp-{key}-*")):  # a killed conversion's leftovers
                with FileLock(str(root / "locks" / f"{key}.lock")):
                    sweep_stale_builds(root / "datasets", key)
            if not remembered:
                remember_digest(files, root, digest)
            return final, digest, False
        warn_rebuild(final, problem, files[0])
    # Validate the source before touching the cache: a bad input leaves nothing behind.
    raw: RawSource = raw_factory()
    ensure_writable(root)
    with FileLock(str(root / "locks" / f"{key}.lock")):
        if (final / "info.json").is_file() and entry_problem(final, ROWS_FILE) is None:
            remember_digest(files, root, digest)  # another process finished (or rebuilt) it while we waited
            return final, digest, False
        sweep_stale_builds(root / "datasets", key)  # left by killed conversions of this entry
        tmp = root / "datasets" / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)
            info = convert_to_dir(raw, tmp, gamma=gamma, chunk_rows=chunk_rows, allow_nan=allow_nan)
            info["digest"] = digest
            write_text_atomic(tmp / "info.json", json.dumps(info, indent=1, default=_json_default))
            fsync_dir(tmp)
            if final.exists():  # a stale, incomplete or damaged entry: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(root / "datasets")
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            full = no_space_error(err, tmp / ROWS_FILE) if not isinstance(err, UserError) else None
            if full is not None:
                raise UserError(f"{full}; or pass --cache-dir DIR on a disk with room") from None
            raise
    mark_verified(final / ROWS_FILE)
    remember_digest(files, root, digest)
    return final, digest, True
