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
import csv
import sys
import time
from pathlib import Path

import engine  # noqa: F401  (offline environment first)
import numpy as np

from engine.cli import run_main  # noqa: E402
from engine.config import field_message, load_config  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from tasks.formats import FormatError  # noqa: E402
from tasks.formats.atomic import atomic_write  # noqa: E402
from tasks.formats.images import IMAGE_SUFFIXES, read_grey, write_png  # noqa: E402
from tasks.preprocess import Preprocess, PreprocessConfig, letterbox  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="folder of images (png, jpg, bmp, tif)")
    p.add_argument("output", help="folder for the processed PNGs (created)")
    p.add_argument("-c", "--config", help="take the steps from a bone-age config's data.preprocess")
    p.add_argument("--recursive", action="store_true", help="also images in sub-folders (output keeps the tree)")
    p.add_argument("--orientation", choices=("off", "rotate", "rotate_mirror"), default=None)
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
        if cfg.task != "boneage":
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


def list_images(root: Path, recursive: bool) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder not found")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def contact_sheet(images: list[tuple[str, np.ndarray]], tile: int, columns: int) -> np.ndarray:
    """Tiles of ``tile`` px (letterboxed, name written on each) in rows of ``columns``."""
    import cv2

    tiles = []
    for name, image in images:
        t = letterbox(image, tile)
        cv2.putText(t, name[:18], (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 255, 1, cv2.LINE_AA)
        tiles.append(np.pad(t, 1, constant_values=90))
    blank = np.zeros_like(tiles[0])
    while len(tiles) % columns:
        tiles.append(blank)
    return np.vstack([np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)])


def write_table(path: Path, rows: list[dict]) -> None:
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = build_config(args)
    files = list_images(Path(args.input), args.recursive)
    pre = Preprocess(cfg)
    out_dir = Path(args.output)
    rows, sheet, failed = [], [], 0
    t0 = time.perf_counter()
    for path in files:
        rel = path.relative_to(args.input)
        try:
            result = pre.run(read_grey(path))
        except FormatError as err:
            print(f"skipped: {err}", file=sys.stderr)
            failed += 1
            continue
        image = letterbox(result.image, args.size) if args.size else result.image
        target = (out_dir / rel).with_suffix(".png")
        write_png(target, image)
        o = result.orientation
        rows.append({"image": str(rel), "output": str(target.relative_to(out_dir)),
                     "orientation_label": o.label if o else "", "rotation_cw_quarters": o.rotation if o else "",
                     "side": o.side if o else "", "box_x0": result.box[0], "box_y0": result.box[1],
                     "box_x1": result.box[2], "box_y1": result.box[3], "out_height": image.shape[0],
                     "out_width": image.shape[1]})
        if args.contact_sheet:
            sheet.append((path.stem, image))
    seconds = time.perf_counter() - t0
    if rows:
        write_table(out_dir / "preprocess.csv", rows)
    if args.contact_sheet and sheet:
        write_png(args.contact_sheet, contact_sheet(sheet, args.sheet_tile, args.sheet_columns))
    print(f"wrote {len(rows)} images to {out_dir} in {seconds:.1f}s ({len(rows) / max(seconds, 1e-9):.2f} img/s)"
          + (f"; {failed} unreadable" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
