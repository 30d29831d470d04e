#!/usr/bin/env python
"""Pseudo-label the test images with a fitted ensemble: keep the predictions a threshold fitted on validation calls
confident, and write them as a training folder that training reads through ``data.pseudo_roots``.

  python tools/fit_ensemble.py configs/ensembles/seg_soft.yaml              # the ensemble, fitted
  python tools/pseudo_label.py configs/ensembles/seg_soft.yaml --out data/pseudo/seg_r1 [--precision 0.99]
  python train.py -c configs/segmentation/demo_unet.yaml --data.pseudo_roots='[data/pseudo/seg_r1]' --name=unet_r1

Reads the members' out-of-fold validation caches (``<run>/preds/val``) and the labels, fits the confidence
threshold at which the kept labels are right at least PRECISION of the time on validation (segmentation: a
probability band per class, pixels inside it ignored by the loss; keypoints: the members' spread per point;
bone age: the members' spread per image; docs/cycle.md), then takes the test predictions from the members'
``preds/test`` caches (or, where those are missing, their models) and writes the kept ones into OUT in the task's
training layout: images as links to the test images, labels in the task's format, ``pseudo.json`` (source,
thresholds, what was kept). Prints the thresholds and the kept fractions.
"""
from __future__ import annotations

import argparse
import sys

import engine  # noqa: F401  (offline environment first)
from core.cli import run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="ensemble config (configs/ensembles/*.yaml), fitted where it says 'fit'")
    parser.add_argument("--out", required=True, help="the pseudo-labelled folder to write")
    parser.add_argument("--precision", type=float, default=0.99,
                        help="share of the kept labels that must be right on validation, in (0, 1) (default 0.99)")
    parser.add_argument("--out-dir", help="runs folder of the ensemble (default: the config's out_dir)")
    parser.add_argument("--tta", action="store_true", help="members predicting on the fly (no test cache) use TTA")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT (once the new folder is complete)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from ensembles.config import load_ensemble_config
    from ensembles.pseudo import pseudo_label, pseudo_report
    from tasks.pseudo import check_precision

    check_precision(args.precision)
    ens = load_ensemble_config(args.config, {"out_dir": args.out_dir} if args.out_dir else None)
    out, manifest = pseudo_label(ens, args.out, precision=args.precision, tta=args.tta, device=args.device,
                                 overwrite=args.overwrite, progress=not args.quiet)
    print(pseudo_report(str(out), manifest))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
