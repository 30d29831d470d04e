#!/usr/bin/env python
"""Score a submission locally (any task, told by its header), with public/private halves like a leaderboard.

  python tools/score.py submissions/a.csv --gt data/phantom/handbones/test_gt [--run runs/segmentation/<run>]

``--run`` (or a CSV named after a run) records the scores in that run's summary.json for the leaderboard.
"""
from __future__ import annotations

import argparse
import sys

from engine.cli import run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("--gt", required=True, help="ground truth: handbones/test_gt (segmentation), answers CSV "
                        "(bone age), coordinates CSV (keypoints)")
    parser.add_argument("--images", help="segmentation: test images root holding DCM/ (default: <gt>/../test)")
    parser.add_argument("--run", help="run or ensemble folder whose summary.json gets the test scores")
    parser.add_argument("--quiet", action="store_true", help="only the summary line")
    args = parser.parse_args(argv)
    from tasks.scoring import score_submission  # after parsing: --help and usage errors skip numpy and OpenCV

    result = score_submission(args.csv, args.gt, args.images)  # faults (FormatError, OSError) end in run_main
    if not args.quiet:
        width = max(len(k) for k in result["per_item"])
        for name, value in result["per_item"].items():
            print(f"  {name:<{width}}  {value:.4f}")
    metric = result.get("metric", "dice")
    print(f"{args.csv}: {metric} {result['score']:.4f}  public {result['public']:.4f}  private {result['private']:.4f}"
          f"  ({result['images']} images)")
    if args.run:
        from engine.summary import record_summary

        record_summary(args.run, test={k: result[k] for k in ("score", "public", "private", "per_item")})
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
