"""Reference scores: D4RL's table and the precedence that picks a dataset's ``(ref_min, ref_max)``.

``normalized = 100 * (R - ref_min) / (ref_max - ref_min)``. The references come from, in order of
precedence: the user (``--ref-min-score`` / ``--ref-max-score``), the dataset's own metadata (Minari's
``ref_min_score`` / ``ref_max_score``), then :data:`D4RL_REF_SCORES`, D4RL's ``REF_MIN_SCORE`` /
``REF_MAX_SCORE`` (``d4rl/infos.py``). The source is always reported.
"""

from __future__ import annotations

import re
from pathlib import Path

from offrl.errors import UserError

__all__ = ["D4RL_REF_SCORES", "VERSION_RE", "d4rl_candidates", "d4rl_reference", "known_env_references",
           "reference_scores"]


def _d4rl_table() -> dict[str, tuple[float, float]]:
    """D4RL's REF_MIN_SCORE / REF_MAX_SCORE (d4rl/infos.py), keyed by D4RL dataset name."""
    # One (min, max) per task: D4RL gives every dataset of a task the same references.
    per_task: dict[str, tuple[float, float]] = {
        "hopper": (-20.272305, 3234.3),
        "halfcheetah": (-280.178953, 12135.0),
        "walker2d": (1.629008, 4592.3),
        "ant": (-325.6, 3879.7),
        "pen": (96.262799, 3076.8331017826877),
        "hammer": (-274.856578, 12794.134825156867),
        "relocate": (-6.425911, 4233.877797728884),
        "door": (-56.512833, 2880.5693087298737),
        "bullet-halfcheetah": (-1275.766996, 2381.6725),
        "bullet-hopper": (20.058972, 1441.8059623430963),
        "bullet-ant": (373.705955, 2650.495),
        "bullet-walker2d": (16.523877, 1623.6476303317536),
    }
    table: dict[str, tuple[float, float]] = {}
    for task in ("hopper", "halfcheetah", "walker2d", "ant"):
        for dset in ("random", "medium", "expert", "medium-replay", "medium-expert"):
            table[f"{task}-{dset}-v0"] = per_task[task]
        for dset in ("random", "medium", "expert", "medium-replay", "full-replay", "medium-expert"):
            table[f"{task}-{dset}-v1"] = per_task[task]
            table[f"{task}-{dset}-v2"] = per_task[task]
    for task in ("pen", "hammer", "relocate", "door"):
        for dset in ("human", "cloned", "expert"):
            table[f"{task}-{dset}-v0"] = per_task[task]
            table[f"{task}-{dset}-v1"] = per_task[task]
    for task in ("bullet-halfcheetah", "bullet-hopper", "bullet-ant", "bullet-walker2d"):
        for dset in ("random", "medium", "expert", "medium-expert", "medium-replay"):
            table[f"{task}-{dset}-v0"] = per_task[task]
    for maze in ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"):
        table[f"antmaze-{maze}-v0"] = (0.0, 1.0)
        table[f"antmaze-{maze}-v2"] = (0.0, 1.0)
    for kitchen in ("complete", "partial", "mixed"):
        table[f"kitchen-{kitchen}-v0"] = (0.0, 4.0)
    table.update(
        {
            "maze2d-open-v0": (0.01, 20.66),
            "maze2d-umaze-v1": (23.85, 161.86),
            "maze2d-medium-v1": (13.13, 277.39),
            "maze2d-large-v1": (6.7, 273.99),
            "maze2d-open-dense-v0": (11.17817, 27.166538620695782),
            "maze2d-umaze-dense-v1": (68.537689, 193.66285642381482),
            "maze2d-medium-dense-v1": (44.264742, 297.4552547777125),
            "maze2d-large-dense-v1": (30.569041, 303.4857382709002),
            "minigrid-fourrooms-v0": (0.01442, 2.89685),
            "minigrid-fourrooms-random-v0": (0.01442, 2.89685),
            "flow-ring-random-v0": (-165.22, 24.42),
            "flow-ring-controller-v0": (-165.22, 24.42),
            "flow-merge-random-v0": (118.67993, 330.03179),
            "flow-merge-controller-v0": (118.67993, 330.03179),
            "carla-lane-v0": (-0.8503839912088142, 1023.5784385429523),
            "carla-town-v0": (-114.81579500772153, 2440.1772022247314),
            "bullet-maze2d-open-v0": (8.75, 64.15),
            "bullet-maze2d-umaze-v0": (32.46, 153.99),
            "bullet-maze2d-medium-v0": (14.87, 238.05),
            "bullet-maze2d-large-v0": (1.82, 285.92),
        }
    )
    return table


D4RL_REF_SCORES: dict[str, tuple[float, float]] = _d4rl_table()
"""``{d4rl dataset name: (ref_min_score, ref_max_score)}`` from D4RL's ``d4rl/infos.py``."""

VERSION_RE = re.compile(r"-v(\d+)$")
"""The ``-vN`` version suffix of a dataset name."""


