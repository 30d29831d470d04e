"""The burnt-in side marker of a radiograph: a bright lead letter "L" or "R" somewhere on the film.

OCR-free: on a copy at most 512 px long, the bright connected components of letter size (at three
brightness thresholds) are cut out, squared and scaled to a 32 x 32 glyph, and compared (intersection
over union) with "L" and "R" rendered by OpenCV in five fonts and three stroke widths, in all eight
turns and mirrors (the marker turns and flips with the film). A letter counts only when it matches
closely (IoU >= :data:`MIN_IOU`) and clearly better than the other letter (by :data:`MIN_MARGIN`):
the real markers come in many fonts and often beside other text, so most candidates match neither
well, and then no side is reported. The letter names the hand: "L" a left hand, "R" a right one.
The two thresholds were chosen on the 68 shared SHS_NET orientation images (7 right, 1 wrong of the
50 single hands; docs/benchmarks.md has the numbers).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Literal

import cv2
import numpy as np

GLYPH = 32
MIN_IOU = 0.75
MIN_MARGIN = 0.1
WORK_SIZE = 512
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
         cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_ITALIC)


def glyph(mask: np.ndarray) -> np.ndarray:
    """A binary shape cropped to its box, centred in a square and scaled to ``GLYPH x GLYPH``."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return np.zeros((GLYPH, GLYPH), bool)
    cut = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8) * 255
    h, w = cut.shape
    side = max(h, w)
    square = np.zeros((side, side), np.uint8)
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = cut
    return cv2.resize(square, (GLYPH, GLYPH), interpolation=cv2.INTER_AREA) >= 128


@lru_cache(maxsize=1)
def templates() -> dict[str, np.ndarray]:
    """``{"L": (n, GLYPH, GLYPH) bool, "R": ...}``: each letter in every font, stroke width, turn and mirror."""
    out: dict[str, list[np.ndarray]] = {"L": [], "R": []}
    for letter in out:
        for font in FONTS:
            for thickness in (4, 8, 12):
                canvas = np.zeros((128, 128), np.uint8)
                cv2.putText(canvas, letter, (15, 105), font, 3.0, 255, thickness)
                g = glyph(canvas > 0)
                for k in range(4):
                    turned = np.rot90(g, k)
                    out[letter] += [turned, turned[:, ::-1]]
    return {letter: np.array(v) for letter, v in out.items()}


def _iou(shape: np.ndarray, stack: np.ndarray) -> float:
    inter = (stack & shape).sum(axis=(1, 2))
    union = (stack | shape).sum(axis=(1, 2))
    return float((inter / np.maximum(union, 1)).max())


def marker_scores(image: np.ndarray) -> list[tuple[float, float]]:
    """``(IoU with "L", IoU with "R")`` of every letter-sized bright component of ``image``."""
    scale = min(1.0, WORK_SIZE / max(image.shape))
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
    long_side = max(small.shape)
    lo, hi = 0.015 * long_side, 0.12 * long_side
    stack = templates()
    scores = []
    for threshold in sorted({float(np.percentile(small, 99.7)), 200.0, 230.0}):
        n, labels, stats, _ = cv2.connectedComponentsWithStats((small >= threshold).astype(np.uint8), connectivity=8)
        for i in range(1, n):
            x, y, w, h, area = stats[i]
            if not (lo <= max(w, h) <= hi and area >= 25 and 0.1 <= area / (w * h) <= 0.75 and 1 / 3 <= w / h <= 3):
                continue
            shape = glyph(labels[y:y + h, x:x + w] == i)
            scores.append((_iou(shape, stack["L"]), _iou(shape, stack["R"])))
    return scores


def find_side_marker(image: np.ndarray) -> Literal["left", "right"] | None:
    """The hand named by the burnt-in marker, or None when no component reads clearly as "L" or "R"."""
    best: tuple[float, str | None] = (0.0, None)
    for iou_l, iou_r in marker_scores(image):
        for score, other, side in ((iou_l, iou_r, "left"), (iou_r, iou_l, "right")):
            if score >= MIN_IOU and score - other >= MIN_MARGIN and score > best[0]:
                best = (score, side)
    return best[1]  # type: ignore[return-value]
