"""A viewer for people: look at keypoint and segmentation runs, and correct keypoints interactively.

    streamlit run tools/viewer.py -- --runs runs          # or: VIEWER_RUNS=runs streamlit run tools/viewer.py

Run it from the repository root: Streamlit then reads ``.streamlit/config.toml`` (localhost only, headless,
no usage statistics). The app is :mod:`display.viewer_app` (what it shows and how to correct a point is
described there and in docs/leaderboard.md); its logic without Streamlit is :mod:`display.viewer_state`.
"""
from __future__ import annotations

import argparse
import os
import sys

import engine  # noqa: F401  (offline environment before any third-party import)
from display.viewer_app import main


def default_runs(argv: list[str]) -> str:
    """The runs folder: ``--runs`` (after ``--`` on the streamlit command line), else ``VIEWER_RUNS``, else ``runs``."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--runs", default=os.environ.get("VIEWER_RUNS", "runs"))
    return parser.parse_known_args(argv)[0].runs


if __name__ == "__main__":
    main(default_runs(sys.argv[1:]))
