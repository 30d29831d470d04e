#!/usr/bin/env python
"""Fuse submissions of any task at the CSV level; the task is read from the headers.

  python tools/fuse.py hard a.csv b.csv c.csv --min-votes 2 -o submissions/vote.csv        # segmentation
  python tools/fuse.py soft a.csv b.csv c.csv d.csv --threshold 0.5 -o submissions/soft.csv
  python tools/fuse.py weighted a.csv b.csv c.csv --weights 2 1 1 -o submissions/w.csv
  python tools/fuse.py hard a.csv b.csv c.csv --images data/phantom/handbones/test -o out.csv   # + bounds check
  python tools/fuse.py median kp_a.csv kp_b.csv kp_c.csv -o submissions/kp_med.csv        # keypoints
  python tools/fuse.py hard kp_a.csv kp_b.csv kp_c.csv --radius 4 --min-votes 2 -o submissions/kp_vote.csv
  python tools/fuse.py weighted ba_a.csv ba_b.csv --weights 2 1 -o submissions/ba_w.csv     # bone age

Segmentation (image_name,class,rle), methods soft, hard, weighted. hard: a pixel is kept when at least
--min-votes submissions have it (default: strict majority). soft: the mean of the masks must exceed
--threshold; the equivalent vote count is printed (0.6 of 5 submissions means 4 votes, not 3).
weighted: the normalised --weights of the submissions having the pixel must sum to more than
--threshold. RLEs are fused as runs, never decoded to pixels. Images come out in the order of --images
(the test folder) when given, else of the first CSV. With --images or --size every member's RLE is
checked against its image, outvoted or not (the error names the file and line). Without them nothing
can be checked, so a fusion in which one submission alone puts pixels in the output (--min-votes 1, a
soft threshold below 1/M, a weight above the threshold) is refused.

Keypoints (image_name,<lm>_x...,<lm>_y...), methods mean, median, weighted, hard. mean/median/weighted
fuse every coordinate on its own (weighted: the weighted mean with --weights). hard fuses each point
(one landmark of one image) by agreement: submission i's group is every submission whose point lies
at most --radius px (Euclidean) from submission i's point, i included; the largest group wins (ties:
the smaller sum of distances, then the earlier CSV). When it holds at least --min-votes submissions
(default: strict majority) the fused point is the mean of the group's points, so an outlier is dropped;
otherwise the per-coordinate median of all submissions. How many points agreed is printed.

Bone age (id,boneage), methods mean, median, weighted (months).

Keypoint and bone-age outputs keep the first CSV's row order, id column and landmark order, and write
numbers with 6 decimals, trailing zeros dropped: exact for a fused value with at most 6 decimals (the
mean of a +2 px and a -2 px copy of a 3-decimal truth is the truth), else rounded to 1e-6.

Every submission must be of the same task and cover the same images (and landmarks); a duplicate id,
a NaN, a missing row or a weight count that does not match the CSVs ends the command with
`error: <file>: ...` and exit status 2, and nothing is written.
"""
from __future__ import annotations

import argparse
import sys

from core.cli import run_main
from ensembles.submissions import fuse_submissions


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must read HxW, e.g. 2048x2048, got {text!r}") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=("soft", "hard", "weighted", "mean", "median"),
                        help="segmentation: soft, hard, weighted; keypoints: mean, median, weighted, hard; "
                             "bone age: mean, median, weighted")
    parser.add_argument("csvs", nargs="+", help="submission CSVs of one task")
    parser.add_argument("-o", "--out", required=True, help="fused CSV (written atomically)")
    parser.add_argument("--min-votes", type=int, help="hard: submissions that must agree (default: majority)")
    parser.add_argument("--radius", type=float,
                        help="keypoints hard: points at most this many pixels apart agree (required there)")
    parser.add_argument("--weights", type=float, nargs="+", help="weighted: one weight per CSV (normalised)")
    parser.add_argument("--threshold", type=float,
                        help="segmentation soft/weighted: fused value must exceed it (default 0.5)")
    parser.add_argument("--images", help="segmentation: test images root (holding DCM/): output order and RLE "
                                         "bounds check")
    parser.add_argument("--size", type=parse_size, help="segmentation: HxW of every image, for the RLE bounds check")
    args = parser.parse_args(argv)
    fused = fuse_submissions(args.csvs, args.out, args.method, weights=args.weights, min_votes=args.min_votes,
                             radius=args.radius, threshold=args.threshold, images=args.images, size=args.size,
                             report=print)
    print(f"wrote {args.out}: {fused.images} images fused from {fused.members} {fused.task} submissions "
          f"({args.method})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
