"""Health checks on converted transitions: warnings a user should read before training on a dataset.

Computed chunk by chunk (:class:`HealthStats` is fed the chunks the converter writes, or the slices of a
converted TensorDict by :func:`check`), so memory stays bounded by the chunk, not the dataset. The same
pass gathers the episode and reward statistics shown by ``offrl datasets info``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tensordict import TensorDictBase

__all__ = ["HealthStats", "check", "REWARD_SCALE_LIMIT", "time_limit_warnings", "length_counts", "from_length_counts"]

REWARD_SCALE_LIMIT = 1_000.0  # |reward| above this usually needs scaling for Q-learning


_SHOWN = {
    "observation": "observations",
    "next_observation": "next_observations",
    "action": "actions",
    "reward": "rewards",
}


def _first_bad(arr: np.ndarray) -> tuple[int, str, str] | None:
    """``(row, column text, "NaN" | "inf" | "-inf")`` of the first non-finite value of ``arr`` (rows first)."""
    bad = ~np.isfinite(arr.reshape(arr.shape[0], -1))
    rows = np.flatnonzero(bad.any(axis=1))
    if rows.size == 0:
        return None
    row = int(rows[0])
    col = int(np.argmax(bad[row]))
    value = float(arr.reshape(arr.shape[0], -1)[row, col])
    kind = "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    if arr.ndim <= 1:
        return row, "", kind
    index = np.unravel_index(col, arr.shape[1:])
    text = str(int(index[0])) if len(index) == 1 else str(tuple(int(i) for i in index))
    return row, f", column {text}", kind


def _leaves(tree: Any, prefix: str) -> list[tuple[str, np.ndarray]]:
    if isinstance(tree, dict):
        out = []
        for key, sub in tree.items():
            out.extend(_leaves(sub, f"{prefix}.{key}"))
        return out
    return [(prefix, tree)]


class HealthStats:
    """Streaming statistics over TED chunks (numpy dicts with the keys the converter writes).

    A chunk holds ``observation`` / ``next_observation`` (array or nested dict), ``action``, ``reward``,
    ``terminated``, ``truncated``, ``done`` (``[n]``), ``episode`` and ``step`` (``[n]``).
    """

    def __init__(self) -> None:
        self.transitions = 0
        self.nonfinite: dict[str, int] = {}
        self.ep_lengths: list[np.ndarray] = []
        self.ep_returns: list[np.ndarray] = []
        self.ep_terminated: list[np.ndarray] = []
        self._open_return = 0.0  # reward summed so far in the episode that spans chunk boundaries
        self.reward_sum = 0.0
        self.reward_sumsq = 0.0
        self.reward_min = np.inf
        self.reward_max = -np.inf
        self.consecutive_terminals = 0
        self.next_obs_mismatch = 0
        self._first_mismatch: int | None = None
        self._last: dict[str, Any] | None = None  # last row of the previous chunk
        self._col_min: dict[str, np.ndarray] = {}
        self._col_max: dict[str, np.ndarray] = {}
        self.first_nonfinite: str | None = None  # "observations row 7, column 2 is NaN"

    # ------------------------------------------------------------------ feeding
    def update(self, chunk: dict[str, Any]) -> None:
        n = len(chunk["reward"])
        if n == 0:
            return
        reward = np.asarray(chunk["reward"], dtype=np.float64)
        term, done = chunk["terminated"], chunk["done"]
        for name, arr in (
            *_leaves(chunk["observation"], "observation"),
            *_leaves(chunk["next_observation"], "next_observation"),
            ("action", chunk["action"]),
            ("reward", reward),
        ):
            if arr.dtype.kind == "f":
                bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
                if bad:
                    self.nonfinite[name] = self.nonfinite.get(name, 0) + bad
        if self.nonfinite and self.first_nonfinite is None:
            self.first_nonfinite = _locate_nonfinite(chunk, reward, self.transitions)
        for name, arr in (*_leaves(chunk["observation"], "observation"), ("action", chunk["action"])):
            if arr.dtype.kind in "fiub" and arr.ndim >= 1:
                flat = arr.reshape(n, -1)
                if flat.dtype.kind == "f":
                    with np.errstate(invalid="ignore"), warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
                        lo, hi = np.nanmin(flat, axis=0), np.nanmax(flat, axis=0)
                else:
                    lo, hi = flat.min(axis=0), flat.max(axis=0)
                if name in self._col_min:
                    self._col_min[name] = np.fmin(self._col_min[name], lo)
                    self._col_max[name] = np.fmax(self._col_max[name], hi)
                else:
                    self._col_min[name], self._col_max[name] = lo, hi

        finite = reward[np.isfinite(reward)]
        if finite.size:
            self.reward_sum += float(finite.sum())
            self.reward_sumsq += float(np.square(finite).sum())
            self.reward_min = min(self.reward_min, float(finite.min()))
            self.reward_max = max(self.reward_max, float(finite.max()))

        # Episode returns: cumulative reward, read off at episode ends.
        csum = np.cumsum(np.nan_to_num(reward)) + self._open_return
        ends = np.flatnonzero(done)
        if ends.size:
            totals = csum[ends]
            self.ep_returns.append(np.diff(totals, prepend=0.0))
            self.ep_lengths.append(np.asarray(chunk["step"])[ends] + 1)
            self.ep_terminated.append(np.asarray(term)[ends].astype(bool))
            self._open_return = float(csum[-1] - totals[-1])
        else:
            self._open_return = float(csum[-1])

        # Terminal flags on consecutive rows (one-step "episodes" back to back).
        prev_term = np.r_[self._last["terminated"] if self._last else False, term[:-1]]
        self.consecutive_terminals += int(np.count_nonzero(prev_term & term))

        # next_observation[i] should equal observation[i + 1] inside an episode (the row before this
        # chunk, kept in self._last, is compared with this chunk's first row).
        next_leaves = dict(_leaves(chunk["next_observation"], "o"))
        obs_leaves = dict(_leaves(chunk["observation"], "o"))
        inside = ~np.asarray(done[:-1], bool)
        mismatch = np.zeros(n, bool)  # row i of this chunk: its next observation disagrees with row i + 1
        if n > 1:
            for key, nxt in next_leaves.items():
                mismatch[:-1] |= inside & ~_rows_close(nxt[:-1], obs_leaves[key][1:])
        if self._last is not None and not self._last["done"]:
            if any(
                not _rows_close(nxt[None], obs_leaves[key][:1])[0]
                for key, nxt in self._last["next_observation"].items()
            ):
                self.next_obs_mismatch += 1
                if self._first_mismatch is None:
                    self._first_mismatch = self.transitions - 1
        count = int(mismatch.sum())
        if count and self._first_mismatch is None:
            self._first_mismatch = self.transitions + int(np.argmax(mismatch))
        self.next_obs_mismatch += count

        self._last = {
            "terminated": bool(term[-1]),
            "done": bool(done[-1]),
            "next_observation": {k: v[-1] for k, v in next_leaves.items()},
        }
        self.transitions += n

    # ------------------------------------------------------------------ results
    def episode_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
        return cat(self.ep_lengths, np.int64), cat(self.ep_returns, np.float64), cat(self.ep_terminated, bool)

    def summary(self) -> dict[str, Any]:
        """Counts, (min, mean, max) statistics, the return distribution and the episode-length counts."""
        lengths, returns, terminated = self.episode_arrays()
        n = max(self.transitions, 1)
        mean = self.reward_sum / n
        var = max(self.reward_sumsq / n - mean * mean, 0.0)

        def mmm(x: np.ndarray) -> dict[str, float]:
            if x.size == 0:
                return {"min": float("nan"), "mean": float("nan"), "max": float("nan")}
            return {"min": float(x.min()), "mean": float(x.mean()), "max": float(x.max())}

        return {
            "transitions": self.transitions,
            "episodes": int(lengths.size),
            "terminated": int(terminated.sum()),
            "truncated": int(lengths.size - terminated.sum()),
            "episode_length": mmm(lengths.astype(np.float64)),
            "episode_return": mmm(returns),
            "episode_return_distribution": distribution(returns),
            "episode_length_counts": length_counts(lengths, terminated),
            "reward": {
                "min": float(self.reward_min) if self.transitions else float("nan"),
                "mean": float(mean),
                "max": float(self.reward_max) if self.transitions else float("nan"),
                "std": float(np.sqrt(var)),
            },
        }

    def warnings(
        self, *, max_episode_steps: int | None = None, had_next_observations: bool = False
    ) -> list[str]:
        """Human-readable warnings, one line each."""
        out: list[str] = []
        lengths, _, terminated = self.episode_arrays()
        for name, count in self.nonfinite.items():
            out.append(f"{count} NaN/inf values in {name}")
        if lengths.size >= 2 and terminated.all() and np.unique(lengths).size == 1:
            out.append(
                f"all {lengths.size} episodes end with terminated=True at length {int(lengths[0])}: "
                "these look like time limits mislabelled as terminals (they should be timeouts/truncations)"
            )
        elif max_episode_steps and np.count_nonzero(terminated & (lengths >= max_episode_steps)):
            k = int(np.count_nonzero(terminated & (lengths >= max_episode_steps)))
            out.append(
                f"{k} episodes end with terminated=True at the time limit (max_episode_steps={max_episode_steps}): "
                "likely time limits mislabelled as terminals"
            )
        if self.consecutive_terminals:
            out.append(f"{self.consecutive_terminals} terminal flags on consecutive rows (one-step episodes)")
        if had_next_observations and self.next_obs_mismatch:
            out.append(
                f"{self.next_obs_mismatch} next_observations differ from the next row inside an episode "
                f"(first at transition {self._first_mismatch}): episode boundaries or next_observations look wrong"
            )
        out += time_limit_warnings(lengths, terminated, max_episode_steps)
        if self.transitions >= 2:
            for name, lo in self._col_min.items():
                hi = self._col_max[name]
                const = np.flatnonzero(lo == hi)
                if const.size:
                    cols = ", ".join(str(int(c)) for c in const[:8]) + (", ..." if const.size > 8 else "")
                    out.append(f"{const.size} constant {name} column(s) [{cols}] carry no information")
        scale = max(abs(self.reward_min), abs(self.reward_max)) if self.transitions else 0.0
        if np.isfinite(scale) and scale > REWARD_SCALE_LIMIT:
            out.append(f"very large reward scale (|reward| up to {scale:.4g}): consider scaling rewards")
        return out


def time_limit_warnings(lengths: np.ndarray, terminated: np.ndarray, max_episode_steps: int | None) -> list[str]:
    """Episode lengths against the env's time limit: episodes longer than it, or every cut at another length."""
    if not max_episode_steps:
        return []
    over = int(np.count_nonzero(lengths > max_episode_steps))
    if over:
        return [
            f"{over} episodes are longer than the env's max_episode_steps={max_episode_steps}: "
            "timeouts disagree with the env's time limit"
        ]
    trunc = lengths[~terminated]
    cut_elsewhere = trunc.size >= 2 and np.unique(trunc).size == 1
    if cut_elsewhere and trunc[0] not in (max_episode_steps, max_episode_steps - 1):
        return [
            f"all {trunc.size} truncated episodes have length {int(trunc[0])} but the env's "
            f"max_episode_steps is {max_episode_steps}: timeouts disagree with the env's time limit"
        ]
    return []


