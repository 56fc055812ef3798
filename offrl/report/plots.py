"""PNG figures of a report (matplotlib, Agg backend: no display needed).

Every figure has one row (or panel) per dataset, one colour per group (consistent across figures), and is
written atomically. Figures whose columns no run logged are skipped rather than drawn empty, and a dataset
whose algorithms lack a quantity (discrete CQL has no actor loss and no alpha) gets no panel for it. Grids
wrap at three panels (``MAX_COLS``), so at ``DPI`` a figure is at most ~1,300 px wide and shows unscaled in
a 1,400 px window. Legends sit below the panels (figure legends), never on the curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from offrl.fsio import atomic_write  # noqa: E402
from offrl.report.aggregate import Group, curve, online_switch  # noqa: E402
from offrl.report.stats import DEFAULT_INTERVAL, interval_name  # noqa: E402

__all__ = ["Figure", "colours", "plot_alpha", "plot_diagnostics", "plot_losses", "plot_scores"]

DPI = 100
MAX_COLS = 3


class Figure:
    """A written PNG: its path and a one-line caption for the HTML; ``panels`` (title, lines drawn) and
    ``legend_clear`` (the legend overlaps no panel) and ``legend`` (its labels) describe what was drawn,
    for checks."""

    def __init__(self, path: Path, title: str, caption: str, drawn: Any = None) -> None:
        self.path, self.title, self.caption = path, title, caption
        self.panels, self.legend_clear, self.legend = drawn or ([], True, [])


def colours(groups: Sequence[Group]) -> dict[str, tuple[float, ...]]:
    """A stable colour per group label (tab10, by sorted label)."""
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(sorted({g.label for g in groups}))}


def _save(fig: plt.Figure, path: Path) -> tuple[list[tuple[str, int]], bool, list[str]]:
    """Write the PNG; returns each visible panel's (title, lines drawn), whether the legends overlap no
    panel (measured on the drawn figure) and the legend labels."""
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"), fsync=False)
        axes = [ax for ax in fig.axes if ax.get_visible()]
        panels = [(ax.get_title().replace("\n", " · "), len(ax.lines)) for ax in axes]
        renderer = fig.canvas.get_renderer()
        boxes = [ax.get_window_extent(renderer) for ax in axes]
        legends = [*fig.legends, *(ax.get_legend() for ax in axes if ax.get_legend() is not None)]
        clear = not any(leg.get_window_extent(renderer).overlaps(box) for leg in legends for box in boxes)
        return panels, clear, [t.get_text() for leg in legends for t in leg.get_texts()]
    finally:
        plt.close(fig)


def _cells(groups: Sequence[Group], panels: Sequence[Any], has: Any) -> tuple[list[tuple[str, Any]], int]:
    """(dataset, panel) cells and the column count: per dataset only the panels it has data for, each
    dataset starting a row, rows wrapped at ``MAX_COLS``; ``("", None)`` cells are left blank."""
    per_ds = [(ds, [p for p in panels if has([g for g in groups if g.dataset == ds], p)]) for ds in _datasets(groups)]
    cols = min(MAX_COLS, max((len(mine) for _, mine in per_ds), default=1) or 1)
    cells: list[tuple[str, Any]] = []
    for ds, mine in per_ds:
        cells += [(ds, p) for p in mine] + [("", None)] * (-len(mine) % cols)
    while cells and cells[-1][1] is None:
        cells.pop()
    return cells, cols


def _layout(cells: Sequence[tuple[str, Any]], cols: int, width: float, height: float) -> tuple[plt.Figure, list[plt.Axes]]:
    rows = max(1, math.ceil(len(cells) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.6), squeeze=False,
                             layout="constrained")
    flat = list(axes.flat)
    for ax, (_, panel) in zip(flat, list(cells) + [("", None)] * (len(flat) - len(cells)), strict=True):
        if panel is None:
            ax.set_visible(False)
    return fig, flat


def _group_handles(groups: Sequence[Group], colour: dict[str, Any], label: Any = None) -> list[Line2D]:
    seen: dict[str, Line2D] = {}
    for g in groups:
        seen.setdefault(g.label, Line2D([], [], color=colour[g.label], lw=2.5, label=label(g) if label else g.label))
    return list(seen.values())


def _figure_legend(fig: plt.Figure, handles: Sequence[Line2D]) -> None:
    if handles:
        fig.legend(handles=list(handles), loc="outside lower center", ncol=min(len(handles), 4), fontsize=8,
                   frameon=False)


def _datasets(groups: Sequence[Group]) -> list[str]:
    return sorted({g.dataset for g in groups})


def _has(groups: Sequence[Group], column: str) -> bool:
    return any(column in r.metrics.columns and r.metrics[column].notna().any() for g in groups for r in g.runs)


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _mark_online(ax: plt.Axes, groups: Sequence[Group]) -> None:
    switches = [s for s in (online_switch(g) for g in groups) if s is not None]
    if switches:
        ax.axvline(min(switches), color="0.3", ls="--", lw=1)
        ax.annotate("online →", (min(switches), 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", fontsize=8, color="0.3")


def _behaviour(members: Sequence[Group]) -> float | None:
    """The dataset's behaviour-policy mean return, in the unit of the panel (normalized when it is)."""
    runs = [r for g in members for r in g.runs if np.isfinite(r.behaviour_return)]
    if not runs:
        return None
    value = float(np.mean([r.behaviour_return for r in runs]))
    if members[0].unit.normalized:
        ref = next((r.ref() for r in runs if r.ref().get("min") is not None), None)
        if not ref or ref["max"] == ref["min"]:
            return None
        value = 100.0 * (value - float(ref["min"])) / (float(ref["max"]) - float(ref["min"]))
    return value


