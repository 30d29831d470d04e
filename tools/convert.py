#!/usr/bin/env python
"""Convert the competition data into other tools' formats.

  python tools/convert.py yolo --root data/phantom/handbones/train --out data/yolo/f0 --fold 0 --n-folds 5

``yolo``: boostcamp polygons → an ultralytics segment dataset for one patient-grouped fold
(:mod:`tasks.formats.yolo`): ``images/{train,val}/`` (symbolic links, or copies with ``--copy``),
``labels/{train,val}/``, ``dataset.yaml`` and ``manifest.json``. YOLO runs convert on their own, into
a cache folder; this command is for looking at the result or training with ultralytics by hand.
"""
from __future__ import annotations

import argparse
import sys

import engine  # noqa: F401  (offline environment first)

from core.cli import run_main  # noqa: E402

from tasks.formats.yolo import convert_yolo, read_manifest  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="format", required=True)
    yolo = sub.add_parser("yolo", help="ultralytics segment labels + dataset YAML for one fold")
    yolo.add_argument("--root", required=True, help="training folder holding DCM/ and outputs_json/")
    yolo.add_argument("--out", required=True, help="output folder (replaced if it is an earlier conversion)")
    yolo.add_argument("--fold", type=int, default=0)
    yolo.add_argument("--n-folds", type=int, default=5)
    yolo.add_argument("--copy", action="store_true", help="copy images instead of linking to them")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.n_folds < 2 or not 0 <= args.fold < args.n_folds:
        raise ValueError(f"--fold {args.fold} --n-folds {args.n_folds}: needs at least 2 folds and 0 <= fold < n-folds")
    data_yaml = convert_yolo(args.root, args.out, args.fold, args.n_folds, copy=args.copy)
    manifest = read_manifest(data_yaml.parent) or {}
    print(f"wrote {data_yaml}: {len(manifest.get('train', []))} train, {len(manifest.get('val', []))} val images "
          f"(fold {args.fold} of {args.n_folds})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
