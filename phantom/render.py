"""X-ray-like rendering of a phantom hand: pose, projected attenuation, acquisition effects, labels.

A hand built by :mod:`phantom.anatomy` (canonical left hand, mm) is placed in the image by a
similarity transform (rotation, scale, translation; mirrored for a right hand). Bone parts add their
projected attenuation (a tube with a cortex for long bones, an ellipsoid shell for compact bones), so
overlapping bones are brighter; soft tissue adds a smooth thickness map. The class polygons are the
bone outlines, transformed, clipped to the exposed area and rounded to integers; the masks are those
polygons rasterised by :func:`tasks.formats.handbones.rasterize`, so a JSON written from them
rasterises to exactly the same masks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

import phantom.anatomy as A
from tasks.formats.handbones import CLASSES, rasterize


@dataclass
class HandPhantom:
    """One rendered hand with its exact ground truth.

    ``image``: (H, W) uint8. ``polygons``: class -> list of (N, 2) int32 x,y polygons (absent classes
    missing). ``masks``: (29, H, W) uint8 in canonical class order (computed on first use).
    ``keypoints``: landmark name -> (x, y) float pixels (every name of ``anatomy.LANDMARKS``).
    ``spacing_mm``: physical size of a pixel. ``physes``: class -> dict(open=bool, points) describing
    growth plates (``shaft``, ``gap``, ``epiphysis`` pixel points along the bone axis when open).
    """

    image: np.ndarray
    polygons: dict
    keypoints: dict
    age_months: float
    male: bool
    side: str
    spacing_mm: float
    physes: dict = field(default_factory=dict)
    fused: dict = field(default_factory=dict)
    _masks: np.ndarray | None = field(default=None, repr=False)

    @property
    def masks(self) -> np.ndarray:
        if self._masks is None:
            h, w = self.image.shape
            self._masks = rasterize(self.polygons, h, w)
        return self._masks

    @property
    def present(self) -> list[str]:
        return [c for c in CLASSES if c in self.polygons]


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------

def clip_polygon(poly: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Sutherland-Hodgman clipping of a polygon to the rectangle [x0, x1] x [y0, y1]."""
    poly = np.asarray(poly, dtype=np.float64)
    if len(poly) and poly[:, 0].min() >= x0 and poly[:, 0].max() <= x1 and poly[:, 1].min() >= y0 \
            and poly[:, 1].max() <= y1:
        return poly.copy()
    pts = [tuple(p) for p in poly]
    for axis, bound, keep_greater in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        if not pts:
            break
        out = []
        prev = pts[-1]
        for cur in pts:
            cin = cur[axis] >= bound if keep_greater else cur[axis] <= bound
            pin = prev[axis] >= bound if keep_greater else prev[axis] <= bound
            if cin != pin:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
            if cin:
                out.append(cur)
            prev = cur
        pts = out
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


