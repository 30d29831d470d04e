"""Segmentation thresholds and masks, numpy and OpenCV only (the ensemble path from caches imports no torch;
fusing CSVs, which only resolves thresholds, not even OpenCV)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.cli import lazy_module
from tasks.formats.handbones import CLASSES
from tasks.schema import check_thresholds

cv2 = lazy_module("cv2")


def resolve_thresholds(threshold: float | Sequence[float] | dict[str, float], classes: Sequence[str] = CLASSES) -> np.ndarray:
    """Per-class thresholds from a float, a list in class order, or a ``{class: t}`` dict (others 0.5).
    Values outside (0, 1), a list of another length or an unknown class are a ValueError
    (:func:`tasks.base.check_thresholds`)."""
    check_thresholds(threshold, classes)
    if isinstance(threshold, (int, float)):
        return np.full(len(classes), float(threshold), np.float32)
    if isinstance(threshold, dict):
        return np.array([float(threshold.get(c, 0.5)) for c in classes], np.float32)
    return np.asarray(threshold, np.float32)


def probs_to_masks(probs: np.ndarray, size: tuple[int, int], thresholds: np.ndarray) -> np.ndarray:
    """``(C, h, w)`` probabilities (float, or uint8 = p*255) → ``(C, H, W)`` uint8 masks at the original size.

    One class at a time (bilinear, half-pixel centres, as ``F.interpolate(align_corners=False)``), so a
    29x2048x2048 float map never exists in memory.
    """
    height, width = size
    scale = 255.0 if probs.dtype == np.uint8 else 1.0
    out = np.empty((probs.shape[0], height, width), np.uint8)
    for c, prob in enumerate(probs):
        if prob.shape != (height, width):
            prob = cv2.resize(prob.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        np.greater(prob, thresholds[c] * scale, out=out[c], casting="unsafe")
    return out