def plot_scores(groups: Sequence[Group], out: Path, *, smooth: int = 1, interval: str = DEFAULT_INTERVAL) -> Figure:
    """Score vs gradient step per dataset (the per-dataset panel): mean over seeds with a 95% CI band."""
    datasets = _datasets(groups)
    colour = colours(groups)
    rows, cols = _grid(len(datasets))
    fig, axes = plt.subplots(rows, cols, figsize=(max(7.5, 4.3 * cols), 3.4 * rows + 0.6), squeeze=False,
                             layout="constrained")
    extra: dict[str, Line2D] = {}
    for ax, ds in zip(axes.flat, datasets, strict=False):  # a grid may have spare cells
        members = [g for g in groups if g.dataset == ds]
        for g in members:
            c = curve(g, g.unit.column, smooth=smooth, interval=interval)
            if not len(c):
                continue
            ax.plot(c["step"], c["mean"], color=colour[g.label], lw=1.8, marker="o" if len(c) < 3 else None, ms=4)
            ax.fill_between(c["step"], c["low"], c["high"], color=colour[g.label], alpha=0.2, lw=0)
        beh = _behaviour(members)
        if beh is not None:
            ax.axhline(beh, color="0.35", ls=":", lw=1.2)
            extra["beh"] = Line2D([], [], color="0.35", ls=":", lw=1.2, label="behaviour policy (dataset)")
        _mark_online(ax, members)
        ax.set_title(ds, fontsize=10)
        ax.set_xlabel("gradient step")
        ax.set_ylabel(members[0].unit.label if members else "", fontsize=8)
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "no evaluation logged yet", ha="center", va="center", transform=ax.transAxes, color="0.4")
    for ax in list(axes.flat)[len(datasets):]:
        ax.set_visible(False)
    label = {g.label: f"{g.label} (n={g.status_text})" for g in groups if len(curve(g, g.unit.column, ci=False))}
    handles = [h for h in _group_handles(groups, colour, lambda g: label.get(g.label, g.label)) if h.get_label()
               in label.values()]
    _figure_legend(fig, handles + list(extra.values()))
    method = interval_name(interval)
    fig.suptitle(f"Evaluation score (mean over seeds, 95% {method} CI)", fontsize=11)
    path = out / "scores.png"
    drawn_info = _save(fig, path)
    smooth_note = f", each run smoothed over {smooth} evaluations" if smooth > 1 else ""
    return Figure(path, "Learning curves",
                  f"Deterministic-policy evaluation score per dataset; band = 95% {method} CI over seeds{smooth_note}. "
                  "Dotted: the dataset's behaviour policy; dashed: switch to online fine-tuning.", drawn_info)


