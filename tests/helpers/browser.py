"""Open a page in headless Chromium over the DevTools protocol (``--remote-debugging-pipe``: JSON
messages separated by NUL on file descriptors 3 (to the browser) and 4 (from it); no websocket, no port).

Records every network request the page makes, evaluates a script in it and takes a screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-debugging-pipe",
]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageVisit:
    requests: list[str] = field(default_factory=list)
    result: Any = None
    screenshot: bytes = b""
    console_errors: list[str] = field(default_factory=list)


class _Pipe:
    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int) -> None:
        self.proc, self.wfd, self.rfd = proc, to_browser, from_browser
        self.buf, self.next_id, self.events = b"", 0, []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.rfd], [], [], left)
            if ready:
                chunk = os.read(self.rfd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
                self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, name: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == name:
                return self.events.pop(i)
        while True:
            ev = self._read_message(deadline)
            if ev.get("method") == name:
                return ev
            self.events.append(ev)


def visit(url: str, script: str, *, width: int = 1280, height: int = 2400, timeout: float = 60) -> PageVisit:
    """Load ``url``, run ``script`` (an expression; its JSON value is returned), screenshot the page."""
    binary = chromium_binary()
    assert binary, "chromium not installed"
    to_r, to_w = os.pipe()  # browser reads commands from fd 3
    from_r, from_w = os.pipe()  # browser writes replies to fd 4
    profile = tempfile.mkdtemp(prefix="offrl-chromium-")

    def child_fds() -> None:
        # Move both ends above 10 first (the parent's pipe fds may themselves be 3 or 4), then onto 3/4.
        # close_fds=False keeps them across exec; every other Python fd is close-on-exec anyway.
        r, w = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
        os.dup2(r, 3)
        os.dup2(w, 4)

    proc = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
        close_fds=False, preexec_fn=child_fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(to_r)
    os.close(from_w)
    pipe = _Pipe(proc, to_w, from_r)
    out = PageVisit()
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network.enable", "Page.enable", "Runtime.enable"):
            pipe.call(domain, session=session)
        pipe.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        pipe.call("Page.navigate", {"url": url}, session=session)
        pipe.wait_event("Page.loadEventFired", timeout=timeout)
        res = pipe.call("Runtime.evaluate", {"expression": f"JSON.stringify({script})", "returnByValue": True},
                        session=session)
        out.result = json.loads(res["result"]["value"])
        shot = pipe.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        out.screenshot = base64.b64decode(shot["data"])
        for ev in pipe.events:
            if ev.get("method") == "Network.requestWillBeSent":
                out.requests.append(ev["params"]["request"]["url"])
            if ev.get("method") == "Runtime.consoleAPICalled" and ev["params"].get("type") == "error":
                out.console_errors.append(str(ev["params"].get("args")))
    finally:
        try:
            pipe.call("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(to_w)
        os.close(from_r)
        shutil.rmtree(profile, ignore_errors=True)
    return out


def artifacts_dir() -> Path:
    path = Path(__file__).resolve().parents[2] / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
