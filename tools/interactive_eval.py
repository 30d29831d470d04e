#!/usr/bin/env python
"""MRE vs clicks of keypoint runs: the interactive refinement protocol, model revision against manual-only.

For every image of the split, click the worst point N times (each click moves it to its true position).
``model``: the run sees all corrections so far as hint maps and revises every point (clicked ones pinned).
``manual``: only the clicked points move. Prints both curves (original pixels; mm where spacing is known)
and writes ``<run>/interactive/<split>_clicks.csv``, ``..._per_image.csv``, ``..._clicks.png`` and the
``interactive`` entry of the run's ``summary.json`` (plotted by ``tools/leaderboard.py --html``).

  python tools/interactive_eval.py --ckpt runs/keypoints/interactive_aasce68-f0/best.pt --split val --clicks 10
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # first: before tools/, whose leaderboard.py shares the package's name (the plot)

import engine  # noqa: E402,F401  (offline environment first)
from core.cli import run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", action="append", required=True, help="a keypoint run's best.pt (repeat for several)")
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="val: the run's validation fold; test: its labelled test images")
    parser.add_argument("--clicks", type=int, help="clicks per image (default: the run's data.clicks.eval_clicks)")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation of every revision")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--plot", help="also draw every run's curve into this PNG")
    args = parser.parse_args(argv)
    from display.curves import save_click_plot
    from engine.interactive import evaluate_run, format_curve

    curves = {}
    for ckpt in args.ckpt:
        entry = evaluate_run(ckpt, args.split, args.clicks, tta=args.tta, device=args.device)
        verdict = "model revision beats manual at clicks 1-5" if entry["model_wins_1_5"] else \
            "model revision does NOT beat manual at every click 1-5"
        print(f"{ckpt}: {entry['images']} {args.split} images; {verdict}" + (f" ({entry['note']})" if "note" in entry else ""))
        print(format_curve(entry))
        name = Path(ckpt).parent.name
        png = save_click_plot({name: entry}, Path(entry["csv"]).with_suffix(".png"))
        print(f"wrote {entry['csv']} and {png}")
        curves[name] = entry
    if args.plot:
        print(f"wrote {save_click_plot(curves, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
