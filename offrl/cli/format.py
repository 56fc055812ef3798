"""How the CLI prints scores: numbers (``n/a`` when missing) and one line per finished run."""

from __future__ import annotations

import argparse
import math
from typing import Any

__all__ = ["ci_text", "critic_line", "fmt", "longer_run_hint", "non_negative_int", "positive_int", "score_line",
           "trend_text"]


def fmt(x: Any, spec: str = ".1f") -> str:
    """``x`` formatted with ``spec``; ``n/a`` for None or NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def ci_text(interval: Any, episodes: Any = None) -> str:
    """`` [low, high]`` (a 95% interval); `` (n/a, 1 episode)`` where there is none; empty when unknown."""
    low, high = (list(interval) + [None, None])[:2] if isinstance(interval, (list, tuple)) else (None, None)
    if low is not None and high is not None:
        return f" [{fmt(low)}, {fmt(high)}]"
    return " (95% CI n/a, 1 episode)" if episodes == 1 else ""


def critic_line(summary: dict[str, Any]) -> str | None:
    """``critic: under-estimates by 89.1 (V(s0) 9.9 vs achieved 99.0, 90% below) at step 5000``, or None."""
    critic = summary.get("critic") or {}
    if not critic.get("finding"):
        return None
    return f"critic: {critic['finding']} at step {critic.get('step')}"


def score_line(summary: dict[str, Any], *, eval_interval: int | None = None) -> str:
    """``completed 5000 steps (312.4 updates/s): final return -163.2 [-190.1, -136.3] over 20 episodes
    (normalized 96.3 [94.3, 98.2]), mean of last 5 evaluations 91.0, best 100.5 at step 4000, ...``.
    Brackets: Student-t 95% interval over the final evaluation's episodes."""
    final, best = summary.get("final") or {}, summary.get("best") or {}
    data = summary.get("dataset") or {}
    parts = [f"{summary.get('status')} {summary.get('steps')} steps ({fmt(summary.get('updates_per_s'))} updates/s)"]
    if final:
        episodes = final.get("episodes")
        over = f" over {episodes} episode{'s' if episodes != 1 else ''}" if episodes else ""
        text = f"final return {fmt(final.get('return_mean'))}{ci_text(final.get('return_ci95'), episodes)}{over}"
        if final.get("normalized_score") is not None:
            text += f" (normalized {fmt(final.get('normalized_score'))}{ci_text(final.get('normalized_ci95'))})"
        else:
            text += " (normalized n/a: no reference scores)"
        parts.append(text)
        recent = summary.get("last_evals") or {}
        if (recent.get("evaluations") or 0) > 1:
            key = "normalized_score" if recent.get("normalized_score") is not None else "return_mean"
            parts.append(f"mean of last {recent['evaluations']} evaluations {fmt(recent.get(key))}"
                         + (" normalized" if key == "normalized_score" else ""))
        trend = trend_text(summary.get("trend"))
        if trend:
            parts.append(trend)
        best_key = "normalized_score" if best.get("normalized_score") is not None else "return_mean"
        parts.append(f"best {fmt(best.get(best_key))}{' normalized' if best_key == 'normalized_score' else ''} "
                     f"at step {best.get('step')}")
        selected = summary.get("selected")
        if selected:
            parts[-1] += " (optimistic: picked on the evaluation episodes)"
            parts.append(f"selected by {selected.get('by')} {fmt(selected.get('return_mean'))} "
                         f"(normalized {fmt(selected.get('normalized_score'))}) at step {selected.get('step')}")
    elif eval_interval == 0:
        parts.append("no evaluation (eval.interval is 0: --eval-every N evaluates every N steps)")
    elif eval_interval is not None and summary.get("status") != "completed":
        parts.append(f"no evaluation yet (every {eval_interval} steps)")
    else:
        parts.append("no evaluation")
    parts.append(f"dataset mean return {fmt(data.get('mean_return'))}")
    return ": ".join(parts[:1]) + ": " + ", ".join(parts[1:])


def trend_text(trend: dict[str, Any] | None) -> str | None:
    """``last third +5.7 [+2.2, +9.2] normalized: still rising (more steps may score higher)``: the trend of
    the score over the last third of the run (summary.json's ``trend``, or the mean over seeds), or None
    where it has no interval (too few evaluations to say anything)."""
    given = lambda x: x is not None and not (isinstance(x, float) and math.isnan(x))  # noqa: E731
    low, high = (list((trend or {}).get("ci95") or []) + [None, None])[:2]
    if not trend or not (given(trend.get("change")) and given(low) and given(high)):
        return None
    unit = " normalized" if trend.get("unit") == "normalized_score" else ""
    reading = trend.get("reading")
    advice = {"still rising": " (more steps may score higher)",
              "unclear": " (too noisy to tell: evaluate more often or run more seeds)"}.get(reading, "")
    return (f"last third {fmt(trend['change'], '+.1f')} [{fmt(low, '+.1f')}, {fmt(high, '+.1f')}]{unit}: "
            f"{reading}{advice}")


def longer_run_hint(summary: dict[str, Any], run_dir: Any) -> str | None:
    """For an offline run that completed while its score still rose over its last third: the command that
    continues it to twice its steps from its checkpoint (``--resume``), else None."""
    if summary.get("status") != "completed" or (summary.get("trend") or {}).get("reading") != "still rising":
        return None
    if summary.get("online") or not summary.get("steps"):
        return None  # an online phase's budget is env frames: --online-steps, not --steps
    steps = 2 * int(summary["steps"])
    return (f"offrl: note: the score still rises over the last third of the run; continue it to {steps} steps "
            f"with: offrl train --resume {run_dir} --steps {steps} --force")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or positive, got {value}")
    return value
