#!/usr/bin/env python
"""Start the viewer (``tools/viewer.py``) on a runs folder and screenshot it in headless Chromium:

    python tools/viewer_screenshot.py --runs runs -o docs/viewer.png --click "Correct the worst point"

How the page is driven (DevTools protocol, waiting for each rerun): :mod:`display.screenshot`.
"""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # first: before tools/, whose leaderboard.py shares the package's name

from core.cli import run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs", help="runs folder the viewer browses")
    parser.add_argument("-o", "--out", default="docs/viewer.png", help="PNG to write")
    parser.add_argument("--click", action="append", default=[], help="press this button first (repeatable)")
    parser.add_argument("--size", default="1400,1000", help="window WIDTH,HEIGHT")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.split(","))
    except ValueError:
        raise ValueError(f"--size {args.size!r}: expected WIDTH,HEIGHT in pixels, e.g. 1400,1000") from None
    if not Path(args.runs).is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such runs folder", args.runs)
    from display.screenshot import capture, serve

    with serve(args.runs) as url:
        out = capture(url, args.out, clicks=args.click, width=width, height=height)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
