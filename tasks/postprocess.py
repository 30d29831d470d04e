"""Per-class mask post-processing (OpenCV): keep the largest component, fill holes, drop small components.

An operation is a string: ``largest_component``, ``fill_holes`` or ``min_area:<pixels>`` (pixels of the
original image). A class's operations apply in the order listed, to its binary mask at the original
size, after thresholding and before RLE encoding. Foreground components are 8-connected; a hole is
background not 4-connected to the border of the image (the complementary connectivity, so a diagonal
gap in a bone's outline does not leak).

Every operation only removes pixels or fills inside the mask's bounding box, so it may run on any crop
that holds the whole mask (the ensemble fuser works on such crops).
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

OPERATIONS = ("largest_component", "fill_holes", "min_area")


def parse_op(op: str) -> tuple[str, int]:
    """``"min_area:64"`` → ``("min_area", 64)``; the others take no value (0). A ValueError names the fault."""
    name, sep, value = str(op).partition(":")
    if name not in OPERATIONS:
        near = difflib.get_close_matches(name, OPERATIONS, n=1, cutoff=0.5)
        raise ValueError(f"unknown post-processing operation {op!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                         + " (valid: largest_component, fill_holes, min_area:<pixels>)")
    if name != "min_area":
        if sep:
            raise ValueError(f"post-processing operation {op!r}: {name} takes no value")
        return name, 0
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"post-processing operation {op!r}: min_area needs a whole number of pixels >= 1 "
                         f"(min_area:64)")
    return name, int(value)


def check_postprocess(spec: Mapping[str, Sequence[str]], classes: Sequence[str]) -> None:
    """Every key a class of ``classes`` and every operation valid (ValueError naming the first fault)."""
    for cls, ops in spec.items():
        if cls not in classes:
            near = difflib.get_close_matches(cls, classes, n=1)
            raise ValueError(f"post-processing for unknown class {cls!r}" + (f"; did you mean {near[0]!r}?" if near else ""))
        for op in ops:
            parse_op(op)


def class_ops(spec: Mapping[str, Sequence[str]], classes: Sequence[str]) -> list[tuple[str, ...]]:
    """The operations of each class in class order (empty where ``spec`` names none)."""
    check_postprocess(spec, classes)
    return [tuple(spec.get(c, ())) for c in classes]


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    return labels, stats[:, cv2.CC_STAT_AREA]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of ``mask`` (the first in raster order on a tie); empty stays empty."""
    labels, areas = _components(mask)
    if len(areas) <= 2:
        return mask.astype(bool)
    return labels == 1 + int(np.argmax(areas[1:]))


def min_area(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``pixels`` pixels."""
    labels, areas = _components(mask)
    keep = areas >= pixels
    keep[0] = False
    return keep[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every hole filled: background that no 4-connected path joins to the image border."""
    h, w = mask.shape
    outside = np.zeros((h + 2, w + 2), np.uint8)
    outside[1:-1, 1:-1] = mask.astype(bool)
    flood = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(outside, flood, (0, 0), 2, flags=4)
    return outside[1:-1, 1:-1] != 2


def apply_ops(mask: np.ndarray, ops: Sequence[str]) -> np.ndarray:
    """``mask`` (bool or 0/1, ``(H, W)``) after ``ops`` in order, as bool."""
    out = np.ascontiguousarray(mask, dtype=bool)
    for op in ops:
        if not out.any():
            break
        name, value = parse_op(op)
        if name == "largest_component":
            out = largest_component(out)
        elif name == "fill_holes":
            out = fill_holes(out)
        else:
            out = min_area(out, value)
    return out
