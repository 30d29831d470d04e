"""Radiograph preprocessing: intensity normalisation, hand mask, crop to the hand, ROI crops and mosaic.

The steps follow the RSNA 2017 bone-age pipelines: min-max (percentile) normalisation, CLAHE,
a hand mask (threshold + largest contour(s) + closing), background removal and a crop to the hand
with a margin, orientation normalisation (:mod:`tasks.orientation`), and crops of the regions that
carry the maturity signal (carpus, MCP joints, middle finger, thumb) tiled 2x2.

Every step works on ``(H, W)`` uint8 images of any size; masks are ``(H, W)`` bool. The hand mask is
computed on a downscaled copy (long side ``work_size``) and scaled back, so it costs the same on a
2080 px RSNA image as on a 768 px one. :class:`Preprocess` chains the steps from the config's
``data.preprocess`` section; its :attr:`Preprocess.tag` keys the sample cache, so an epoch never
redoes them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from tasks.base import Section

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), pixels
ROI_NAMES = ("carpus", "mcp", "middle_finger", "thumb")


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


def clahe(image: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV) on a uint8 image."""
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(np.ascontiguousarray(image))


# --------------------------------------------------------------------------------------------------
# Hand mask
# --------------------------------------------------------------------------------------------------

def _downscale(image: np.ndarray, work_size: int) -> tuple[np.ndarray, float]:
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
    small, scale = _downscale(np.ascontiguousarray(image, dtype=np.uint8), work_size)
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


# --------------------------------------------------------------------------------------------------
# Crop to the hand
# --------------------------------------------------------------------------------------------------

