#!/usr/bin/env python
"""Look at any dataset the readers read: masks, keypoints and ages drawn over the radiographs.

    python tools/visualize.py handbones DIR/handbones/train --n 8 -o sheet.png
    python tools/visualize.py handbones DIR/handbones/test --labels DIR/handbones/test_gt/outputs_json -o t.png
    python tools/visualize.py rsna DIR/boneage --n 8 -o ages.png            # or ../shared/data/real/rsna_boneage
    python tools/visualize.py shs  COORD_LIST.csv IMAGES_DIR -o joints.png
    python tools/visualize.py dha  ALL.csv IMAGES_DIR [--numbers] -o landmarks.png

The drawing is :mod:`display.overlay` (one image -> RGB with a legend, and a grid), the sheets
:mod:`display.sheets`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli import run_main

SHEET_SUFFIXES = (".png", ".jpg", ".jpeg")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--n", type=int, default=8, help="images to show")
    common.add_argument("-o", "--out", default="sheet.png", help="output PNG")
    common.add_argument("--tile", type=int, default=512, help="longest side of each tile")
    common.add_argument("--cols", type=int, default=None)
    p = sub.add_parser("handbones", parents=[common], help="DIR with DCM/ (+ outputs_json/)")
    p.add_argument("root")
    p.add_argument("--labels", default="auto", help="label folder (default: ROOT/outputs_json when present)")
    p = sub.add_parser("rsna", parents=[common], help="DIR with an RSNA CSV and its images")
    p.add_argument("root")
    for kind in ("shs", "dha"):
        p = sub.add_parser(kind, parents=[common], help=f"{kind.upper()} CSV + image folder")
        p.add_argument("csv")
        p.add_argument("images")
        p.add_argument("--numbers", action="store_true", help="label points by index instead of name")
    args = ap.parse_args(argv)
    if args.n < 1 or args.tile < 16:
        raise ValueError(f"--n {args.n} --tile {args.tile}: show at least 1 image, tiles of at least 16 px")
    if Path(args.out).suffix.lower() not in SHEET_SUFFIXES:
        raise ValueError(f"--out {args.out}: the sheet is an image; name it {' or '.join(SHEET_SUFFIXES)}")
    from display import sheets

    if args.kind == "handbones":
        tiles = sheets.show_handbones(args.root, args.n, labels=None if args.labels == "none" else args.labels,
                                      tile=args.tile)
    elif args.kind == "rsna":
        tiles = sheets.show_rsna(args.root, args.n, tile=args.tile)
    else:
        show = sheets.show_shs if args.kind == "shs" else sheets.show_dha
        tiles = show(args.csv, args.images, args.n, args.tile, numbers=args.numbers)
    sheets.write_sheet(tiles, args.out, args.cols, args.tile)
    print(f"wrote {args.out} ({len(tiles)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