def _lines(groups: Sequence[Group], columns: Sequence[tuple[str, str]], out: Path, name: str,
           title: str, caption: str) -> Figure | None:
    """Panels of mean-over-seeds lines, one per (dataset, column) that has data, wrapped at ``MAX_COLS``."""
    panels = [(col, label) for col, label in columns if _has(groups, col)]
    if not panels:
        return None
    several = len(_datasets(groups)) > 1
    cells, cols = _cells(groups, panels, lambda members, panel: _has(members, panel[0]))
    colour = colours(groups)
    fig, axes = _layout(cells, cols, 4.2, 2.9)
    drawn: set[str] = set()
    for ax, (ds, panel) in zip(axes, cells, strict=False):
        if panel is None:
            continue
        col, label = panel
        members = [g for g in groups if g.dataset == ds]
        for g in members:
            c = curve(g, col, ci=False)
            if len(c):  # a marker keeps a single logged point visible
                ax.plot(c["step"], c["mean"], color=colour[g.label], lw=1.4, marker="o" if len(c) < 3 else None, ms=4)
                drawn.add(g.label)
        _mark_online(ax, members)
        ax.set_title(f"{label}\n{ds}" if several else label, fontsize=9)
        ax.set_xlabel("gradient step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    _figure_legend(fig, _group_handles([g for g in groups if g.label in drawn], colour))
    fig.suptitle(title, fontsize=11)
    path = out / name
    return Figure(path, title, caption, _save(fig, path))


def plot_losses(groups: Sequence[Group], out: Path) -> Figure | None:
    """Every ``loss``/``loss_*`` column (at most six), mean over seeds."""
    cols = sorted({c for g in groups for r in g.runs for c in r.metrics.columns if c == "loss" or c.startswith("loss_")})
    return _lines(groups, [(c, c) for c in cols[:6]], out, "losses.png", "Training losses",
                  "Mean over seeds of each logged loss term (rows averaged over the logging interval).")


def plot_alpha(groups: Sequence[Group], out: Path) -> Figure | None:
    """SAC temperature ``alpha`` and CQL Lagrange multiplier ``alpha_prime``."""
    return _lines(groups, [("alpha", "alpha (entropy temperature)"), ("alpha_prime", "alpha' (CQL multiplier)")],
                  out, "alpha.png", "alpha and alpha'", "Entropy temperature and CQL Lagrange multiplier, mean over seeds.")


_DIAGNOSTICS = [
    ("V(s0): estimate vs achieved", [("diag_v_s0_eval", "V(s0) eval states", "-"), ("diag_v_s0", "V(s0) data", "-."),
                                     ("diag_achieved_return_s0", "achieved (disc.)", "--"),
                                     ("diag_mc_return_s0", "dataset MC return", ":")]),
    ("Q: dataset vs policy actions", [("diag_q_data", "Q(s, a_data)", "-"), ("diag_q_policy", "Q(s, π(s))", "--")]),
    ("TD error (held-out, MSE)", [("diag_td_error", "TD error", "-")]),
]


def plot_diagnostics(groups: Sequence[Group], out: Path) -> Figure | None:
    """Q estimate vs achieved return, Q on data vs policy actions, held-out TD error."""
    panels = [(t, [s for s in series if _has(groups, s[0])]) for t, series in _DIAGNOSTICS]
    panels = [(t, s) for t, s in panels if s]
    if not panels:
        return None
    several = len(_datasets(groups)) > 1
    cells, cols = _cells(groups, panels, lambda members, panel: any(_has(members, s[0]) for s in panel[1]))
    colour = colours(groups)
    fig, axes = _layout(cells, cols, 4.3, 3.0)
    styles: dict[str, Line2D] = {}
    drawn: set[str] = set()
    for ax, (ds, panel) in zip(axes, cells, strict=False):
        if panel is None:
            continue
        title, series = panel
        members = [g for g in groups if g.dataset == ds]
        for g in members:
            for col, name, ls in series:
                c = curve(g, col, ci=False)
                if len(c):
                    ax.plot(c["step"], c["mean"], color=colour[g.label], ls=ls, lw=1.4,
                            marker="o" if len(c) < 3 else None, ms=4)
                    drawn.add(g.label)
                    if len(series) > 1:
                        styles.setdefault(name, Line2D([], [], color="0.25", ls=ls, label=name))
        if title.startswith("TD"):  # log scale only when the error spans orders of magnitude
            td = np.concatenate([curve(g, "diag_td_error", ci=False)["mean"].to_numpy(dtype=float) for g in members])
            td = td[np.isfinite(td)]
            if td.size and td.min() > 0 and td.max() / td.min() > 20:
                ax.set_yscale("log")
        _mark_online(ax, members)
        ax.set_title(f"{title}\n{ds}" if several else title, fontsize=9)
        ax.set_xlabel("gradient step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    # line style = quantity (grey), colour = group: one legend below the panels
    _figure_legend(fig, list(styles.values()) + _group_handles([g for g in groups if g.label in drawn], colour))
    fig.suptitle("Critic diagnostics: does Q over-estimate? (the report's summary says, in words)", fontsize=11)
    path = out / "diagnostics.png"
    drawn_info = _save(fig, path)
    return Figure(path, "Q estimate vs achieved return",
                  "V(s0) = Q(s0, π(s0)) against the discounted return the policy achieved and the dataset's "
                  "Monte-Carlo return; Q on dataset vs policy actions; TD error on held-out transitions.", drawn_info)
