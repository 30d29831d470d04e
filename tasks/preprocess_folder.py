"""Preprocess a folder of radiographs (:class:`tasks.preprocess.Preprocess`) into PNGs (``tools/preprocess.py``).

Each output keeps its input's name (as .png); ``<output>/preprocess.csv`` lists per image the detected
orientation (when asked), the crop box in the input frame and the output size. An unreadable image is
skipped and reported, never the end of the folder.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from core.atomic import atomic_write
from tasks.formats.images import IMAGE_SUFFIXES, read_grey, write_png
from tasks.formats.names import check_name
from tasks.preprocess import Preprocess, letterbox
from tasks.schema import PreprocessConfig


@dataclass
class FolderResult:
    """What :func:`preprocess_folder` wrote: the table rows, the skipped images' messages, the seconds taken."""

    rows: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def list_images(root: Path, recursive: bool) -> list[Path]:
    """The images under ``root`` (png, jpg, bmp, tif), sorted; a missing folder or one without images is an error."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder not found")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    for p in files:
        check_name(p.name, str(p.parent))
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


def preprocess_folder(source: str | Path, output: str | Path, cfg: PreprocessConfig, *, recursive: bool = False,
                      size: int | None = None, sheet: str | Path | None = None, sheet_tile: int = 160,
                      sheet_columns: int = 10, classifier=None) -> FolderResult:
    """Run the steps of ``cfg`` on every image of ``source`` and write the PNGs (letterboxed to ``size`` x
    ``size`` when given), ``preprocess.csv`` and, with ``sheet``, a contact sheet of the outputs."""
    source, out_dir = Path(source), Path(output)
    files = list_images(source, recursive)
    pre = Preprocess(cfg, classifier=classifier)
    result, tiles = FolderResult(), []
    t0 = time.perf_counter()
    for path in files:
        rel = path.relative_to(source)
        try:
            done = pre.run(read_grey(path))
        except FormatError as err:
            result.skipped.append(str(err))
            continue
        image = letterbox(done.image, size) if size else done.image
        target = (out_dir / rel).with_suffix(".png")
        write_png(target, image)
        o = done.orientation
        result.rows.append({"image": str(rel), "output": str(target.relative_to(out_dir)),
                            "orientation_label": o.label if o else "", "rotation_cw_quarters": o.rotation if o else "",
                            "side": o.side if o else "", "box_x0": done.box[0], "box_y0": done.box[1],
                            "box_x1": done.box[2], "box_y1": done.box[3], "out_height": image.shape[0],
                            "out_width": image.shape[1]})
        if sheet:
            tiles.append((path.stem, image))
    result.seconds = time.perf_counter() - t0
    if result.rows:
        write_table(out_dir / "preprocess.csv", result.rows)
    if sheet and tiles:
        write_png(sheet, contact_sheet(tiles, sheet_tile, sheet_columns))
    return result
