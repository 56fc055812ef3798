"""The report as a person sees it: headless Chromium loads index.html from disk.

Checks every image decoded (naturalWidth > 0), the summary table is there with a row per experiment,
and no request left the machine (only the file itself and data: URIs). The screenshot is kept under
test-artifacts/ for a human to look at.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.browser import artifacts_dir, chromium_binary, visit

from offrl.report import build_report, write_run_report

pytestmark = pytest.mark.skipif(
    chromium_binary() is None, reason="chromium not installed (Debian: apt-get install -y chromium)"
)

PAGE_STATE = """({
  images: Array.from(document.images).map(i => ({w: i.naturalWidth, h: i.naturalHeight, done: i.complete})),
  summaryRows: document.querySelectorAll('#summary tbody tr:not(.ds)').length,
  runRows: document.querySelectorAll('#runs tbody tr').length,
  headers: Array.from(document.querySelectorAll('#summary th')).map(th => th.textContent),
  title: document.title,
})"""


def _local(url: str) -> bool:
    return url.startswith(("file://", "data:", "about:"))


def test_report_renders_in_chromium_with_no_network(runs_root: Path, tmp_path: Path):
    rep = build_report([runs_root], tmp_path / "out", title="offrl test report")
    page = visit(rep.html.as_uri(), PAGE_STATE)
    (artifacts_dir() / "report.png").write_bytes(page.screenshot)
    state = page.result
    assert state["title"] == "offrl test report"
    assert len(state["images"]) == len(rep.figures) >= 4
    assert all(img["done"] and img["w"] > 0 and img["h"] > 0 for img in state["images"]), state["images"]
    assert state["summaryRows"] == len(rep.summary) == 3
    assert state["runRows"] == 9
    assert any("Last" in h for h in state["headers"]) and any("Behaviour" in h for h in state["headers"])
    assert page.requests and all(_local(u) for u in page.requests), [u[:80] for u in page.requests if not _local(u)]
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_network_check_sees_an_outside_request(tmp_path: Path):
    # The check above must be able to fail: a page with a remote image is caught (port 9 on localhost,
    # so nothing actually leaves this machine).
    html = tmp_path / "leaky.html"
    html.write_text("<!DOCTYPE html><html><body><img src='http://127.0.0.1:9/x.png'></body></html>")
    page = visit(html.as_uri(), "Array.from(document.images).map(i => i.naturalWidth)")
    assert page.result == [0]
    assert any(u.startswith("http://127.0.0.1:9/") for u in page.requests)


LAYOUT_STATE = """({
  images: Array.from(document.images).map(i => ({alt: i.alt, w: i.naturalWidth, shown: i.getBoundingClientRect().width})),
  badges: Array.from(document.querySelectorAll('.badge')).map(b => b.textContent),
  settings: Array.from(document.querySelectorAll('#settings tbody tr')).map(tr => tr.cells[0].textContent),
  protocol: (document.querySelector('#protocol') || {}).textContent || null,
  critic: Array.from(document.querySelectorAll('#summary td.critic')).map(td => td.textContent),
  headers: Array.from(document.querySelectorAll('#summary th')).map(th => th.textContent),
  overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
})"""


def test_report_layout_at_1400_px(tmp_path: Path):
    # issue 18: empty 0-1 panels for quantities discrete CQL lacks, a loss grid shrunk to illegibility,
    # legends on the curves, an "incomplete" badge when no run was, no settings or protocol in a run report
    from helpers.report import make_run

    root = tmp_path / "runs"
    for seed in range(2):
        make_run(root, seed=seed, episodes=20)
        make_run(root, dataset="offrl/cartpole/mixed-v0", algo="discrete-cql", seed=seed, episodes=20)
    rep = build_report([root], tmp_path / "out")
    page = visit(rep.html.as_uri(), LAYOUT_STATE, width=1400, height=1000)
    # long experiment labels (three settings named in each) scroll inside the summary's box, not the page
    wide = tmp_path / "wide"
    for variant in ("a", "b"):
        make_run(wide / variant, extra_config={f"setting_{k}": f"{variant}_{'value' * 6}" for k in "xyz"})
    wide_page = visit(build_report([wide], tmp_path / "out-wide").html.as_uri(), LAYOUT_STATE, width=1400, height=1000)
    assert wide_page.result["overflow"] <= 0 and len(wide_page.result["critic"]) == 2, wide_page.result
    (artifacts_dir() / "report-1400.png").write_bytes(page.screenshot)
    state = page.result
    assert len(state["images"]) == len(rep.figures) == 4
    for img in state["images"]:  # every figure loads and is shown unscaled: readable at 1,400 px
        assert img["w"] > 0 and img["shown"] == img["w"], img
    assert "incomplete" not in state["badges"] and "badge incomplete" not in rep.html.read_text()
    assert all(c.startswith("over-estimates by") for c in state["critic"]) and len(state["critic"]) == 2
    assert "Last third: trend [95% CI]" in state["headers"] and state["overflow"] <= 0, state  # no sideways page
    for fig in rep.plots:  # no empty panel, no legend over a panel
        assert fig.panels and all(lines > 0 for _, lines in fig.panels), (fig.path.name, fig.panels)
        assert fig.legend_clear, fig.path.name
    titles = [t for f in rep.plots for t, _ in f.panels]
    assert not any("cartpole" in t and ("actor" in t or "alpha" in t) for t in titles), titles
    assert any("pendulum" in t and "loss_actor" in t for t in titles)
    alpha = next(f for f in rep.plots if f.path.name == "alpha.png")
    assert alpha.legend == ["cql"]  # discrete CQL draws nothing there, so the legend does not name it

    run = sorted(root.rglob("metrics.csv"))[-1].parent  # a pendulum cql run
    page = visit(write_run_report(run).as_uri(), LAYOUT_STATE, width=1400, height=1000)
    (artifacts_dir() / "run-report-1400.png").write_bytes(page.screenshot)
    state = page.result
    assert "eval.interval" in state["settings"] and "offline_steps" in state["settings"]
    assert "seed" not in state["settings"] and not any(k.startswith("dataset") for k in state["settings"])
    assert state["protocol"].startswith("Every 200 gradient steps and after the last one, 10 episodes")
    assert "the last evaluation 20 episodes" in state["protocol"]
    assert all(img["w"] > 0 and img["shown"] == img["w"] for img in state["images"])
