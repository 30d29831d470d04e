#!/usr/bin/env python
"""Preprocess a folder of radiographs (the steps of tasks/preprocess.py) and write the results as PNGs.

  python tools/preprocess.py ../shared/data/real/rsna_boneage/images out/rsna --crop-to-hand --minmax --clahe
  python tools/preprocess.py IN OUT --orientation rotate_mirror --crop-to-hand --remove-background
  python tools/preprocess.py IN OUT --roi-mosaic --mosaic-tile 256                 # 2x2 ROI mosaics
  python tools/preprocess.py IN OUT -c configs/boneage/real_rsna_finetune.yaml     # data.preprocess of a config
  python tools/preprocess.py IN OUT --crop-to-hand --size 256 --contact-sheet docs/rsna_crops.png

Each output keeps its input's name (as .png); ``OUT/preprocess.csv`` lists per image the detected
orientation (when asked), the crop box in the input frame and the output size. Unreadable images are
reported and skipped (exit status 1 if any).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import engine  # noqa: F401  (offline environment first)
from pydantic import ValidationError

from core.cli import run_main
from engine.config import field_message, load_config
from tasks.schema import PreprocessConfig
from tasks.preprocess_folder import preprocess_folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="folder of images (png, jpg, bmp, tif)")
    p.add_argument("output", help="folder for the processed PNGs (created)")
    p.add_argument("-c", "--config", help="take the steps from a bone-age config's data.preprocess")
    p.add_argument("--recursive", action="store_true", help="also images in sub-folders (output keeps the tree)")
    p.add_argument("--orientation", choices=("off", "rotate", "rotate_mirror"), default=None)
    p.add_argument("--orientation-model", metavar="CKPT",
                   help="a trained orientation run (runs/orientation/<run>/best.pt: train.py -c "
                        "configs/orientation/*.yaml) that decides the side where the hands and the burnt-in marker "
                        "leave it uncertain")
    p.add_argument("--remove-background", action="store_true")
    p.add_argument("--crop-to-hand", action="store_true")
    p.add_argument("--crop-margin", type=float, default=None)
    p.add_argument("--minmax", action="store_true")
    p.add_argument("--clahe", action="store_true")
    p.add_argument("--clahe-clip", type=float, default=None)
    p.add_argument("--roi-mosaic", action="store_true")
    p.add_argument("--mosaic-tile", type=int, default=None)
    p.add_argument("--size", type=int, help="letterbox every output to SIZE x SIZE")
    p.add_argument("--contact-sheet", help="also write a contact sheet PNG of the outputs (small tiles)")
    p.add_argument("--sheet-tile", type=int, default=160, help="tile size of the contact sheet (px)")
    p.add_argument("--sheet-columns", type=int, default=10)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> PreprocessConfig:
    base: dict = {}
    if args.config:
        cfg = load_config(args.config)
        if not hasattr(cfg.data, "preprocess"):
            raise ValueError(f"{args.config}: a {cfg.task} config has no data.preprocess (bone-age configs do)")
        base = cfg.data.preprocess.model_dump()
    flags = {"remove_background": args.remove_background, "crop_to_hand": args.crop_to_hand, "minmax": args.minmax,
             "clahe": args.clahe, "roi_mosaic": args.roi_mosaic}
    base.update({k: True for k, v in flags.items() if v})
    for key, value in (("orientation", args.orientation), ("crop_margin", args.crop_margin),
                       ("clahe_clip", args.clahe_clip), ("mosaic_tile", args.mosaic_tile)):
        if value is not None:
            base[key] = value
    for flag, value, least in (("--size", args.size, 16), ("--sheet-tile", args.sheet_tile, 16),
                               ("--sheet-columns", args.sheet_columns, 1)):
        if value is not None and value < least:
            raise ValueError(f"{flag} {value}: must be at least {least}")
    try:
        return PreprocessConfig.model_validate(base)
    except ValidationError as err:
        first = err.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise ValueError(f"{flag} {first.get('input')!r}: {field_message(first)}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = build_config(args)
    classifier = None
    if args.orientation_model:
        from engine.predictor import load_classifier

        classifier = load_classifier(args.orientation_model)
    result = preprocess_folder(args.input, args.output, cfg, recursive=args.recursive, size=args.size,
                               sheet=args.contact_sheet, sheet_tile=args.sheet_tile, sheet_columns=args.sheet_columns,
                               classifier=classifier)
    for message in result.skipped:
        print(f"skipped: {message}", file=sys.stderr)
    n, seconds = len(result.rows), result.seconds
    print(f"wrote {n} images to {Path(args.output)} in {seconds:.1f}s ({n / max(seconds, 1e-9):.2f} img/s)"
          + (f"; {len(result.skipped)} unreadable" if result.skipped else ""))
    return 1 if result.skipped else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
