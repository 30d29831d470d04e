"""Start the viewer (``tools/viewer.py``) on a runs folder and screenshot it in headless Chromium
(``tools/viewer_screenshot.py``).

A Streamlit page is drawn by script over a websocket after the page has loaded, so ``chromium
--screenshot`` (even with ``--virtual-time-budget``) captures only the empty app skeleton. This drives
Chromium over the DevTools protocol instead: open the page, wait until the figures are drawn and the app
is idle, press buttons or click the figure (each one a rerun of the app), then capture the viewport.

:func:`serve` runs the app in a subprocess (``HOME`` in a temporary folder, usage statistics off, bound to
127.0.0.1) and always stops it. :func:`browser` is headless Chromium with a DevTools client of its page,
driven by :func:`open_app`, :func:`press`, :func:`click` and :func:`save_screenshot`; :func:`capture` chains
them. Chromium comes from ``leaderboard.chromium.find_chromium`` (Debian: ``apt-get install -y chromium``).
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from leaderboard.chromium import FLAGS, find_chromium
from core.atomic import write_bytes

ROOT = Path(__file__).resolve().parents[1]

# True once the app shows something (a figure, an image, a message), every figure and image is drawn, and
# Streamlit is not running the script (no status widget, no stale element).
READY = """(() => {
  const shown = document.querySelector('[data-testid="stPlotlyChart"], [data-testid="stImage"], ' +
                                       '[data-testid="stAlertContainer"], [data-testid="stException"]');
  const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(c => c.querySelector('.main-svg'));
  const images = [...document.querySelectorAll('[data-testid="stImage"] img')].every(i => i.complete && i.naturalWidth > 0);
  const running = document.querySelector('[data-testid="stStatusWidget"]');
  const stale = document.querySelector('[data-stale="true"]');
  return Boolean(shown) && charts && images && !running && !stale;
})()"""

# What the app wrote (texts, metrics, widget values), not plotly's hover labels: it changes when a rerun lands.
TEXT = """[...document.querySelectorAll('[data-testid="stMarkdownContainer"], [data-testid="stCaptionContainer"], ' +
                                '[data-testid="stMetric"], [data-testid="stSelectbox"], input')]
  .map(e => e.value ?? e.innerText).join('|')"""

CLICK = """((label) => {
  const button = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === label && !b.disabled);
  if (button) { button.click(); }
  return Boolean(button);
})(%s)"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} (waited {timeout:.0f} s)")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def serve(runs: str | os.PathLike, port: int | None = None, timeout: float = 90) -> Iterator[str]:
    """Run ``streamlit run tools/viewer.py -- --runs RUNS`` and yield its URL once healthy; stopped on exit.

    Its output goes to ``streamlit.log`` in a temporary folder that is also its ``HOME``; a server that
    exits or never becomes healthy raises RuntimeError with the end of that log."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="viewer-home-") as home:
        log_path = Path(home) / "streamlit.log"
        env = dict(os.environ, HOME=home, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
        cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "tools" / "viewer.py"), "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port), "--", "--runs", str(runs)]
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait(lambda: proc.poll() is not None or _healthy(url), timeout, f"{url}: the viewer never became healthy")
            if proc.poll() is not None:
                raise RuntimeError(f"the viewer exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            yield url
        except TimeoutError as err:
            raise RuntimeError(f"{err}; its log:\n{log_path.read_text()[-3000:]}") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


class DevTools:
    """A minimal DevTools-protocol client of one page (commands in order, events skipped)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"chromium: {method} failed: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


@contextlib.contextmanager
def browser(width: int, height: int, timeout: float = 60) -> Iterator[DevTools]:
    """Headless Chromium (profile and ``HOME`` in a temporary folder) and a DevTools client of its page."""
    from websockets.sync.client import connect

    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
               f"--window-size={width},{height}", "about:blank"]
        proc = subprocess.Popen(cmd, env=dict(os.environ, HOME=profile), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        active = Path(profile) / "DevToolsActivePort"
        try:
            _wait(lambda: proc.poll() is not None or (active.is_file() and len(active.read_text().split()) >= 2),
                  timeout, f"chromium wrote no {active.name}")
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode} before opening its DevTools port")
            port = active.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                page = next(t for t in json.load(r) if t["type"] == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=64 << 20, open_timeout=30) as ws:
                yield DevTools(ws)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _settle(page: DevTools, timeout: float, what: str, before: str | None = None) -> None:
    """Wait until the app is drawn and idle; after an action (``before``: the page's text then) first give
    the rerun up to 10 s to change the page, so a rerun that starts late is not mistaken for a finished one."""
    if before is not None:
        with contextlib.suppress(TimeoutError):
            _wait(lambda: page.evaluate(TEXT) != before, min(10.0, timeout), what)
    _wait(lambda: page.evaluate(READY) is True, timeout, what)
    time.sleep(0.5)  # plotly's last layout pass


def open_app(page: DevTools, url: str, width: int, height: int, timeout: float = 120) -> None:
    """Show ``url`` in a ``width`` x ``height`` viewport and wait until the app is drawn and idle."""
    page.call("Page.enable")
    page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
    page.call("Page.navigate", url=url)
    _settle(page, timeout, f"{url}: the viewer drew no figure")


def press(page: DevTools, label: str, timeout: float = 120) -> None:
    """Press the enabled button labelled ``label`` and wait for the rerun."""
    before = page.evaluate(TEXT)
    if not page.evaluate(CLICK % json.dumps(label)):
        raise ValueError(f"--click {label!r}: no enabled button with that label on the page")
    _settle(page, timeout, f"the viewer did not finish the rerun after {label!r}", before)


def click(page: DevTools, x: float, y: float, timeout: float = 120) -> None:
    """A left mouse click at viewport pixel ``(x, y)``, then wait for the rerun."""
    before = page.evaluate(TEXT)
    page.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    time.sleep(0.3)  # plotly finds the point under the mouse on a (throttled) hover; a click takes that point
    for kind in ("mousePressed", "mouseReleased"):
        page.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
    _settle(page, timeout, f"the viewer did not finish the rerun after a click at ({x:.0f}, {y:.0f})", before)


def save_screenshot(page: DevTools, png: str | os.PathLike) -> Path:
    """Write the viewport to ``png`` (atomically)."""
    png = Path(png)
    data = page.call("Page.captureScreenshot", format="png")["data"]
    return write_bytes(png, base64.b64decode(data))


def capture(url: str, png: str | os.PathLike, *, clicks: Sequence[str] = (), width: int = 1400, height: int = 1000,
            timeout: float = 120) -> Path:
    """Open ``url``, press the buttons labelled ``clicks`` in order and write the viewport to ``png``."""
    with browser(width, height) as page:
        open_app(page, url, width, height, timeout)
        for label in clicks:
            press(page, label, timeout)
        return save_screenshot(page, png)
