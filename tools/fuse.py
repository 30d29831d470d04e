#!/usr/bin/env python
"""Fuse segmentation submissions (CSV level), streamed image by image, classes in canonical order.

  python tools/fuse.py hard a.csv b.csv c.csv --min-votes 2 -o submissions/vote.csv
  python tools/fuse.py soft a.csv b.csv c.csv d.csv --threshold 0.5 -o submissions/soft.csv
  python tools/fuse.py weighted a.csv b.csv c.csv --weights 2 1 1 -o submissions/w.csv
  python tools/fuse.py hard a.csv b.csv c.csv --images data/phantom/handbones/test -o out.csv   # + bounds check

hard: a pixel is kept when at least --min-votes submissions have it (default: strict majority).
soft: the mean of the masks must exceed --threshold; the equivalent vote count is printed (0.6 of 5
submissions means 4 votes, not 3). weighted: the normalised --weights of the submissions having the
pixel must sum to more than --threshold. RLEs are fused as runs, never decoded to pixels. Images come
out in the order of --images (the test folder) when given, else of the first CSV. Exit status 2 on bad
input (missing/duplicate rows, different image sets, bad weights or RLEs), with the file named.

With --images or --size every member's RLE is checked against its image, outvoted or not (the error
names the file and line). Without them nothing can be checked, so a fusion in which one submission
alone puts pixels in the output (--min-votes 1, a soft threshold below 1/M, a weight above the
threshold) is refused.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engine  # noqa: E402,F401  (offline environment first)
from engine.cli import run_main  # noqa: E402
from ensembles.hard import fuse_csvs, majority, votes_for_threshold  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must read HxW, e.g. 2048x2048, got {text!r}") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=("soft", "hard", "weighted"))
    parser.add_argument("csvs", nargs="+", help="submission CSVs (image_name,class,rle)")
    parser.add_argument("-o", "--out", required=True, help="fused CSV (written atomically)")
    parser.add_argument("--min-votes", type=int, help="hard: submissions that must agree (default: majority)")
    parser.add_argument("--weights", type=float, nargs="+", help="weighted: one weight per CSV (normalised)")
    parser.add_argument("--threshold", type=float, default=0.5, help="soft/weighted: fused value must exceed it")
    parser.add_argument("--images", help="test images root (holding DCM/): output order and RLE bounds check")
    parser.add_argument("--size", type=parse_size, help="HxW of every image, for the RLE bounds check")
    args = parser.parse_args(argv)
    n = len(args.csvs)
    if args.method != "hard" and args.min_votes is not None:
        raise ValueError(f"--min-votes is for 'hard'; {args.method} uses --threshold")
    if args.method == "weighted" and args.weights is None:
        raise ValueError("weighted needs --weights (one per CSV)")
    order, sizes = None, None
    if args.images:
        from tasks.formats.handbones import list_samples
        from tasks.formats.images import image_size

        samples = list_samples(args.images, labels=None)
        order = [s.name for s in samples]
        paths = {s.name: s.image_path for s in samples}
        sizes = lambda name: image_size(paths[name])  # noqa: E731
    elif args.size:
        sizes = lambda name: args.size  # noqa: E731
    if args.method == "soft":
        k = votes_for_threshold(args.threshold, n)
        print(f"soft: mean of {n} masks > {args.threshold:g} means at least {k} of {n} votes")
    elif args.method == "hard":
        print(f"hard: at least {args.min_votes or majority(n)} of {n} votes")
    images = fuse_csvs(args.csvs, args.out, args.method, min_votes=args.min_votes, weights=args.weights,
                       threshold=args.threshold, sizes=sizes, order=order)
    print(f"wrote {args.out}: {images} images fused from {n} submissions ({args.method})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
