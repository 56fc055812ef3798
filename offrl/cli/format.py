"""How the CLI prints scores: numbers (``n/a`` when missing) and one line per finished run."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fmt", "score_line"]


def fmt(x: Any, spec: str = ".1f") -> str:
    """``x`` formatted with ``spec``; ``n/a`` for None or NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def score_line(summary: dict[str, Any], *, eval_interval: int | None = None) -> str:
    """``completed 5000 steps (312.4 updates/s): final return -412.3 (normalized 71.2), best ..., data ...``."""
    final, best = summary.get("final") or {}, summary.get("best") or {}
    data = summary.get("dataset") or {}
    parts = [f"{summary.get('status')} {summary.get('steps')} steps ({fmt(summary.get('updates_per_s'))} updates/s)"]
    if final:
        parts.append(f"final return {fmt(final.get('return_mean'))} (normalized {fmt(final.get('normalized_score'))})")
        parts.append(f"best {fmt(best.get('return_mean'))} at step {best.get('step')}")
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