def mask_box(mask: np.ndarray, margin: float = 0.05) -> Box:
    """Bounding box of ``mask`` grown by ``margin`` x its longer side, clipped to the image (whole image if empty)."""
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, 0, w, h
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    pad = int(round(margin * max(x1 - x0, y1 - y0)))
    return max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def remove_background(image: np.ndarray, mask: np.ndarray, grow_by: float = 0.01) -> np.ndarray:
    """Zero every pixel farther than ``grow_by`` x the longer side from the hand (labels, film edges,
    plates). The margin is grown on a copy of the mask at most 512 px long (fast on 2000 px films)."""
    h, w = mask.shape
    radius = grow_by * max(h, w)
    keep = mask.astype(bool)
    if radius >= 1:
        small, scale = _downscale(keep.astype(np.uint8) * 255, 512)
        near = grow(small >= 128, radius * scale).astype(np.uint8)
        keep = keep | cv2.resize(near, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return np.where(keep, image, 0).astype(np.uint8)


def crop_to_hand(image: np.ndarray, mask: np.ndarray | None = None, margin: float = 0.05,
                 background: bool = True) -> tuple[np.ndarray, Box]:
    """The hand cropped with ``margin``; ``background=False`` also blanks what is not hand."""
    if mask is None:
        mask = hand_mask(image)
    if mask.shape != image.shape:
        raise ValueError(f"crop_to_hand: mask {mask.shape} and image {image.shape} differ")
    if not background:
        image = remove_background(image, mask)
    box = mask_box(mask, margin)
    return crop(image, box), box


# --------------------------------------------------------------------------------------------------
# ROI crops (upright hand: fingers up) and the 2x2 mosaic
# --------------------------------------------------------------------------------------------------

# ROI boxes in the hand frame (u across, v along): u = 0 at the web between ring and little finger,
# u = 1 at the web between thumb and index; v = 0 at the level of the three webs between the fingers,
# v = 1 one finger length (web level to the highest fingertip) towards the wrist. Calibrated on the
# 37 landmarks of the shared Digital Hand Atlas images (MCP2-5 at v 0.05-0.27, CMC row at v 0.85,
# radius/ulna physes at v 1.33, thumb tip at u 1.54, middle fingertip at v -1.03) with margins.
ROI_FRAME: dict[str, tuple[float, float, float, float]] = {
    "carpus": (-0.35, 0.6, 1.1, 1.6),
    "mcp": (-0.4, -0.3, 1.05, 0.55),
    "middle_finger": (0.1, -1.2, 0.8, 0.25),
    "thumb": (0.65, -0.4, 1.85, 1.1),
}
# The hand frame from the palm (centre C, radius R) when the webs are not all found (fingers held
# together): medians over the shared real hands (RSNA, DHA, SHS_NET) where all four webs are found
# (45 of 51; spread 0.07-0.16 radii).
FALLBACK_FRAME = {"web_dy": -1.29, "finger": 1.72, "little_dx": -0.75, "thumb_dx": 0.8}


@dataclass(frozen=True)
class HandFrame:
    """Where the ROI frame sits in an upright image: the little-finger-side web x, the thumb web x,
    the web level y and the finger length (pixels); ``from_webs`` says whether four webs were found."""

    x_little: float
    x_thumb: float
    web_y: float
    finger: float
    from_webs: bool

    def box(self, u0: float, v0: float, u1: float, v1: float, shape: tuple[int, int]) -> Box:
        xs = sorted((self.x_little + u0 * (self.x_thumb - self.x_little), self.x_little + u1 * (self.x_thumb - self.x_little)))
        ys = (self.web_y + v0 * self.finger, self.web_y + v1 * self.finger)
        h, w = shape
        x0, x1 = int(np.clip(np.floor(xs[0]), 0, w - 1)), int(np.clip(np.ceil(xs[1]), 1, w))
        y0, y1 = int(np.clip(np.floor(ys[0]), 0, h - 1)), int(np.clip(np.ceil(ys[1]), 1, h))
        return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def palm(mask: np.ndarray) -> tuple[tuple[float, float], float]:
    """Centre ``(x, y)`` and radius of the largest disc inside ``mask`` (the image border counts as outside)."""
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return (float(x), float(y)), float(dist[y, x])


def finger_webs(mask: np.ndarray) -> list[tuple[float, float]]:
    """The valleys between the digits of an upright hand: convexity defects deeper than 0.3 palm radii,
    above the lower palm, not on the image border; the four deepest, left to right."""
    center, radius = palm(mask)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours or radius < 2:
        return []
    contour = max(contours, key=cv2.contourArea)
    if len(contour) < 4:
        return []
    hull = np.sort(cv2.convexHull(contour, returnPoints=False), axis=0)
    try:
        defects = cv2.convexityDefects(contour, hull)
    except cv2.error:
        return []
    if defects is None:
        return []
    h, w = mask.shape

    def on_border(p: np.ndarray) -> bool:
        return p[0] <= 1 or p[1] <= 1 or p[0] >= w - 2 or p[1] >= h - 2

    found = []
    for start, end, far, depth in defects[:, 0]:
        s, e, f = contour[start][0], contour[end][0], contour[far][0]
        if depth / 256.0 < 0.3 * radius or on_border(f) or (on_border(s) and on_border(e)):
            continue
        if f[1] > center[1] + 0.5 * radius:
            continue
        found.append((depth, (float(f[0]), float(f[1]))))
    found = sorted(found, key=lambda t: -t[0])[:4]
    return sorted((p for _, p in found), key=lambda p: p[0])


def hand_frame(mask: np.ndarray, thumb_right: bool = True) -> HandFrame:
    """The ROI frame of an upright hand mask (thumb on the image's right for a left hand)."""
    center, radius = palm(mask)
    ys = np.nonzero(mask)[0]
    top = float(ys.min()) if ys.size else 0.0
    webs = finger_webs(mask)
    if len(webs) == 4:
        thumb = webs[-1] if thumb_right else webs[0]
        others = webs[:-1] if thumb_right else webs[1:]
        web_y = float(np.median([p[1] for p in others]))
        little = others[0] if thumb_right else others[-1]
        finger = web_y - top
        if finger > 0.5 * radius:
            return HandFrame(little[0], thumb[0], web_y, finger, True)
    sign = 1.0 if thumb_right else -1.0
    web_y = center[1] + FALLBACK_FRAME["web_dy"] * radius
    return HandFrame(center[0] + sign * FALLBACK_FRAME["little_dx"] * radius,
                     center[0] + sign * FALLBACK_FRAME["thumb_dx"] * radius,
                     web_y, FALLBACK_FRAME["finger"] * radius, False)


def roi_boxes(mask: np.ndarray, thumb_right: bool = True, work_size: int = 384) -> dict[str, Box]:
    """Boxes (full-resolution pixels) of the carpus, MCP joints, middle finger and thumb of an upright hand."""
    h, w = mask.shape
    small, scale = _downscale(mask.astype(np.uint8) * 255, work_size)
    small = small >= 128
    labels, areas = components(small)
    if len(areas) > 1:
        small = labels == int(np.argmax(areas[1:]) + 1)
    frame = hand_frame(small, thumb_right)
    out = {}
    for name, (u0, v0, u1, v1) in ROI_FRAME.items():
        x0, y0, x1, y1 = frame.box(u0, v0, u1, v1, small.shape)
        out[name] = (int(x0 / scale), int(y0 / scale), min(w, int(np.ceil(x1 / scale))), min(h, int(np.ceil(y1 / scale))))
    return out


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """``size x size``: the image scaled to fit (aspect kept), centred, padded with black."""
    h, w = image.shape
    scale = min(size / h, size / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.zeros((size, size), np.uint8)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = small
    return out


def roi_mosaic(image: np.ndarray, boxes: dict[str, Box], tile: int = 256) -> np.ndarray:
    """2x2 mosaic ``(2 tile, 2 tile)``: carpus | MCP joints over middle finger | thumb, each letterboxed."""
    tiles = [letterbox(crop(image, boxes[name]), tile) for name in ROI_NAMES]
    return np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])