def points_in_polygon(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over points."""
    x, y = pts[:, 0][:, None], pts[:, 1][:, None]
    xa, ya = poly[:, 0][None, :], poly[:, 1][None, :]
    xb, yb = np.roll(poly[:, 0], -1)[None, :], np.roll(poly[:, 1], -1)[None, :]
    cond = (ya > y) != (yb > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xint = xa + (y - ya) * (xb - xa) / (yb - ya)
    return ((cond & (x < xint)).sum(1) % 2) == 1


def union_two(pa: np.ndarray, pb: np.ndarray) -> np.ndarray | None:
    """Outline of the union of two overlapping simple polygons whose boundaries cross twice.

    Keeps the run of ``pa``'s vertices outside ``pb`` and the run of ``pb``'s outside ``pa``. Returns
    None when the configuration is not that simple (the caller then keeps both polygons).
    """
    out_a = ~points_in_polygon(pa, pb)
    out_b = ~points_in_polygon(pb, pa)

    def run(mask):
        n = len(mask)
        if mask.all() or not mask.any():
            return None
        starts = [i for i in range(n) if mask[i] and not mask[i - 1]]
        if len(starts) != 1:
            return None
        s = starts[0]
        idx = []
        i = s
        while mask[i % n]:
            idx.append(i % n)
            i += 1
        return idx

    ra, rb = run(out_a), run(out_b)
    if ra is None or rb is None:
        return None
    arc_a, arc_b = pa[ra], pb[rb]
    if np.linalg.norm(arc_a[-1] - arc_b[0]) > np.linalg.norm(arc_a[-1] - arc_b[-1]):
        arc_b = arc_b[::-1]
    return np.concatenate([arc_a, arc_b])


def _round_poly(poly: np.ndarray) -> np.ndarray | None:
    p = np.round(poly).astype(np.int32)
    if len(p) == 0:
        return None
    keep = np.ones(len(p), bool)
    keep[1:] = np.any(p[1:] != p[:-1], axis=1)
    p = p[keep]
    if len(p) > 1 and np.all(p[0] == p[-1]):
        p = p[:-1]
    if len(p) < 3 or (len(p) < 8 and len({(int(x), int(y)) for x, y in p}) < 3):
        return None
    return p


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

@dataclass
class Pose:
    """Canonical mm -> pixels: ``px = M @ mm + t``; ``content`` = exposed rectangle (x0, y0, x1, y1)."""

    M: np.ndarray
    t: np.ndarray
    scale: float
    content: tuple[int, int, int, int]

    def fwd(self, pts: np.ndarray) -> np.ndarray:
        return np.asarray(pts, dtype=np.float64) @ self.M.T + self.t

    def inv_grid(self, xs: np.ndarray, ys: np.ndarray):
        Mi = np.linalg.inv(self.M)
        dx, dy = xs - self.t[0], ys - self.t[1]
        return Mi[0, 0] * dx + Mi[0, 1] * dy, Mi[1, 0] * dx + Mi[1, 1] * dy


def choose_pose(hand: A.Hand, size: int, rng: np.random.Generator, side: str) -> Pose:
    """Rotation +-25 deg, mirror for the right hand, a field of view that fits the hand, padding."""
    content = (0, 0, size - 1, size - 1)
    if rng.random() < 0.3:   # black padding: the exposed image is narrower (or shorter) than the canvas
        frac = rng.uniform(0.7, 0.94)
        if rng.random() < 0.7:
            w = int(round(size * frac))
            x0 = int(rng.integers(0, size - w + 1))
            content = (x0, 0, x0 + w - 1, size - 1)
        else:
            h = int(round(size * frac))
            y0 = int(rng.integers(0, size - h + 1))
            content = (0, y0, size - 1, y0 + h - 1)
    theta = math.radians(rng.uniform(-25, 25))
    R = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    mirror = np.diag([-1.0 if side == "R" else 1.0, 1.0])
    Rm = R @ mirror
    # the hand's extent: landmarks with a soft-tissue margin, plus a bit of forearm
    J = hand.joints
    ray3 = hand.patient.ray3_mm
    wrist_dir = _down_dir(J)
    pts = np.concatenate([J, J[[0, 4]] + wrist_dir * 0.18 * ray3])
    q = pts @ Rm.T
    margin = 0.07 * ray3
    lo, hi = q.min(0) - margin, q.max(0) + margin
    ext = hi - lo
    cw, ch = content[2] - content[0] + 1, content[3] - content[1] + 1
    fov_hand = float(max(ext[0] * ch / cw, ext[1])) * rng.uniform(1.02, 1.25)
    fov_fixed = 240.0 * rng.uniform(0.85, 1.1)
    wfix = rng.uniform(0.0, 0.35)
    fov = max(fov_hand * (1 - wfix) + fov_fixed * wfix, fov_hand)
    s = min(ch / fov, 0.97 * cw / ext[0], 0.97 * ch / ext[1])
    M = s * Rm
    slack = np.array([cw, ch]) - s * ext
    # mostly low in the picture: the wrist near the lower edge, as radiographs are framed
    centre_px = np.array([content[0] + cw / 2, content[1] + ch / 2]) + \
        np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.1, 0.5)]) * np.maximum(slack, 0)
    t = centre_px - s * (lo + hi) / 2
    return Pose(M=M, t=t, scale=float(s), content=content)


def _down_dir(J):
    d = A._unit(J[4] - J[0])
    down = np.array([-d[1], d[0]])
    return down if down[1] > 0 else -down


def _class_polygons(hand: A.Hand, pose: Pose) -> dict[str, list[np.ndarray]]:
    x0, y0, x1, y1 = pose.content
    out: dict[str, list[np.ndarray]] = {}
    for cls in CLASSES:
        parts = hand.class_parts.get(cls) or []
        if not parts:
            continue
        polys = [pose.fwd(p.polygon()) for p in parts]
        if len(polys) == 2 and hand.fused.get(cls):
            u = union_two(polys[0], polys[1])
            if u is not None:
                polys = [u]
        final = []
        for poly in polys:
            c = clip_polygon(poly, x0, y0, x1, y1)
            if len(c) < 3:
                continue
            r = _round_poly(c)
            if r is not None:
                final.append(r)
        if final:
            out[cls] = final
    return out


def _bone_density(hand: A.Hand, pose: Pose, size: int) -> np.ndarray:
    acc = np.zeros((size, size), np.float32)
    for part in hand.parts:
        poly = pose.fwd(part.polygon())
        xa, ya = np.floor(poly.min(0)).astype(int) - 1
        xb, yb = np.ceil(poly.max(0)).astype(int) + 1
        xa, ya = max(xa, 0), max(ya, 0)
        xb, yb = min(xb, size - 1), min(yb, size - 1)
        if xb < xa or yb < ya:
            continue
        xs, ys = np.meshgrid(np.arange(xa, xb + 1, dtype=np.float64), np.arange(ya, yb + 1, dtype=np.float64))
        mx, my = pose.inv_grid(xs, ys)
        acc[ya:yb + 1, xa:xb + 1] += part.density(mx, my).astype(np.float32)
    return acc


def _soft_thickness(hand: A.Hand, pose: Pose, size: int) -> np.ndarray:
    """Soft-tissue thickness (mm) from the outline: rounded edges, thicker inside."""
    f = 2 if size > 1024 else 1
    sz = size // f
    mask = np.zeros((sz, sz), np.uint8)
    shift = 4
    polys = [np.round(pose.fwd(p) / f * (1 << shift)).astype(np.int32) for p in hand.soft]
    for p in polys:
        cv2.fillPoly(mask, [p], 1, lineType=cv2.LINE_8, shift=shift)
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5) * (f / pose.scale)   # mm
    R = hand.soft_radius
    d = np.minimum(dist, R)
    thick = 2 * np.sqrt(np.clip(d * (2 * R - d), 0, None)) + 0.35 * np.clip(dist - R, 0, None)
    thick = cv2.GaussianBlur(thick, (0, 0), max(0.6, 0.6 * sz / 512))
    if f != 1:
        thick = cv2.resize(thick, (size, size), interpolation=cv2.INTER_LINEAR)
    return thick.astype(np.float32)


def _marker(img: np.ndarray, side: str, pose: Pose, soft: np.ndarray, rng: np.random.Generator) -> None:
    """Burn an 'L'/'R' side marker into a free corner of the exposed area."""
    size = img.shape[0]
    x0, y0, x1, y1 = pose.content
    box = max(int(0.09 * size), 6)
    cands = [(x0 + int(0.04 * size), y0 + int(0.04 * size)), (x1 - int(0.04 * size) - box, y0 + int(0.04 * size)),
             (x0 + int(0.04 * size), y1 - int(0.04 * size) - box), (x1 - int(0.04 * size) - box, y1 - int(0.04 * size) - box)]
    order = rng.permutation(len(cands))
    best, best_v = None, np.inf
    for i in order:
        cx, cy = cands[i]
        cx, cy = int(np.clip(cx, 0, size - box)), int(np.clip(cy, 0, size - box))
        v = float(soft[cy:cy + box, cx:cx + box].mean())
        if v < best_v:
            best, best_v = (cx, cy), v
    cx, cy = best
    if rng.random() < 0.5:  # a dark plate with a border, like a lead marker in its holder
        cv2.rectangle(img, (cx, cy), (cx + box, cy + int(box * 1.2)), 0.12, -1)
        cv2.rectangle(img, (cx, cy), (cx + box, cy + int(box * 1.2)), 0.3, max(1, box // 20))
    scale = box / 30.0
    th = max(1, int(round(box / 8)))
    (tw, tht), _ = cv2.getTextSize(side, cv2.FONT_HERSHEY_SIMPLEX, scale, th)
    org = (cx + (box - tw) // 2, cy + (box + tht) // 2)
    # Text is drawn into a uint8 coverage mask and blended: OpenCV 5 refuses putText on float images.
    coverage = np.zeros(img.shape, np.uint8)
    cv2.putText(coverage, side, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, th, cv2.LINE_AA)
    alpha = coverage.astype(np.float32) / 255.0
    img *= 1.0 - alpha
    img += alpha * float(rng.uniform(0.85, 1.0))


def render(hand: A.Hand, size: int, rng: np.random.Generator, side: str = "L", film: float = 0.0) -> HandPhantom:
    """Render ``hand`` as a ``size`` x ``size`` radiograph with labels (side 'L' or 'R' = mirrored).

    ``film``: the chance that the image looks like a scanned film (the Digital Hand Atlas, older sets):
    a grey base lifts the background to 15-40% of white, where digital radiographs keep it near black.
    At 0 no random number is drawn for it, so images are the same as before the option existed.
    """
    if side not in ("L", "R"):
        raise ValueError(f"side must be 'L' or 'R', got {side!r}")
    if not 0.0 <= film <= 1.0:
        raise ValueError(f"film: {film} is not a chance (0 to 1)")
    pose = choose_pose(hand, size, rng, side)
    polygons = _class_polygons(hand, pose)

    bones = _bone_density(hand, pose, size)
    # trabecular texture: smooth random modulation of the bone density
    tex_sz = max(size // 4, 8)
    tex = cv2.GaussianBlur(rng.standard_normal((tex_sz, tex_sz), dtype=np.float32), (0, 0), 1.0)
    tex = cv2.resize(tex / (tex.std() + 1e-6), (size, size), interpolation=cv2.INTER_LINEAR)
    bones *= 1 + 0.10 * tex
    soft = _soft_thickness(hand, pose, size)
    att = bones + A.MU_SOFT * rng.uniform(0.8, 1.25) * soft
    # detector + processing: log-domain image, auto-windowed on the hand (like a clinical LUT), gamma
    hi = float(np.percentile(att[att > 0.05], 99.7)) if (att > 0.05).any() else 1.0
    hi *= rng.uniform(0.92, 1.12)
    x = np.clip(att / max(hi, 1e-6), 0, None)
    knee = rng.uniform(0.0, 0.6)      # soft shoulder of the film curve
    img = np.tanh(x * (1 + knee)) / np.tanh(1 + knee) if knee > 0.05 else x
    bg = rng.uniform(0.0, 0.06)
    img = bg + (1 - bg) * np.clip(img, 0, 1)
    gamma = math.exp(rng.uniform(-0.15, 0.4))
    img = np.power(img, gamma, dtype=np.float32)
    yy = (np.arange(size, dtype=np.float32) / size - 0.5)[:, None]
    xx = (np.arange(size, dtype=np.float32) / size - 0.5)[None, :]
    img = img * (1 + rng.uniform(-0.12, 0.12) * yy + rng.uniform(-0.06, 0.06) * xx)
    sigma = rng.uniform(0.2, 0.8) * size / 512
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    noise = rng.uniform(0.006, 0.03)
    img = img + noise * np.sqrt(np.clip(img, 0, 1) + 0.05) * rng.standard_normal((size, size), dtype=np.float32)
    x0, y0, x1, y1 = pose.content
    if rng.random() < 0.35:   # collimation: a brighter unexposed border on one or two sides
        lvl = rng.uniform(0.45, 0.8)
        cut = int(rng.uniform(0.02, 0.07) * size)
        which = rng.choice(4, size=int(rng.integers(1, 3)), replace=False)
        region = np.zeros((size, size), bool)
        for wsd in which:
            if wsd == 0:
                region[:, x0:x0 + cut] = True
            elif wsd == 1:
                region[:, x1 - cut + 1:x1 + 1] = True
            elif wsd == 2:
                region[y0:y0 + cut, :] = True
            else:
                region[y1 - cut + 1:y1 + 1, :] = True
        img = np.where(region, 0.3 * img + lvl, img)
    _marker(img, side, pose, soft, rng)
    img = np.clip(img, 0, 1)
    if film > 0 and rng.random() < film:
        base = rng.uniform(0.15, 0.40)
        img = base + (1.0 - base) * img
    out = np.zeros((size, size), np.uint8)
    out[y0:y1 + 1, x0:x1 + 1] = (img[y0:y1 + 1, x0:x1 + 1] * 255 + 0.5).astype(np.uint8)

    delta = max(0.3, 1.5 / pose.scale)
    kp_mm = A.landmarks_mm(hand, delta=delta)
    keypoints = {name: tuple(float(v) for v in pose.fwd(p[None])[0]) for name, p in kp_mm.items()}
    keypoints = _snap_keypoints(keypoints, polygons, size)

    physes = {}
    for cls, rec in hand.info.items():
        if rec.get("kind") in ("long", "forearm") and hand.fused.get(cls) is False:
            a = rec["axis"]
            ph = rec["physis"]
            gap = rec["gap"]
            if rec.get("epi", "head") == "base":
                pts = dict(shaft=rec["origin"] + a * (ph + 2 * delta), gap=rec["origin"] + a * (ph - gap / 2),
                           epiphysis=rec["epi_centre"])
            else:
                pts = dict(shaft=rec["origin"] + a * (ph - 2 * delta), gap=rec["origin"] + a * (ph + gap / 2),
                           epiphysis=rec["epi_centre"])
            physes[cls] = dict(open=True, gap_mm=float(gap),
                               **{k2: tuple(float(v) for v in pose.fwd(np.asarray(v2)[None])[0]) for k2, v2 in pts.items()})
        elif cls in hand.fused and hand.fused[cls]:
            physes[cls] = dict(open=False)
    return HandPhantom(image=out, polygons=polygons, keypoints=keypoints, age_months=hand.patient.age_months,
                       male=hand.patient.male, side=side, spacing_mm=1.0 / pose.scale, physes=physes,
                       fused=dict(hand.fused))


def _snap_keypoints(keypoints: dict, polygons: dict, size: int, radius: int = 3) -> dict:
    """Move a landmark whose pixel is outside its bone mask(s) onto the nearest pixel of its primary
    bone (only happens at tiny image sizes, where a bone is a few pixels wide)."""
    out = {}
    win = 2 * radius + 1
    for name, (x, y) in keypoints.items():
        bones = [b for b in A.landmark_bones(name) if b in polygons]
        xi, yi = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        if not bones:
            out[name] = (x, y)
            continue
        ox, oy = xi - radius, yi - radius
        m = np.zeros((win, win), np.uint8)
        primary = np.zeros((win, win), np.uint8)
        for j, b in enumerate(bones):
            shifted = [(p - np.array([ox, oy])).astype(np.int32) for p in polygons[b]]
            tmp = np.zeros((win, win), np.uint8)
            for sp in shifted:
                cv2.fillPoly(tmp, [sp], 1)
            m |= tmp
            if j == 0:
                primary = tmp
        if 0 <= xi < size and 0 <= yi < size and m[radius, radius]:
            out[name] = (x, y)
            continue
        target = primary if primary.any() else m
        ys, xs = np.nonzero(target)
        inside = (xs + ox >= 0) & (xs + ox < size) & (ys + oy >= 0) & (ys + oy < size)
        xs, ys = xs[inside], ys[inside]
        if len(xs) == 0:
            out[name] = (x, y)
            continue
        k = int(np.argmin((xs + ox - x) ** 2 + (ys + oy - y) ** 2))
        out[name] = (float(xs[k] + ox), float(ys[k] + oy))
    return out
