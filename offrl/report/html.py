"""One self-contained HTML page: inline CSS, images as data URIs, no script, no network.

A Content-Security-Policy meta tag forbids every fetch except ``data:`` images, so the page cannot leak a
request even if a label contained a URL.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from offrl.report.compare import SETTLED
from offrl.report.plots import Figure
from offrl.report.stats import CURVE_RESAMPLES, DEFAULT_INTERVAL, TABLE_RESAMPLES, interval_name

__all__ = ["render"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1400px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:32px 0 8px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
.meta{color:#5b6475;font-size:.9em}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.86em;box-shadow:0 1px 2px rgba(0,0,0,.06)}
th,td{padding:6px 9px;border-bottom:1px solid #e6e9ee;text-align:right;vertical-align:top}
th{background:#eef1f5;font-weight:600;position:sticky;top:0}
td.l,th.l{text-align:left}
tr.ds td{background:#f0f3f8;font-weight:600;text-align:left}
.ci{color:#6b7385;font-size:.85em;white-space:nowrap}
.raw{color:#9a5b00;font-size:.8em}
.settled{color:#2e7d32;font-size:.85em}.unsettled{color:#9a5b00;font-size:.85em}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:.8em;color:#fff;background:#6b7385}
.completed{background:#2e7d32}.running{background:#1565c0}.crashed{background:#c62828}.stopped{background:#ef6c00}
.incomplete{background:#8e24aa}.duplicate{background:#9e9e9e}
.warn{background:#fff8e1;border:1px solid #f3d27a;padding:8px 14px;border-radius:6px;font-size:.86em}
.warn li{margin:2px 0}
figure{margin:18px 0;background:#fff;padding:12px;box-shadow:0 1px 2px rgba(0,0,0,.06)}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:#5b6475;font-size:.86em;margin-top:6px}
.path{font-family:ui-monospace,monospace;font-size:.8em;color:#5b6475;word-break:break-all}
.note{color:#5b6475;font-size:.86em}
.wide{overflow-x:auto}td.critic{min-width:12em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, digits: int = 1) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    if math.isnan(v):
        return "–"
    return f"{v:,.{digits}f}"


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _score(row: pd.Series, prefix: str) -> str:
    mean, lo, hi = row[f"{prefix}_mean"], row[f"{prefix}_low"], row[f"{prefix}_high"]
    cell = _num(mean)
    if not (isinstance(lo, float) and math.isnan(lo)):
        cell += f' <span class="ci">[{_num(lo)}, {_num(hi)}]</span>'
    elif row.get(f"{prefix}_n") == 1:
        cell += ' <span class="ci">(n/a, 1 seed)</span>'
    if prefix == "last" and _finite(row.get("last_episodes")):
        episodes = f"{int(row['last_episodes'])} episodes"
        if _finite(row.get("last_episode_low")):
            episodes = f"[{_num(row['last_episode_low'])}, {_num(row['last_episode_high'])}] over {episodes}"
        cell += f"<br><span class='ci'>final evaluation: {episodes}</span>"
    if row.get("unit") == "eval_return_mean":
        cell += ' <span class="raw">raw</span>'
    return cell


def _summary(table: pd.DataFrame) -> str:
    if table.empty:
        return '<p class="note">No runs.</p>'
    head = ("<tr><th class='l'>Algorithm</th><th>Seeds</th><th>Steps</th><th>Updates/s</th>"
            "<th>Last (mean [95% CI])</th><th>Mean of last 5 evaluations</th><th>Last third: trend [95% CI]</th>"
            "<th>Best (mean [95% CI])</th>"
            "<th>IQM last</th><th>Behaviour policy</th><th class='l'>Critic: V(s0) vs achieved return</th>"
            "<th class='l'>References</th></tr>")
    body = []
    for ds, part in table.groupby("dataset", sort=True):
        body.append(f"<tr class='ds'><td colspan='12'>{_e(ds)}</td></tr>")
        for _, row in part.iterrows():
            beh = _num(row["behaviour_return"])
            if not math.isnan(row["behaviour_normalized"]):
                beh = f"{_num(row['behaviour_normalized'])} <span class='ci'>(return {beh})</span>"
            elif beh != "–":
                beh += ' <span class="raw">raw</span>'
            body.append(
                f"<tr><td class='l'>{_e(row['group'])}</td><td>{_e(row['seeds'])}</td><td>{int(row['steps']):,}</td>"
                f"<td>{_num(row['updates_per_s'])}</td><td>{_score(row, 'last')}</td><td>{_recent(row)}</td><td>{_trend(row)}</td>"
                f"<td>{_score(row, 'best')}</td><td>{_num(row['last_iqm'])}</td><td>{beh}</td>"
                f"<td class='l critic'>{_e(row['critic'] if isinstance(row['critic'], str) else 'no critic diagnostic logged')}</td>"
                f"<td class='l'>{_e(row['ref_source'] if isinstance(row['ref_source'], str) else 'none: raw returns')}</td></tr>"
            )
    return f"<div class='wide'><table id='summary'><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>"


def _recent(row: pd.Series) -> str:
    n = int(row.get("recent_evals") or 0)
    if not n:
        return "–"
    return f"{_score(row, 'recent')}<br><span class='ci'>{n} evaluation{'s' if n > 1 else ''} per run</span>"


def _trend(row: pd.Series) -> str:
    """The last third's trend with its interval and reading (``settled`` within the tolerance shown)."""
    if not _finite(row.get("trend_mean")):
        return f"<span class='ci'>{_e(row.get('trend_reading') or 'too few evaluations')}</span>"
    signed = lambda x: "–" if not _finite(x) else f"{float(x):+.1f}".replace("-", "−")  # noqa: E731
    cell = signed(row["trend_mean"])
    if _finite(row.get("trend_low")):
        cell += f" <span class='ci'>[{signed(row['trend_low'])}, {signed(row['trend_high'])}]</span>"
    reading = row.get("trend_reading")
    css = "settled" if reading == "settled" else "unsettled"
    tol = f" (±{_num(row['trend_tolerance'])})" if reading == "settled" and _finite(row.get("trend_tolerance")) else ""
    return f"{cell}<br><span class='{css}'>{_e(reading)}{tol}</span>"


