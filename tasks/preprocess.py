"""Radiograph preprocessing: intensity normalisation, hand mask, crop to the hand, ROI crops and mosaic.

The steps follow the RSNA 2017 bone-age pipelines: min-max (percentile) normalisation, CLAHE,
a hand mask (threshold + largest contour(s) + closing; :mod:`tasks.handmask`), background removal and
a crop to the hand with a margin, orientation normalisation (:mod:`tasks.orientation.heuristic`), and crops of the regions that
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

import cv2
import numpy as np

from tasks.schema import PreprocessConfig
from tasks.handmask import components, downscale, grow, hand_mask, minmax, palm
from tasks.orientation.heuristic import OrientationClassifier, apply_orientation, detect_orientation

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), pixels
ROI_NAMES = ("carpus", "mcp", "middle_finger", "thumb")


# --------------------------------------------------------------------------------------------------
# Intensity
# --------------------------------------------------------------------------------------------------

def clahe(image: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV) on a uint8 image."""
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(np.ascontiguousarray(image))


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
        small, scale = downscale(keep.astype(np.uint8) * 255, 512)
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
    small, scale = downscale(mask.astype(np.uint8) * 255, work_size)
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


@dataclass
class Preprocessed:
    """Output of :class:`Preprocess`: the image, the detected orientation (or None), the crop box in the
    (re-oriented) input frame and the ROI boxes in the cropped frame (empty unless ``roi_mosaic``)."""

    image: np.ndarray
    orientation: object | None
    box: Box
    rois: dict[str, Box]


class Preprocess:
    """The configured chain of steps; ``Preprocess(cfg)(image)`` returns the processed uint8 image.
    ``classifier`` (e.g. a trained orientation run, ``tasks.orientation.task.LearnedOrientation``) is asked for the side
    when the hands and the burnt-in marker leave it open; an uncertain side is never mirrored."""

    def __init__(self, cfg: PreprocessConfig | dict | None = None, classifier: OrientationClassifier | None = None
                 ) -> None:
        self.cfg = cfg if isinstance(cfg, PreprocessConfig) else PreprocessConfig.model_validate(cfg or {})
        self.classifier = classifier

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
        c = self.cfg
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"preprocess: expected a 2-D uint8 image, got {image.dtype} {image.shape}")
        orientation = None
        thumb_right = True
        if c.orientation != "off":
            orientation = detect_orientation(image, classifier=self.classifier)
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