def d4rl_candidates(name: str) -> list[str]:
    """Spellings of ``name`` to look up in the D4RL table, most specific first."""
    raw = str(name).strip()
    if raw.lower().startswith("d4rl/"):
        # Minari id "D4RL/door/human-v2" -> "door-human-v2"
        raw = raw[5:].replace("/", "-")
    base = Path(raw).name
    for suffix in (".hdf5", ".h5"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
    # D4RL's download files spell "hopper_medium_replay-v2.hdf5"; its dataset names use hyphens.
    key = base.lower().replace("_", "-")
    return [key] if VERSION_RE.search(key) else [key + "-v0", key]


def d4rl_reference(name: str | None) -> tuple[float, float] | None:
    """D4RL's (ref_min, ref_max) for a dataset name, file name or ``D4RL/...`` Minari id, or None.

    An exact name wins; otherwise the same task and dataset at any version (D4RL keeps a task's
    references across versions), e.g. Minari's ``D4RL/door/human-v2`` uses ``door-human-v1``.
    """
    if not name:
        return None
    for key in d4rl_candidates(name):
        if key in D4RL_REF_SCORES:
            return D4RL_REF_SCORES[key]
        stem = VERSION_RE.sub("", key)
        versions = sorted(
            (int(m.group(1)), k)
            for k in D4RL_REF_SCORES
            if (m := VERSION_RE.search(k)) and VERSION_RE.sub("", k) == stem
        )
        if versions:
            return D4RL_REF_SCORES[versions[-1][1]]
    return None


#: offrl's own references for the envs of its bundled datasets (``datasets/recipes.yaml``: a uniformly random
#: policy and the noise-free scripted expert, 100 episodes each), for users' files recorded in these envs.
ENV_REFERENCES: dict[str, tuple[float, float]] = {
    "CartPole-v1": (19.22, 500.0),
    "Pendulum-v1": (-1254.2405511321303, -147.68981386908766),
}


#: Gymnasium MuJoCo envs -> the D4RL task whose references (random and expert policies) apply to them.
D4RL_ENV_TASKS = {"Hopper": "hopper", "HalfCheetah": "halfcheetah", "Walker2d": "walker2d", "Ant": "ant"}


def known_env_references(env_id: str | None) -> tuple[float, float, str] | None:
    """``(min, max, what they are)`` offrl knows for an env: its own for Pendulum-v1 and CartPole-v1,
    D4RL's per-task table for the MuJoCo locomotion envs (Hopper, HalfCheetah, Walker2d, Ant, any version)."""
    if env_id in ENV_REFERENCES:
        lo, hi = ENV_REFERENCES[env_id]
        return lo, hi, f"random {lo:g}, scripted expert {hi:g}"
    task = D4RL_ENV_TASKS.get(VERSION_RE.sub("", str(env_id or "")))
    if task is not None:
        lo, hi = D4RL_REF_SCORES[f"{task}-medium-v2"]
        return lo, hi, f"D4RL's {task}: random {lo:g}, expert {hi:g}"
    return None


def suggested_references(env_id: str | None) -> str | None:
    """For data without references evaluated in an env offrl has references for: how to use them (offered,
    never applied silently: a score's references are always the user's, the file's or D4RL's)."""
    known = known_env_references(env_id)
    if known is None:
        return None
    lo, hi, what = known
    return (f"offrl's references for {env_id} ({what}): --ref-min-score {lo:g} "
            f"--ref-max-score {hi:g} (offrl datasets info), --set dataset.ref_min_score={lo:g} "
            f"--set dataset.ref_max_score={hi:g} (offrl train)")


def reference_scores(
    name: str | None,
    meta_min: float | None,
    meta_max: float | None,
    override_min: float | None = None,
    override_max: float | None = None,
) -> tuple[float | None, float | None, str | None]:
    """``(ref_min, ref_max, source)`` for normalizing scores on dataset ``name``.

    Each bound is taken from the first of: the user's override, the dataset metadata, the D4RL table.
    ``source`` is ``"user"``, ``"dataset metadata"``, ``"D4RL table"``, or None when no bound is known;
    when the two bounds come from different places both are named, e.g. ``"user + dataset metadata"``
    (a user who gives only ``--ref-max-score`` keeps the dataset's minimum).
    """
    table = d4rl_reference(name)
    candidates = [
        ("user", override_min, override_max),
        ("dataset metadata", meta_min, meta_max),
        ("D4RL table", *(table if table is not None else (None, None))),
    ]

    def first(index: int) -> tuple[float | None, str | None]:
        for source, *values in candidates:
            if values[index] is not None:
                return float(values[index]), source
        return None, None

    ref_min, min_source = first(0)
    ref_max, max_source = first(1)
    used = {min_source, max_source}
    sources = [source for source, *_ in candidates if source in used]  # in order of precedence
    source = " + ".join(sources) if sources else None
    if ref_min is not None and ref_max is not None and ref_max == ref_min:
        raise UserError(
            f"reference scores for {name or 'the dataset'} are equal ({ref_min}); "
            "pass distinct --ref-min-score and --ref-max-score"
        )
    return ref_min, ref_max, source