def _aggregate(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    def ci(r: pd.Series, key: str) -> str:
        if math.isnan(r[f"{key}_low"]):
            return f"{_num(r[key])} <span class='ci'>(n/a, 1 run)</span>"
        return f"{_num(r[key])} <span class='ci'>[{_num(r[f'{key}_low'])}, {_num(r[f'{key}_high'])}]</span>"

    rows = "".join(
        f"<tr><td class='l'>{_e(r['group'])}</td><td>{int(r['datasets'])}</td><td>{int(r['runs'])}</td>"
        f"<td>{ci(r, 'iqm')}</td><td>{ci(r, 'mean')}</td></tr>"
        for _, r in table.iterrows()
    )
    return (
        "<h2>Across datasets (normalized score, last evaluation)</h2>"
        "<table id='aggregate'><thead><tr><th class='l'>Algorithm</th><th>Datasets</th><th>Runs</th>"
        "<th>IQM [95% CI]</th><th>Mean [95% CI]</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        "<p class='note'>Stratified bootstrap over seeds within each dataset; only datasets with reference scores.</p>"
    )


def _runs(table: pd.DataFrame) -> str:
    rows = "".join(
        f"<tr><td class='l'>{_e(r['dataset'])}</td><td class='l'>{_e(r['group'])}</td><td>{_e(r['seed'])}</td>"
        f"<td class='l'><span class='badge {_e(r['status'])}'>{_e(r['status'])}</span>{_not_counted(r)}</td><td>{int(r['steps']):,}</td>"
        f"<td>{_run_last(r)}</td><td>{_num(r['recent'])}</td><td>{_num(r['best'])}</td>"
        f"<td class='l critic'>{_e(r['critic'] if isinstance(r['critic'], str) else '–')}</td><td>{int(r['warnings']) or ''}</td>"
        f"<td class='l path'>{_e(r['path'])}</td></tr>"
        for _, r in table.iterrows()
    )
    return (
        "<table id='runs'><thead><tr><th class='l'>Dataset</th><th class='l'>Algorithm</th><th>Seed</th>"
        "<th class='l'>Status</th><th>Steps</th><th>Last [95% CI over episodes]</th><th>Last 5 evaluations</th>"
        "<th>Best</th><th class='l'>Critic</th><th>Warnings</th><th class='l'>Run directory</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def _chosen(table: pd.DataFrame | None) -> str:
    if table is None:
        return ""
    if table.empty:
        return "<h2>Chosen config per dataset</h2><p class='note'>No run has an evaluation to choose on.</p>"
    rows = "".join(
        f"<tr><td class='l'>{_e(r['dataset'])}</td><td class='l'>{_e(r['group'])}</td><td>{int(r['candidates'])}</td>"
        f"<td>{_e(r['seeds'])}</td><td>{_score(r, 'last')}</td><td>{_num(r['last_iqm'])}</td></tr>"
        for _, r in table.iterrows()
    )
    return (
        "<h2>Chosen config per dataset</h2>"
        "<div class='warn' id='selection-warning'><b>Selection on the test set.</b> The chosen config is the one with "
        "the highest mean last evaluation, and that evaluation is also the score shown: choosing on the evaluation "
        "return is selection on the test set, so the chosen score is optimistic (more so with more configs). "
        "Confirm it on fresh seeds before reporting it; offline policy selection (without the evaluation env) "
        "is a separate step.</div>"
        "<table id='chosen'><thead><tr><th class='l'>Dataset</th><th class='l'>Chosen config</th><th>Configs compared</th>"
        "<th>Seeds</th><th>Last (mean [95% CI])</th><th>IQM last</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _interval_note(interval: str) -> str:
    """How the intervals over seeds were made, and how far to trust them (benchmarks/ci_coverage.py)."""
    if interval == "t":
        return ("Table intervals over seeds: Student-t 95% CI of the mean (Welch's for differences), which holds its "
                "coverage over few seeds for normal scores (benchmarks/ci_coverage.py); curves the same per step; "
                f"across datasets a stratified bootstrap ({TABLE_RESAMPLES:,} resamples, seed 0).")
    return (f"Table intervals: percentile bootstrap 95% CI over seeds, {TABLE_RESAMPLES:,} resamples, seed 0; curves: "
            f"{CURVE_RESAMPLES:,} resamples per step. Over few seeds such an interval is too narrow: simulated with "
            "normal scores it holds the true mean 75% of the time with 3 seeds, 84% with 5, 90% with 10 "
            "(benchmarks/ci_coverage.py, docs/reports.md; <code>offrl report --interval t</code> for Student-t).")


def _differences(table: pd.DataFrame | None, interval: str = DEFAULT_INTERVAL) -> str:
    if table is None or table.empty:
        return ""

    def cell(r: pd.Series, key: str) -> str:
        signed = lambda x: f"{float(x):+.1f}".replace("-", "−") if _finite(x) else "–"  # noqa: E731
        text = signed(r[f"{key}_diff"])
        if _finite(r[f"{key}_low"]):
            text += f" <span class='ci'>[{signed(r[f'{key}_low'])}, {signed(r[f'{key}_high'])}]</span>"
        css = "unsettled" if r[f"{key}_reading"] in ("higher", "lower") else "ci"
        return f"{text}<br><span class='{css}'>{_e(r[f'{key}_reading'])}</span>"

    rows = "".join(
        f"<tr><td class='l'>{_e(r['dataset'])}</td><td class='l'>{_e(r['group'])}</td>"
        f"<td class='l'>{_e(r['baseline'])}</td><td>{int(r['n'])} / {int(r['n_baseline'])}</td>"
        f"<td>{cell(r, 'last')}</td><td>{cell(r, 'recent')}</td>"
        f"<td class='l'><span class='{'ci' if r['curves'] == SETTLED else 'unsettled'}'>{_e(r['curves'])}</span></td></tr>"
        for _, r in table.iterrows()
    )
    unit = "raw return" if (table["unit"] == "eval_return_mean").all() else "normalized points"
    return (
        "<h2>Differences between experiments</h2>"
        "<div class='wide'><table id='differences'><thead><tr><th class='l'>Dataset</th><th class='l'>Experiment</th>"
        "<th class='l'>minus baseline</th><th>Seeds</th><th>Last: difference [95% CI]</th>"
        "<th>Mean of last 5 evaluations: difference [95% CI]</th><th class='l'>Curves over the last third</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
        f"<p class='note'>Seed mean minus the baseline's seed mean ({unit} where the dataset has references, raw "
        "returns otherwise), with "
        + ("Welch's 95% CI" if interval == "t" else
           "a percentile bootstrap 95% CI that resamples each experiment's seeds on their own (10,000 resamples, seed 0)")
        + ". <i>higher</i> / <i>lower</i> only when the interval excludes 0. The "
        "baseline is the first experiment of each dataset by label unless <code>offrl report --baseline</code> "
        "names one. A difference means something only when both ran the same budget and evaluation, and it is "
        "where the methods end only when both curves settled over the last third (the trend column above); "
        "otherwise it is a difference at this budget.</p>"
    )


def _run_last(r: pd.Series) -> str:
    cell = _num(r["last"])
    if _finite(r.get("last_low")):
        cell += f" <span class='ci'>[{_num(r['last_low'])}, {_num(r['last_high'])}]</span>"
    if _finite(r.get("episodes")):
        cell += f"<br><span class='ci'>{int(r['episodes'])} episodes</span>"
    return cell


def _settings(settings: tuple[Sequence[tuple[str, Any, Any]], str] | None) -> str:
    if settings is None:
        return ""
    changed, protocol = settings
    rows = "".join(f"<tr><td class='l'>{_e(k)}</td><td class='l'>{_e(v)}</td><td class='l'>{_e(d)}</td></tr>"
                   for k, v, d in changed)
    table = (f"<table id='settings'><thead><tr><th class='l'>Config key</th><th class='l'>This run</th>"
             f"<th class='l'>offrl default</th></tr></thead><tbody>{rows}</tbody></table>" if changed
             else "<p class='note'>Every hyperparameter at offrl's default.</p>")
    return (f"<h2>Settings that differ from the defaults</h2>{table}"
            f"<h2>Evaluation protocol</h2><p id='protocol'>{_e(protocol)}</p>")


def _not_counted(row: pd.Series) -> str:
    return "" if row.get("counted", True) else " <span class='badge duplicate'>duplicate seed, not counted</span>"


def _figure(fig: Figure) -> str:
    data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{_e(fig.title)}'>"
            f"<figcaption><b>{_e(fig.title)}.</b> {_e(fig.caption)} <span class='path'>({_e(fig.path.name)})</span>"
            "</figcaption></figure>")


def render(
    *,
    title: str,
    summary: pd.DataFrame,
    aggregate: pd.DataFrame,
    runs: pd.DataFrame,
    figures: Sequence[Figure],
    warnings: Sequence[str],
    group_by: str | None,
    smooth: int,
    chosen: pd.DataFrame | None = None,
    settings: tuple[Sequence[tuple[str, Any, Any]], str] | None = None,
    differences: pd.DataFrame | None = None,
    interval: str = DEFAULT_INTERVAL,
) -> str:
    """The whole page as a string; ``chosen``: the chosen-config table (a sweep's report), else none;
    ``settings`` (a run report): the changed hyperparameters and the evaluation protocol."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_runs, n_ds = len(runs), runs["dataset"].nunique() if len(runs) else 0
    statuses = runs["status"].value_counts().to_dict() if len(runs) else {}
    status_text = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    warn = ""
    if warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
        warn = f"<h2>Warnings</h2><div class='warn' id='warnings'><ul>{items}</ul></div>"
    method = (
        f"Seeds of the same dataset and configuration (grouping: {_e(group_by or 'full config except seed')}) are "
        f"aggregated. {_interval_note(interval)} IQM = mean of the middle 50% of seeds "
        "(25% trimmed mean). <i>Last</i> = final evaluation, <i>best</i> = best evaluation of each run (an optimistic "
        "figure: it selects on the evaluation itself); <i>mean of last 5 evaluations</i> = each run's last five "
        "evaluations averaged, then over seeds (less luck than the last alone). Each evaluation is the mean over "
        "its episodes (deterministic policy, episode i seeded eval.seed + i); a run's last evaluation uses "
        "eval.final_episodes, and its bracket is a Student-t 95% CI over those episodes. <i>Critic</i>: the "
        "critic's V(s0) on the last evaluation's start states against the discounted return achieved from them "
        "(consistent within 10%). <i>Last third</i>: the least-squares line through each run's evaluations from two "
        f"thirds of its steps on, its slope times the steps it spans (mean over seeds, "
        f"{interval_name(interval)} 95% CI; one seed: "
        "the line's Student-t 95% CI); <i>settled</i> when the interval lies within ±5% of the score's span (5 "
        "normalized points, or 5% of the range the raw returns cover), <i>still rising</i> or <i>falling</i> when "
        "it excludes 0 otherwise, <i>unclear</i> when it is too wide to tell. Normalized score = 100 × (R − ref min) / (ref max − ref min); "
        "datasets without reference scores show raw returns, marked <span class='raw'>raw</span>."
        + (" Runs without summary.json are <span class='badge incomplete'>incomplete</span> (still running or "
           "killed); they are shown with what they logged." if "incomplete" in statuses else "")
        + (f" Each run's curve is smoothed over {smooth} evaluations." if smooth > 1 else "")
    )
    figs = "".join(_figure(f) for f in figures)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{_e(title)}</h1>
<p class="meta">{n_runs} run(s) on {n_ds} dataset(s) ({_e(status_text)}) · generated {now} by offrl</p>
<h2>Summary per dataset × algorithm</h2>
{_summary(summary)}
{_settings(settings)}
<p class="note">{method}</p>
{_aggregate(aggregate)}
{_differences(differences, interval)}
{_chosen(chosen)}
<h2>Figures</h2>
{figs or '<p class="note">Nothing to plot yet.</p>'}
<h2>Runs</h2>
{_runs(runs)}
{warn}
</main></body></html>
"""
