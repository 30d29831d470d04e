"""The hand mask of a radiograph: which pixels are hand (soft tissue and bone), and where its palm is.

Computed on a downscaled copy (long side ``work_size``) and scaled back, so it costs the same on a
2080 px RSNA image as on a 768 px one. The preprocessing pipeline (:mod:`tasks.preprocess`: crop to
the hand, background removal, ROI crops) and the orientation detector (:mod:`tasks.orientation.heuristic`) both
build on it. Images are ``(H, W)`` uint8, masks ``(H, W)`` bool.
"""
from __future__ import annotations

import cv2
import numpy as np


# --------------------------------------------------------------------------------------------------
# Intensity
# --------------------------------------------------------------------------------------------------

def minmax(image: np.ndarray, low_pct: float = 0.0, high_pct: float = 100.0, mask: np.ndarray | None = None) -> np.ndarray:
    """Stretch a uint8 image so the ``low_pct``/``high_pct`` percentiles (of the ``mask`` pixels, if
    given) map to 0/255. Percentiles are grey levels of the histogram; the stretch is a lookup table."""
    if image.dtype != np.uint8:
        raise ValueError(f"minmax: expected a uint8 image, got {image.dtype}")
    m = mask.astype(np.uint8) if mask is not None and mask.any() else None
    hist = cv2.calcHist([np.ascontiguousarray(image)], [0], m, [256], [0, 256]).ravel()
    cdf = np.cumsum(hist) / max(hist.sum(), 1.0)
    lo = int(np.searchsorted(cdf, low_pct / 100.0, side="right")) if low_pct > 0 else int(np.flatnonzero(hist)[0])
    hi = int(np.searchsorted(cdf, high_pct / 100.0 - 1e-12)) if high_pct < 100 else int(np.flatnonzero(hist)[-1])
    if hi <= lo:
        return np.zeros_like(image, dtype=np.uint8)
    lut = np.clip(np.round((np.arange(256, dtype=np.float32) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    return cv2.LUT(np.ascontiguousarray(image), lut)


# --------------------------------------------------------------------------------------------------
# Hand mask
# --------------------------------------------------------------------------------------------------

def downscale(image: np.ndarray, work_size: int) -> tuple[np.ndarray, float]:
    """``image`` with its long side at most ``work_size`` (area interpolation) and the scale applied."""
    h, w = image.shape
    scale = min(1.0, work_size / max(h, w))
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _disk(radius: int) -> np.ndarray:
    r = max(1, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def grow(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within ``radius`` (Euclidean) of ``mask``: a dilation by a disc, at one distance transform's
    cost whatever the radius."""
    if radius <= 0 or not mask.any():
        return mask.astype(bool)
    dist = cv2.distanceTransform((~mask.astype(bool)).astype(np.uint8), cv2.DIST_L2, 5)
    return dist <= radius


def _border_artifacts(small: np.ndarray) -> np.ndarray:
    """Saturated regions touching the image border (film edges, collimator corners), not anatomy."""
    if int(small.max()) < 250:
        return np.zeros(small.shape, bool)
    sat = (small >= 250).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(sat, connectivity=8)
    h, w = small.shape
    out = np.zeros(small.shape, bool)
    for k in range(1, n):
        x, y, bw, bh, area = stats[k]
        touches = x == 0 or y == 0 or x + bw == w or y + bh == h
        if touches and area >= 1e-3 * h * w:
            out |= labels == k
    # The anti-aliased halo of a saturated edge is almost as bright: drop it too.
    return cv2.dilate(out.astype(np.uint8), _disk(max(1, round(max(h, w) / 128)))).astype(bool)


def _straight_bars(fg: np.ndarray) -> np.ndarray:
    """Thin straight horizontal/vertical bars of ``fg`` (collimator and film edges).

    A bar survives an opening by a line a third of the image long but not one by a disc 1/16 of the
    image wide, and stays at least a third of the image long once the thick parts are taken away.
    A finger lined up with its metacarpal can pass the first two tests, never the last.
    """
    size = max(fg.shape)
    length = max(3, size // 3)
    u8 = fg.astype(np.uint8)
    lines = cv2.morphologyEx(u8, cv2.MORPH_OPEN, np.ones((1, length), np.uint8)) | \
        cv2.morphologyEx(u8, cv2.MORPH_OPEN, np.ones((length, 1), np.uint8))
    r = max(2, round(size / 32))
    # Outside the image counts as background here, or a bar along the border would look thick.
    thick = cv2.morphologyEx(np.pad(u8, r + 1), cv2.MORPH_OPEN, _disk(r))[r + 1:-r - 1, r + 1:-r - 1]
    thin = ((lines > 0) & (thick == 0)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(thin, connectivity=8)
    long = [k for k in range(1, n) if max(stats[k, cv2.CC_STAT_WIDTH], stats[k, cv2.CC_STAT_HEIGHT]) >= length]
    bars = np.isin(labels, long)
    return cv2.dilate(bars.astype(np.uint8), _disk(1)).astype(bool)


def _otsu(values: np.ndarray) -> float:
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 128.0
    omega = np.cumsum(hist) / total
    mu = np.cumsum(hist * np.arange(256)) / total
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(np.argmax(between))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out.astype(bool)


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and areas (index 0 = background) of the 8-connected components of ``mask``."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels, stats[:, cv2.CC_STAT_AREA].copy()


def _rect_fill(mask: np.ndarray) -> float:
    """Area of ``mask`` over the area of its minimum rotated rectangle: ~1 for a film plate, < 0.8 for a hand."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return 0.0
    (_, _), (rw, rh), _ = cv2.minAreaRect(np.concatenate(contours))
    return float(mask.sum()) / max(rw * rh, 1.0)


def _threshold(norm: np.ndarray, valid: np.ndarray, soft: float = 0.0, background: np.ndarray | None = None) -> np.ndarray:
    """Foreground above Otsu's level of the ``valid`` pixels, lowered by ``soft`` towards the background.

    Otsu alone splits bone from everything else on some films and loses the dim soft tissue of the
    fingertips; ``soft`` moves the level from Otsu (0) towards the mode of the ``background`` pixels
    (default: the ``valid`` pixels below Otsu's level) (1).
    """
    values = norm[valid]
    t = _otsu(values)
    if soft > 0:
        around = norm[background & valid] if background is not None else values
        around = around[around <= t]
        if around.size:
            mode = float(np.argmax(np.bincount(around, minlength=256)))
            t = t - soft * (t - mode)
    return (norm > t) & valid


# The dim soft tissue (fingertips) is looked for within this fraction of the image's long side from
# the Otsu core: enough for a finger whose distal half is fainter than Otsu's level, not for a plate.
SOFT_BAND = 0.2


def hand_mask_small(image: np.ndarray, work_size: int = 384, max_hands: int = 2,
                    second_hand_ratio: float = 0.35, soft: float = 0.5) -> tuple[np.ndarray, float]:
    """The hand mask at the working scale and that scale (``small = scale * original``).

    1. Percentile-normalised, blurred image; saturated border artefacts (film edges, collimator
       corners) left out. 2. Core: Otsu foreground, re-thresholded inside itself while it is a bright
       rectangular plate rather than a hand, opened to drop thin film-edge lines; its largest
       component, plus a second one of at least ``second_hand_ratio`` of its area when ``max_hands``
       is 2. 3. Hand: a lower level, halfway from Otsu's to the mode of a ring around the core (the
       local background: the film plate the hand lies on, if any), that keeps the dim soft tissue of
       the fingertips, limited to a band around the core (``soft=0``: the core alone); closed,
       holes filled.
    """
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"hand_mask: expected a 2-D grey image, got shape {image.shape}")
    small, scale = downscale(np.ascontiguousarray(image, dtype=np.uint8), work_size)
    valid = ~_border_artifacts(small)
    norm = minmax(small, 0.5, 99.5, mask=valid)
    norm = cv2.GaussianBlur(norm, (5, 5), 0)
    region = valid
    fg = _threshold(norm, region, soft=0.0)
    for _ in range(2):
        labels, areas = components(fg)
        if len(areas) < 2:
            break
        big = labels == int(np.argmax(areas[1:]) + 1)
        if big.sum() < 0.25 * fg.size or _rect_fill(big) < 0.85:
            break
        inner = cv2.erode((big & valid).astype(np.uint8), _disk(3)).astype(bool)
        refined = _threshold(norm, inner, soft=0.0)
        if refined.sum() < 0.05 * fg.size:
            break
        fg, region = refined, inner
    radius = max(1, round(max(small.shape) / 160))
    fg &= ~_straight_bars(fg)
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, _disk(radius)).astype(bool)
    labels, areas = components(fg)
    if len(areas) < 2:
        return np.zeros(small.shape, bool), scale
    order = np.argsort(areas[1:])[::-1] + 1
    keep = [order[0]]
    if max_hands >= 2 and len(order) > 1 and areas[order[1]] >= second_hand_ratio * areas[order[0]]:
        keep.append(order[1])
    core = np.isin(labels, keep)
    size = max(small.shape)
    to_core = cv2.distanceTransform((~core).astype(np.uint8), cv2.DIST_L2, 5)
    band = to_core <= max(2, round(size * SOFT_BAND))
    ring = (to_core <= max(2, round(size / 24))) & (to_core > max(1, round(size / 64)))
    grown = _threshold(norm, region, soft=soft, background=ring) & band if soft > 0 else core
    grown &= ~_straight_bars(grown)
    grown = cv2.morphologyEx(grown.astype(np.uint8), cv2.MORPH_OPEN, _disk(radius)).astype(bool) | core
    labels, _ = components(grown)
    mask = np.isin(labels, np.unique(labels[core]))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, _disk(radius)).astype(bool)
    return _fill_holes(mask), scale


def hand_mask(image: np.ndarray, work_size: int = 384, max_hands: int = 2, soft: float = 0.5) -> np.ndarray:
    """``(H, W)`` bool mask of the hand(s) (soft tissue and bone) of a radiograph of any size."""
    small, _ = hand_mask_small(image, work_size, max_hands, soft=soft)
    h, w = image.shape
    if small.shape == (h, w):
        return small
    return cv2.resize(small.astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR).astype(bool)


def palm(mask: np.ndarray) -> tuple[tuple[float, float], float]:
    """Centre ``(x, y)`` and radius of the largest disc inside ``mask`` (the image border counts as outside)."""
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return (float(x), float(y)), float(dist[y, x])
