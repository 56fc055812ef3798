"""The report as a person sees it: headless Chromium loads index.html from disk.

Checks every image decoded (naturalWidth > 0), the summary table is there with a row per experiment,
and no request left the machine (only the file itself and data: URIs). The screenshot is kept under
test-artifacts/ for a human to look at.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.browser import artifacts_dir, chromium_binary, visit

from offrl.report import build_report

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
