"""From collector batches to dataset-layout rows: episode ids, step indices, Monte-Carlo returns, returns.

A torchrl collector yields ``frames_per_batch`` env steps at a time, cutting episodes anywhere. The offline
data (``OfflineDataset.data``) has one row per transition with ``episode``, ``step`` and ``mc_return`` (the
discounted return-to-go to the end of the episode). :class:`OnlineTransitions` gives online rows the same
layout, so offline and online rows can be sampled into one batch, and tracks the returns of the episodes
the collector finishes (the online metrics).

``mc_return`` needs the whole episode. With ``hold_episodes=True`` (what Cal-QL needs) rows wait until their
episode ends and then enter the buffer with their exact return-to-go (as the Cal-QL authors' code does,
collecting whole trajectories); with ``False`` they enter at once with ``mc_return = NaN``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

__all__ = ["TED_KEYS", "OnlineTransitions", "episode_returns", "rows_state"]

#: The transition keys every offrl buffer row has (torchrl's TED layout), besides episode/step/mc_return.
TED_KEYS: tuple[Any, ...] = (
    "observation", "action", ("next", "observation"), ("next", "reward"), ("next", "done"),
    ("next", "terminated"), ("next", "truncated"),
)
_TRAJ_KEY = ("collector", "traj_ids")


def discounted_return_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """``G_t = r_t + gamma * G_{t+1}`` to the end of ``rewards`` (float64 accumulation)."""
    out = np.empty(len(rewards), dtype=np.float64)
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = float(rewards[t]) + gamma * acc
        out[t] = acc
    return out


def episode_returns(rewards: np.ndarray, done: np.ndarray) -> list[float]:
    """Undiscounted returns of the complete episodes in a flat row sequence (ends at ``done``)."""
    ends = np.flatnonzero(done)
    starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else np.array([], dtype=np.int64)
    return [float(rewards[s:e + 1].sum()) for s, e in zip(starts, ends, strict=True)]


class OnlineTransitions:
    """Converts collector batches to rows with the offline data's keys, and keeps the episode statistics.

    Args:
        gamma: discount of ``mc_return`` (the dataset's ``info.gamma``).
        hold_episodes: keep rows until their episode ends, so ``mc_return`` is exact (Cal-QL); else rows
            pass at once with ``mc_return = NaN``.
        episode_offset: first online episode id (offline ids stay distinct when both share a buffer).
        ref: ``(ref_min, ref_max)`` for the normalized score of online episodes (None: NaN).
        template: an offline row (TensorDict) whose dtypes/shapes the online rows are cast to.
    """

    def __init__(self, gamma: float = 0.99, *, hold_episodes: bool = False, episode_offset: int = 0,
                 ref: tuple[float, float] | None = None, template: TensorDictBase | None = None) -> None:
        self.gamma = float(gamma)
        self.hold_episodes = bool(hold_episodes)
        self.ref = ref
        self.template = template
        self.next_episode = int(episode_offset)
        self.episodes = 0  # completed online episodes
        self.regret = 0.0  # sum over completed episodes of (1 - normalized score / 100)
        self.returns_total = 0.0
        self.best_return = -math.inf
        self._recent: list[float] = []  # returns of episodes finished since the last metrics()
        self._open: dict[int, dict[str, Any]] = {}  # per trajectory in progress: episode id, step, return, rows

    # ------------------------------------------------------------------------------------------ rows
    def push(self, data: TensorDictBase) -> TensorDictBase | None:
        """Take one collector batch (any batch shape); return the rows ready for the buffer (or None)."""
        data = data.reshape(-1)
        traj = data.get(_TRAJ_KEY, None)
        rows = data.select(*TED_KEYS, strict=True)
        done = rows.get(("next", "done")).reshape(-1).cpu().numpy()
        reward = rows.get(("next", "reward")).reshape(-1).double().cpu().numpy()
        traj_np = (traj.reshape(-1).cpu().numpy() if traj is not None else np.zeros(len(done), dtype=np.int64))
        ready: list[TensorDictBase] = []
        # rows of one trajectory are in time order; trajectories interleave only across envs/workers
        for tid in dict.fromkeys(traj_np.tolist()):
            idx = np.flatnonzero(traj_np == tid)
            # a trajectory id may cover several episodes when no ids are given: split after each done
            cuts = np.flatnonzero(done[idx]) + 1
            for seg in np.split(idx, cuts):
                if len(seg):
                    ready.extend(self._add_segment(int(tid), rows[torch.as_tensor(seg)], reward[seg],
                                                   bool(done[seg[-1]])))
        if not ready:
            return None
        out = torch.cat(ready, 0) if len(ready) > 1 else ready[0]
        return self._cast(out)

    def _add_segment(self, tid: int, rows: TensorDictBase, reward: np.ndarray, ends: bool) -> list[TensorDictBase]:
        state = self._open.get(tid)
        if state is None:
            state = {"episode": self.next_episode, "step": 0, "ret": 0.0, "rows": []}
            self.next_episode += 1
            self._open[tid] = state
        n = rows.shape[0]
        rows = rows.clone()
        rows.set("episode", torch.full((n,), state["episode"], dtype=torch.int64))
        rows.set("step", torch.arange(state["step"], state["step"] + n, dtype=torch.int64))
        state["step"] += n
        state["ret"] += float(reward.sum())
        out: list[TensorDictBase] = []
        if self.hold_episodes:
            state["rows"].append(rows)
        else:
            rows.set("mc_return", torch.full((n, 1), float("nan"), dtype=torch.float32))
            out.append(rows)
        if ends:
            del self._open[tid]
            self._finish(state["ret"])
            if self.hold_episodes:
                episode = torch.cat(state["rows"], 0)
                r = episode.get(("next", "reward")).reshape(-1).double().cpu().numpy()
                episode.set("mc_return", torch.as_tensor(discounted_return_to_go(r, self.gamma),
                                                         dtype=torch.float32).reshape(-1, 1))
                out.append(episode)
        return out

    def _cast(self, rows: TensorDictBase) -> TensorDictBase:
        """Match the offline rows' dtypes and trailing shapes (e.g. int64 action indices, [N,1] flags)."""
        if self.template is None:
            return rows
        n = rows.shape[0]
        out = TensorDict({}, batch_size=[n])
        for key in self.template.keys(True, True):
            ref = self.template.get(key)
            value = rows.get(key)
            out.set(key, value.reshape(n, *ref.shape[1:]).to(ref.dtype))
        return out

    # --------------------------------------------------------------------------------------- metrics
    def _finish(self, ret: float) -> None:
        self.episodes += 1
        self.returns_total += ret
        self.best_return = max(self.best_return, ret)
        self._recent.append(ret)
        score = self.normalized(ret)
        if not math.isnan(score):
            self.regret += 1.0 - score / 100.0

    def normalized(self, ret: float) -> float:
        """``100 * (R - ref_min) / (ref_max - ref_min)``, NaN without references."""
        if self.ref is None or self.ref[0] is None or self.ref[1] is None:
            return float("nan")
        lo, hi = float(self.ref[0]), float(self.ref[1])
        return 100.0 * (ret - lo) / (hi - lo)

    def metrics(self) -> dict[str, float]:
        """``online_return_mean`` / ``online_normalized_score`` of the episodes finished since the last call
        (absent if none), and the running ``online_episodes``, ``online_regret`` (cumulative regret: the sum
        over online episodes of 1 - normalized/100) and ``online_regret_mean`` (its mean per episode)."""
        out: dict[str, float] = {"online_episodes": float(self.episodes)}
        if self._recent:
            mean = float(np.mean(self._recent))
            out["online_return_mean"] = mean
            out["online_normalized_score"] = self.normalized(mean)
            self._recent = []
        if self.ref is not None and self.episodes:
            out["online_regret"] = self.regret
            out["online_regret_mean"] = self.regret / self.episodes
        return out

    # ------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Counters, statistics and the episodes in progress (trajectory id, episode id, step, return so
        far, and with ``hold_episodes`` their rows): a resume whose collector continues those episodes
        (the synchronous one) finishes them as an uninterrupted run would; else :meth:`drop_open`."""
        open_episodes = [{"traj": int(tid), "episode": int(st["episode"]), "step": int(st["step"]),
                          "ret": torch.tensor(st["ret"], dtype=torch.float64),
                          "rows": rows_state(torch.cat(st["rows"], 0)) if st["rows"] else {}}
                         for tid, st in self._open.items()]
        return {"next_episode": self.next_episode, "episodes": self.episodes, "regret": self.regret,
                "returns_total": self.returns_total, "best_return": self.best_return,
                "recent": torch.tensor(self._recent, dtype=torch.float64), "open": open_episodes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_episode = int(state["next_episode"])
        self.episodes = int(state["episodes"])
        self.regret = float(state["regret"])
        self.returns_total = float(state["returns_total"])
        self.best_return = float(state["best_return"])
        self._recent = [float(x) for x in torch.as_tensor(state["recent"]).tolist()]
        self._open = {}
        for entry in state.get("open") or []:
            rows = []
            if entry["rows"]:
                td = TensorDict(entry["rows"])
                td.batch_size = [next(iter(td.values(True, True))).shape[0]]
                rows = [td]
            self._open[int(entry["traj"])] = {"episode": int(entry["episode"]), "step": int(entry["step"]),
                                              "ret": float(torch.as_tensor(entry["ret"]).item()), "rows": rows}

    def drop_open(self) -> None:
        """Forget the episodes in progress: the collector starts new ones (their env state is gone), so
        those rows would never end."""
        self._open = {}


def rows_state(td: TensorDictBase) -> dict[str, Any]:
    """Plain nested dict of in-memory tensor copies, copied out of any memmap (``torch.save`` cannot pickle
    a memory map; ``torch.load(weights_only=True)`` reads the result)."""
    return {key: (rows_state(value) if isinstance(value, TensorDictBase)
                  else value.detach().clone().as_subclass(torch.Tensor))
            for key, value in td.items()}
