#!/usr/bin/env python
"""Make a synthetic hand-radiograph dataset with exact labels for all three tasks.

    python tools/phantom.py --out data/phantom --n-train 160 --n-test 40 --size 512 --seed 0

Writes OUT/handbones (boostcamp segmentation layout), OUT/boneage (RSNA layout) and OUT/joints
(SHS_NET coord_list.csv + DHA all.csv/spacing.csv) over the same rendered hands; see
phantom/README.md. Counts are images (two per patient: left and right hand).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # first: before tools/, whose phantom.py and leaderboard.py share the packages' names

from core.cli import run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--n-train", type=int, default=160, help="training images (two per patient)")
    ap.add_argument("--n-test", type=int, default=40, help="test images (two per patient)")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (2048 = competition)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--film", type=float, default=0.0,
                    help="share of images that look like scanned film, with a grey background as in the Digital "
                         "Hand Atlas (0-1; default 0: digital radiographs, black background)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: min(cpu_count, 4))")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    from phantom import generate  # after sys.path

    t0 = time.time()
    summary = generate(args.out, args.n_train, args.n_test, size=args.size, seed=args.seed,
                       workers=args.workers, progress=not args.quiet, film=args.film)
    if not args.quiet:
        print(f"wrote {args.n_train} train + {args.n_test} test images ({summary['patients']} patients, "
              f"{args.size}px) to {args.out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
