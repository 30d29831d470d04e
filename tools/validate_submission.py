#!/usr/bin/env python
"""Check a segmentation submission before uploading it; exits non-zero with the reason on any fault.

  python tools/validate_submission.py submissions/a.csv --images data/phantom/handbones/test

Checks: header, 29 rows per image in canonical class order, every test image exactly once and no
other, RLE tokens numeric, runs sorted, non-overlapping and inside the image.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.formats import FormatError  # noqa: E402
from tasks.scoring import check_segmentation_csv  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("--images", required=True, help="test images root (holding DCM/)")
    args = parser.parse_args(argv)
    try:
        n = check_segmentation_csv(args.csv, args.images)
    except FormatError as err:
        print(f"INVALID: {err}", file=sys.stderr)
        return 1
    print(f"OK: {args.csv} covers {n} images x 29 classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