# --------------------------------------------------------------------------------------------------
# Pipeline from the config
# --------------------------------------------------------------------------------------------------

# Bump when a step's output changes, so cached samples of the old version are not reused.
PREPROCESS_VERSION = 1


class PreprocessConfig(Section):
    """``data.preprocess``: which steps run, in this order: orientation, background removal, crop,
    min-max, CLAHE, ROI mosaic. All off by default (the image is used as read)."""

    orientation: Literal["off", "rotate", "rotate_mirror"] = "off"
    remove_background: bool = False
    crop_to_hand: bool = False
    crop_margin: float = Field(0.05, ge=0.0, le=0.5)
    minmax: bool = False
    minmax_percentiles: tuple[float, float] = (0.5, 99.5)
    clahe: bool = False
    clahe_clip: float = Field(2.0, gt=0)
    clahe_tiles: int = Field(8, ge=1, le=64)
    roi_mosaic: bool = False
    mosaic_tile: int = Field(256, ge=16)
    mask_work_size: int = Field(384, ge=64)

    @field_validator("minmax_percentiles")
    @classmethod
    def _percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1] <= 100:
            raise ValueError("needs 0 <= low < high <= 100")
        return value

    @property
    def needs_mask(self) -> bool:
        return self.remove_background or self.crop_to_hand or self.roi_mosaic or self.minmax


@dataclass
class Preprocessed:
    """Output of :class:`Preprocess`: the image, the detected orientation (or None), the crop box in the
    (re-oriented) input frame and the ROI boxes in the cropped frame (empty unless ``roi_mosaic``)."""

    image: np.ndarray
    orientation: object | None
    box: Box
    rois: dict[str, Box]


class Preprocess:
    """The configured chain of steps; ``Preprocess(cfg)(image)`` returns the processed uint8 image."""

    def __init__(self, cfg: PreprocessConfig | dict | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, PreprocessConfig) else PreprocessConfig.model_validate(cfg or {})

    @property
    def tag(self) -> str:
        """Short hash of the settings (and algorithm version): part of the sample-cache key."""
        text = json.dumps({"v": PREPROCESS_VERSION, **self.cfg.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    @property
    def identity(self) -> bool:
        c = self.cfg
        return c.orientation == "off" and not (c.needs_mask or c.clahe)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.run(image).image

    def run(self, image: np.ndarray) -> Preprocessed:
        from tasks.orientation import apply_orientation, detect_orientation  # orientation builds on this module

        c = self.cfg
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"preprocess: expected a 2-D uint8 image, got {image.dtype} {image.shape}")
        orientation = None
        thumb_right = True
        if c.orientation != "off":
            orientation = detect_orientation(image)
            image = apply_orientation(image, orientation, mirror_to_left=c.orientation == "rotate_mirror")
            thumb_right = orientation.side != "right" or c.orientation == "rotate_mirror"
        h, w = image.shape
        box: Box = (0, 0, w, h)
        rois: dict[str, Box] = {}
        mask = hand_mask(image, c.mask_work_size) if c.needs_mask else None
        if mask is not None and c.remove_background:
            image = remove_background(image, mask)
        if mask is not None and (c.crop_to_hand or c.roi_mosaic):
            box = mask_box(mask, c.crop_margin)
            image, mask = crop(image, box), crop(mask, box)
        if c.minmax:
            image = minmax(image, *c.minmax_percentiles, mask=mask)
        if c.clahe:
            image = clahe(image, c.clahe_clip, c.clahe_tiles)
        if c.roi_mosaic:
            rois = roi_boxes(mask, thumb_right, c.mask_work_size)
            image = roi_mosaic(image, rois, c.mosaic_tile)
        return Preprocessed(np.ascontiguousarray(image), orientation, box, rois)
