"""Segmentation thresholds and masks, numpy and OpenCV only (the ensemble path from caches imports no torch;
fusing CSVs, which only resolves thresholds, not even OpenCV)."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from core.cli import lazy_module
from tasks.formats.handbones import CLASSES
from tasks.rle import encode
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


def class_masks(probs: np.ndarray, size: tuple[int, int], thresholds: np.ndarray,
                out: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Each class's ``(H, W)`` uint8 mask at the original size, in class order, from ``(C, h, w)`` probabilities
    (float, or uint8 = p*255): bilinear with half-pixel centres (as ``F.interpolate(align_corners=False)``),
    then ``p > threshold``.

    ``out``: a ``(C, H, W)`` array the masks are written into; without it, one ``(H, W)`` buffer is reused, so a
    mask is valid only until the next one is made (encode it first).
    """
    height, width = size
    scale = 255.0 if probs.dtype == np.uint8 else 1.0
    buffer = np.empty((height, width), np.uint8) if out is None else None
    upsampled = None
    for c, prob in enumerate(probs):
        if prob.shape != (height, width):
            upsampled = cv2.resize(prob.astype(np.float32, copy=False), (width, height), dst=upsampled,
                                   interpolation=cv2.INTER_LINEAR)
            prob = upsampled
        mask = buffer if out is None else out[c]
        np.greater(prob, thresholds[c] * scale, out=mask, casting="unsafe")
        yield mask


def probs_to_masks(probs: np.ndarray, size: tuple[int, int], thresholds: np.ndarray) -> np.ndarray:
    """``(C, h, w)`` probabilities → ``(C, H, W)`` uint8 masks at the original size (:func:`class_masks`), one
    class at a time, so a 29x2048x2048 float map never exists in memory."""
    out = np.empty((probs.shape[0], *size), np.uint8)
    for _ in class_masks(probs, size, thresholds, out):
        pass
    return out


def encode_probs(probs: np.ndarray, size: tuple[int, int], thresholds: np.ndarray) -> list[str]:
    """The RLE of each class's mask at the original size (the submission's rows of one image): each class
    upsampled, thresholded and encoded in turn, so one ``(H, W)`` mask exists at a time, never ``(C, H, W)``."""
    return [encode(mask) for mask in class_masks(probs, size, thresholds)]
