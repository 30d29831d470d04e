#!/usr/bin/env python
"""Score a submission locally (any task, told by its header), with public/private halves like a leaderboard.

  python tools/score.py submissions/a.csv --gt data/phantom/handbones/test_gt [--run runs/segmentation/<run>]

Prints every metric the scorer computes (segmentation: mean and per-class Dice; keypoints: MRE, SD and
SDR at each radius in px, and in mm where the pixel spacing is known; bone age: MAE, RMSE, share within
12 months, MAE by sex and per age band), then the headline with its public/private halves. ``--json``
prints the same as one JSON object instead. ``--run`` records all of them under ``test`` in that run's
(or ensemble's) summary.json, where ``tools/leaderboard.py --sort <metric>`` ranks by any of them.
"""
from __future__ import annotations

import argparse
import json
import sys

from engine.cli import run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("--gt", required=True, help="ground truth: handbones/test_gt (segmentation), answers CSV "
                        "(bone age), coordinates CSV (keypoints)")
    parser.add_argument("--images", help="segmentation: test images root holding DCM/ (default: <gt>/../test)")
    parser.add_argument("--run", help="run or ensemble folder whose summary.json gets the test scores")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="only the summary line")
    output.add_argument("--json", action="store_true", help="print every metric as one JSON object")
    args = parser.parse_args(argv)
    if not args.run:
        return score(args)
    from tasks.formats.run_lock import claim_bookkeeping

    with claim_bookkeeping(args.run):  # before scoring: a folder in use is refused before any work
        return score(args)


def score(args: argparse.Namespace) -> int:
    """Score ``args.csv``, print the report, record it in ``args.run`` when given."""
    from tasks.scoring import report_lines, score_submission, stored_scores  # after parsing: --help skips numpy

    result = score_submission(args.csv, args.gt, args.images)  # faults (FormatError, OSError) end in run_main
    scores = stored_scores(result)
    if args.json:
        print(json.dumps({"csv": args.csv, "task": result["task"], "metric": result["metric"], **scores}, indent=1))
    else:
        if not args.quiet:
            print("\n".join(report_lines(result)))
        print(f"{args.csv}: {result['metric']} {result['score']:.4f}  public {result['public']:.4f}  "
              f"private {result['private']:.4f}  ({result['images']} images)")
    if args.run:
        from engine.summary import record_summary

        record_summary(args.run, merge=False, test=scores)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
