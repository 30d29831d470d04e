#!/usr/bin/env python
"""Check submissions (any task, read from the header) before uploading them; exits non-zero with the reason on
any fault.

  python tools/validate_submission.py submissions/a.csv [b.csv ...] --images data/phantom/handbones/test
  python tools/validate_submission.py submissions/kp.csv --images data/phantom/joints/images

Segmentation: header, 29 rows per image in canonical class order, every test image exactly once and no
other, RLE tokens numeric, runs sorted, non-overlapping and inside the image. Other tasks: the CSV's layout
and numbers (the task's own reader), and a row for every image of ``--images`` and no other.
"""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from core.cli import run_main
from tasks.formats import FormatError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", help="one or more submission CSVs")
    parser.add_argument("--images", required=True, help="test images root (segmentation: holding DCM/; other tasks: "
                        "the folder of the test images or its parent)")
    args = parser.parse_args(argv)
    # What is not there cannot be judged: a fault (exit 2), not a verdict on a submission (exit 1).
    if not Path(args.images).is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such test images folder", args.images)
    for csv_path in args.csv:
        if not Path(csv_path).is_file():
            raise FileNotFoundError(errno.ENOENT, "submission not found", csv_path)

    from tasks.scoring import validate_submission  # after parsing: --help and usage errors skip numpy and OpenCV

    status = 0
    for csv_path in args.csv:
        try:
            task, n = validate_submission(csv_path, args.images)
        except FormatError as err:
            print(f"INVALID: {err}", file=sys.stderr)
            status = 1
            continue
        print(f"OK: {csv_path} ({task}) covers {n} images")
    return status


if __name__ == "__main__":
    sys.exit(run_main(main))