def distribution(x: np.ndarray) -> dict[str, float]:
    """min / quartiles / max of ``x`` (NaN when empty)."""
    if x.size == 0:
        return {k: float("nan") for k in ("min", "q25", "median", "q75", "max")}
    q = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])
    return dict(zip(("min", "q25", "median", "q75", "max"), (float(v) for v in q), strict=True))


def length_counts(lengths: np.ndarray, terminated: np.ndarray) -> dict[str, dict[str, int]]:
    """``{"terminated": {length: count}, "truncated": {...}}``: enough to re-check a time limit later."""
    out: dict[str, dict[str, int]] = {}
    for key, mask in (("terminated", terminated), ("truncated", ~terminated)):
        values, counts = np.unique(lengths[mask], return_counts=True)
        out[key] = {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}
    return out


def from_length_counts(counts: dict[str, dict[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`length_counts`: ``(lengths, terminated)`` arrays (episode order lost)."""
    lengths, terminated = [], []
    for key in ("terminated", "truncated"):
        for length, count in (counts.get(key) or {}).items():
            lengths += [int(length)] * int(count)
            terminated += [key == "terminated"] * int(count)
    return np.asarray(lengths, np.int64), np.asarray(terminated, bool)


def _locate_nonfinite(chunk: dict[str, Any], reward: np.ndarray, offset: int) -> str | None:
    """The first non-finite value of a chunk, named by its source row when the reader gave them.

    ``source_row`` (and ``next_source_row``, when a next observation is a row of ``observations``) map a
    chunk row to the row of the file; otherwise rows count converted transitions.
    """
    src = chunk.get("source_row")
    nxt_src = chunk.get("next_source_row")
    found: list[tuple[int, int, str]] = []
    order = 0
    for leaf, arr in (
        *_leaves(chunk["observation"], "observation"),
        ("action", chunk["action"]),
        ("reward", reward),
        *_leaves(chunk["next_observation"], "next_observation"),
    ):
        order += 1
        if arr.dtype.kind != "f":
            continue
        hit = _first_bad(arr)
        if hit is None:
            continue
        row, col, kind = hit
        head, _, sub = leaf.partition(".")
        if head == "next_observation" and nxt_src is not None:
            shown, at = _SHOWN["observation"], int(nxt_src[row])
        else:
            shown = _SHOWN[head]
            at = int(src[row]) if src is not None else offset + row
        name = f"{shown}/{sub.replace('.', '/')}" if sub else shown
        found.append((at, order, f"{name} row {at}{col} is {kind}"))
    return min(found)[2] if found else None


def _rows_close(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise: are ``a[i]`` and ``b[i]`` equal up to float tolerance?"""
    n = a.shape[0]
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        close = np.isclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
    else:
        close = a == b
    return close.reshape(n, -1).all(axis=1)


def _to_numpy(tree: Any) -> Any:
    from tensordict import TensorDictBase

    if isinstance(tree, TensorDictBase):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return tree.detach().cpu().numpy()


def ted_chunk(td: TensorDictBase) -> dict[str, Any]:
    """A TED TensorDict slice → the numpy chunk :class:`HealthStats` reads (multi-agent data: the
    agents' observations and actions, with their agent axis)."""
    group = ("agents",) if "observation" not in td.keys() and ("agents", "observation") in td.keys(True) else ()
    obs = td.get((*group, "observation"))
    nxt = td.get(("next", *group, "observation"))
    return {
        "observation": _to_numpy(obs),
        "next_observation": _to_numpy(nxt),
        "action": td.get((*group, "action")).cpu().numpy(),
        "reward": td.get(("next", "reward")).reshape(-1).cpu().numpy(),
        "terminated": td.get(("next", "terminated")).reshape(-1).cpu().numpy(),
        "truncated": td.get(("next", "truncated")).reshape(-1).cpu().numpy(),
        "done": td.get(("next", "done")).reshape(-1).cpu().numpy(),
        "episode": td.get("episode").cpu().numpy(),
        "step": td.get("step").cpu().numpy(),
    }


def check(
    data: TensorDictBase,
    *,
    max_episode_steps: int | None = None,
    had_next_observations: bool = False,
    chunk_size: int = 65_536,
) -> list[str]:
    """Health warnings for a converted (TED) TensorDict, computed ``chunk_size`` rows at a time."""
    stats = HealthStats()
    n = data.batch_size[0]
    for s in range(0, n, chunk_size):
        stats.update(ted_chunk(data[s : s + chunk_size]))
    return stats.warnings(max_episode_steps=max_episode_steps, had_next_observations=had_next_observations)
