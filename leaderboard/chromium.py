"""Open the HTML report in headless Chromium: check it (console errors, every plot image decoded) and
take screenshots. Used by tests/test_report_chromium.py and to make docs/leaderboard.png:

    python -m leaderboard.chromium reports/leaderboard.html --screenshot docs/leaderboard.png

Needs the Debian ``chromium`` package (``apt-get install -y chromium``); :func:`find_chromium` returns
None when it is absent.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]

# Injected first in <head>: collect script errors and failed resources, then on load write what the
# page holds (every img.plot's natural size, the errors) into the DOM, which --dump-dom prints.
CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__errors.push(e.message || ('failed to load ' + (t && (t.src || t.href || t.tagName))));
}, true);
(function () { var orig = console.error; console.error = function () {
  window.__errors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
  return orig.apply(console, arguments); }; })();
window.addEventListener('load', function () {
  var r = {images: [], errors: window.__errors, missing: document.querySelectorAll('.plot-missing').length};
  document.querySelectorAll('img.plot').forEach(function (i) {
    r.images.push({id: i.id, width: i.naturalWidth, height: i.naturalHeight, complete: i.complete});
  });
  var p = document.createElement('pre'); p.id = '__report_check'; p.textContent = JSON.stringify(r);
  document.body.appendChild(p);
});
</script>"""


def find_chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name) if not os.path.isabs(name) else (name if os.access(name, os.X_OK) else None)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
        env = dict(os.environ, HOME=profile)  # chromium writes caches below $HOME: keep them in the temp dir
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def console_errors(stderr: str) -> list[str]:
    """Lines of Chromium's log that are messages of the page's console or uncaught exceptions."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def check_report(path: str | os.PathLike, timeout: float = 90) -> dict:
    """Load the report in headless Chromium and return ``{"images": [{id, width, height, complete}],
    "errors": [...], "missing": n, "console": [log lines], "returncode": rc}``.

    The page is loaded from a temporary copy with :data:`CHECK_SCRIPT` injected; a report that
    produced no check result at all (page never loaded) raises RuntimeError with Chromium's stderr.
    """
    text = Path(path).read_text(encoding="utf-8")
    injected, n = re.subn(r"<head>", "<head>" + CHECK_SCRIPT, text, count=1, flags=re.I)
    if not n:
        injected = CHECK_SCRIPT + text
    with tempfile.TemporaryDirectory(prefix="report-check-") as d:
        page = Path(d) / Path(path).name
        page.write_text(injected, encoding="utf-8")
        proc = _run(["--dump-dom", page.as_uri()], timeout)
    m = re.search(r'<pre id="__report_check">(.*?)</pre>', proc.stdout, flags=re.S)
    if not m:
        raise RuntimeError(f"chromium returned no check result (rc={proc.returncode}); stderr:\n{proc.stderr[-3000:]}")
    result = json.loads(html.unescape(m.group(1)))
    result["console"] = console_errors(proc.stderr)
    result["returncode"] = proc.returncode
    return result


def screenshot(path: str | os.PathLike, png: str | os.PathLike, width: int = 1200, height: int = 1600,
               max_bytes: int | None = 300_000, timeout: float = 90) -> Path:
    """Screenshot the page's top ``width`` x ``height`` pixels to ``png``; with ``max_bytes`` the PNG is
    re-encoded with a 256-colour palette (Pillow) when it is larger than that."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    proc = _run([f"--screenshot={png}", f"--window-size={width},{height}", Path(path).resolve().as_uri()], timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (rc={proc.returncode}); stderr:\n{proc.stderr[-3000:]}")
    if max_bytes and png.stat().st_size > max_bytes:
        from PIL import Image

        with Image.open(png) as im:
            small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        small.save(png, optimize=True)
    return png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="check an HTML report in headless Chromium / screenshot it")
    p.add_argument("html")
    p.add_argument("--screenshot", metavar="PNG")
    p.add_argument("--size", default="1200,1600", help="window size WIDTH,HEIGHT (default 1200,1600)")
    args = p.parse_args(argv)
    result = check_report(args.html)
    bad = [i for i in result["images"] if not i["width"]]
    print(json.dumps({k: v for k, v in result.items() if k != "images"}, indent=1))
    print(f"{len(result['images'])} plot image(s), {len(bad)} broken, {result['missing']} without data")
    if args.screenshot:
        w, h = (int(v) for v in args.size.split(","))
        out = screenshot(args.html, args.screenshot, w, h)
        print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 1 if bad or result["errors"] or result["console"] else 0


if __name__ == "__main__":
    sys.exit(main())
