"""Geometry of the two-stage wrist ROI: the crop box, crop-and-resize, and the exact inverse paste.

A box is ``(x0, y0, x1, y1)`` in pixels of the original image, ``x1``/``y1`` exclusive, square and inside
the image. It is the union bounding box of the ``box_classes`` (the eight carpals by default) grown by
``margin`` x its longer side on every side, made square around its centre and moved (not shrunk) to lie
inside the image; only a square larger than the image's shorter side is shrunk to that side. Square
boxes keep the crop's aspect, so the stage-2 model sees bones undistorted at one scale.

Crop and paste use ``cv2.resize`` with ``INTER_LINEAR`` both ways (half-pixel centres, the same
convention as ``F.interpolate(align_corners=False)``): with a box side equal to the crop size both are
copies, so paste(crop(x)) == x exactly; otherwise the paste is the bilinear inverse (a constant map
comes back exactly). The paste writes only inside the box.

Fallback when stage 1 finds none of the box classes: the lower-centre square of half the shorter side.
Hand radiographs are framed fingers-up with the wrist at the lower edge (boostcamp, RSNA and the
phantoms alike), so that square holds the wrist far more often than any other fixed region, and the
paste changes only pixels where stage 1 saw nothing of these classes. The whole image would be safe
too, but stage 2 is trained on wrist-sized crops and produces noise at a 3-4x different scale.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from core.cli import lazy_module
from tasks.formats.handbones import CLASSES, WRIST_CLASSES
from tasks.schema import Section

# The segmentation spec reads RoiConfig without numpy or OpenCV; the geometry loads them on first use.
cv2 = lazy_module("cv2")
np = lazy_module("numpy")

Box = tuple[int, int, int, int]

#: Classes stage 2 predicts by default: the eight carpals and the radius/ulna heads that border them.
ROI_CLASSES: tuple[str, ...] = (*WRIST_CLASSES, "Radius", "Ulna")


class RoiConfig(Section):
    """``data.roi`` of a stage-2 run: crops around the wrist instead of whole images (``data.image_size``
    is the crop size). ``classes``: what stage 2 predicts (its output channels, in this order);
    ``box_classes``: whose union box (+ ``margin``) is the crop; ``jitter``: training-only random change
    of the margin and the centre, as a fraction of the box side."""

    classes: list[str] = Field(default_factory=lambda: list(ROI_CLASSES), min_length=1)
    box_classes: list[str] = Field(default_factory=lambda: list(WRIST_CLASSES), min_length=1)
    margin: float = Field(0.2, ge=0, le=2)
    jitter: float = Field(0.1, ge=0, lt=1)

    @field_validator("classes", "box_classes")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in CLASSES]
        if unknown:
            raise ValueError(f"unknown class {unknown[0]!r} (classes: {CLASSES[0]} ... {CLASSES[-1]})")
        if len(set(names)) != len(names):
            raise ValueError("a class is named twice")
        return names

    @property
    def class_indices(self) -> list[int]:
        return [CLASSES.index(c) for c in self.classes]

    @property
    def box_indices(self) -> list[int]:
        return [CLASSES.index(c) for c in self.box_classes]


def square_box(bbox: tuple[float, float, float, float], margin: float, shape: tuple[int, int]) -> Box:
    """The square box around ``bbox`` (``x0, y0, x1, y1``, floats allowed) grown by ``margin`` x its longer
    side on each side, moved inside an image of ``shape`` = ``(h, w)`` (shrunk only beyond its shorter side)."""
    height, width = shape
    x0, y0, x1, y1 = bbox
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    side = int(min(max(1, round(side)), height, width))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bx = int(min(max(0, round(cx - side / 2)), width - side))
    by = int(min(max(0, round(cy - side / 2)), height - side))
    return bx, by, bx + side, by + side


def fallback_box(shape: tuple[int, int]) -> Box:
    """The lower-centre square of half the shorter side (see the module docstring for why)."""
    height, width = shape
    side = max(1, min(height, width) // 2)
    x0 = (width - side) // 2
    return x0, height - side, x0 + side, height


def mask_bbox(masks: np.ndarray) -> tuple[int, int, int, int] | None:
    """Union bounding box ``(x0, y0, x1, y1)`` (exclusive ends) of a ``(C, h, w)`` or ``(h, w)`` mask stack;
    None when every mask is empty."""
    union = masks.any(axis=0) if masks.ndim == 3 else masks.astype(bool)
    rows = np.flatnonzero(union.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(union.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def box_from_masks(masks: np.ndarray, margin: float) -> Box | None:
    """The crop box of ground-truth masks ``(C, h, w)`` of the box classes; None when all are empty."""
    bbox = mask_bbox(masks)
    return None if bbox is None else square_box(bbox, margin, masks.shape[-2:])


def box_from_probs(probs: np.ndarray, thresholds: np.ndarray, margin: float, shape: tuple[int, int]) -> Box:
    """The crop box in an image of ``shape`` from stage-1 probabilities ``(C, h, w)`` of the box classes at
    any size (float, or uint8 = p*255), each thresholded at its own threshold; the fallback box when none
    passes. The box is found on the probability grid and scaled to the image (pixel edges, so a map at the
    image size gives the mask's own box)."""
    scale = 255.0 if probs.dtype == np.uint8 else 1.0
    masks = probs > (np.asarray(thresholds, np.float32) * scale).reshape(-1, 1, 1)
    bbox = mask_bbox(masks)
    if bbox is None:
        return fallback_box(shape)
    sy, sx = shape[0] / probs.shape[-2], shape[1] / probs.shape[-1]
    x0, y0, x1, y1 = bbox
    return square_box((x0 * sx, y0 * sy, x1 * sx, y1 * sy), margin, shape)


def crop(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    """``image[..., y0:y1, x0:x1]`` resized to ``size x size`` (linear; a copy when the box side is ``size``).
    ``image``: ``(h, w)`` or a ``(C, h, w)`` stack (each channel alike)."""
    x0, y0, x1, y1 = box
    part = image[..., y0:y1, x0:x1]
    if part.shape[-2:] == (size, size):
        return np.ascontiguousarray(part)
    if part.ndim == 2:
        return cv2.resize(part, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.stack([cv2.resize(p, (size, size), interpolation=cv2.INTER_LINEAR) for p in part])


def crop_masks(masks: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Binary ``(C, h, w)`` masks cropped to ``box`` at ``size x size``, as uint8 0/1 (linear, then >= 0.5)."""
    return (crop(masks.astype(np.uint8) * 255, box, size) >= 128).astype(np.uint8)


def paste(out: np.ndarray, probs: np.ndarray, box: Box) -> np.ndarray:
    """Write ``(C, s, s)`` crop probabilities back into ``out`` ``(C, h, w)`` inside ``box`` (resized to the
    box, linear), in place; pixels outside the box are not touched. Returns ``out``."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    for c, p in enumerate(probs):
        if p.shape != (bh, bw):
            p = cv2.resize(p, (bw, bh), interpolation=cv2.INTER_LINEAR)
        out[c, y0:y1, x0:x1] = p
    return out


def scale_box(box: Box, shape: tuple[int, int], to_shape: tuple[int, int]) -> Box:
    """``box`` of an image of ``shape`` in a frame of ``to_shape``: edges scaled and rounded, at least one
    pixel, inside the frame."""
    sy, sx = to_shape[0] / shape[0], to_shape[1] / shape[1]
    x0, y0, x1, y1 = box
    nx0, ny0 = min(round(x0 * sx), to_shape[1] - 1), min(round(y0 * sy), to_shape[0] - 1)
    return nx0, ny0, min(max(round(x1 * sx), nx0 + 1), to_shape[1]), min(max(round(y1 * sy), ny0 + 1), to_shape[0])
