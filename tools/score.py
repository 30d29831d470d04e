#!/usr/bin/env python
"""Score a submission locally (any task, told by its header), with public/private halves like a leaderboard.

  python tools/score.py submissions/a.csv --gt data/phantom/handbones/test_gt [--run runs/segmentation/<run>]
  python tools/score.py submissions/kp.csv --gt ../shared/data/real/shs_net_joints15 --sdr 5,10,20
  python tools/score.py runs/keypoints/<run>/preds/val.csv --gt <the run's data.root> --subset   # a validation fold

Prints every metric the scorer computes (segmentation: mean and per-class Dice; keypoints: MRE, SD and
SDR at each radius in px, and in mm where the pixel spacing is known, the median error along x and y, MRE
per landmark; bone age: MAE, RMSE, share within N months, MAE by sex and per age band, the spread of
the predictions, the MAE of a constant answer with --baseline-age), then the headline with its
public/private halves (split by patient). ``--json`` prints the same as one JSON object instead.
``--run`` records all of them under ``test`` in that run's (or ensemble's) summary.json, where
``tools/leaderboard.py --sort <metric>`` ranks by any of them.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from core.cli import run_main


def numbers(text: str) -> list[float]:
    """``"5,10,20"`` → ``[5.0, 10.0, 20.0]``: positive finite numbers, at least one."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers such as 5,10,20") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive numbers such as 5,10,20")
    return values


def months_or_csv(text: str) -> float | str:
    """``--baseline-age``: a number of months, else the path of a labels CSV (its mean age)."""
    try:
        return float(text)
    except ValueError:
        return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("--gt", required=True, help="ground truth: handbones/test_gt (segmentation), answers CSV "
                        "(bone age), keypoint folder or coordinates CSV (keypoints)")
    parser.add_argument("--images", help="segmentation: test images root holding DCM/ (default: <gt> when it holds "
                        "DCM/, else <gt>/../test)")
    parser.add_argument("--sdr", type=numbers, metavar="R,R,...",
                        help="keypoints: SDR radii in px (default: the landmark set's, e.g. 5,10,20 for shs15)")
    parser.add_argument("--sdr-mm", type=numbers, metavar="R,R,...",
                        help="keypoints: SDR radii in mm, where the pixel spacing is known (default: 2,4,10)")
    parser.add_argument("--within", type=numbers, metavar="M,M,...",
                        help="bone age: shares of ages within these months (default: 12)")
    parser.add_argument("--baseline-age", type=months_or_csv, metavar="MONTHS|CSV",
                        help="bone age: also the MAE of answering MONTHS for every hand, or the mean age of a labels "
                             "CSV (e.g. the training set's boneage-training-dataset.csv)")
    parser.add_argument("--subset", action="store_true",
                        help="score only the images the CSV has (a validation fold, inference.py --split val), "
                             "against every labelled image of --gt")
    parser.add_argument("--per-image", action="store_true",
                        help="also each image's score (keypoints: its MRE and worst landmarks)")
    parser.add_argument("--run", help="run or ensemble folder whose summary.json gets the test scores")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="only the summary line")
    output.add_argument("--json", action="store_true", help="print every metric as one JSON object")
    args = parser.parse_args(argv)
    if args.run and args.subset:
        parser.error("--run stores the test scores of a run; a --subset score (a validation fold) is not one")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.run:
        return score(args)
    from tasks.formats.run_lock import claim_bookkeeping

    with claim_bookkeeping(args.run):  # before scoring: a folder in use is refused before any work
        return score(args)


def score(args: argparse.Namespace) -> int:
    """Score ``args.csv``, print the report, record it in ``args.run`` when given."""
    from tasks.scoring import report_lines, score_submission, stored_scores  # after parsing: --help skips numpy

    asked = {"sdr": args.sdr, "sdr_mm": args.sdr_mm, "within": args.within, "baseline_age": args.baseline_age,
             "subset": args.subset or None, "per_image": args.per_image or None}
    options = {k: v for k, v in asked.items() if v is not None}
    result = score_submission(args.csv, args.gt, args.images, **options)  # faults end in run_main
    scores = stored_scores(result)
    if args.json:
        extra = {"per_image": result["per_image"]} if "per_image" in result else {}
        print(json.dumps({"csv": args.csv, "task": result["task"], "metric": result["metric"], **scores, **extra},
                         indent=1))
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
