"""Orientation of a hand radiograph: the quarter turn that stands the fingers up, and which hand(s).

The SHS_NET orientation phase as a classical, weight-free method on the hand mask
(:func:`tasks.handmask.hand_mask_small`):

* Palm: the centre ``C`` and radius ``R`` of the largest disc inside each hand (distance transform).
* Fingers: on circles of radius 1.6-2.8 R around ``C`` the mask cuts out arcs. A finger is a narrow
  arc (shorter than 0.9 R); the forearm and the palm give wide ones. The finger direction is the
  circular mean of the narrow arcs' angles; its nearest quarter turn is the rotation.
* Thumb: on circles of radius 1.6-2.8 R each circle votes for the side of the digit that lies far
  out (60-125 degrees from the finger direction: only the thumb spreads that far), and, where the
  circle cuts all five digits, for the outer digit next to the clearly widest gap (the first web
  space, between thumb and index). With the fingers up, a left hand in the usual postero-anterior view has its
  thumb on the image's right, a right hand on its left. Angles are measured relative to the finger
  direction, so the side is read without rotating the image.
* Two hands: two hand-sized mask components, or one component whose thick parts (deeper than half
  the palm radius: palms and forearms, not fingers) fall apart in two hand-sized blobs (hands
  touching at the fingertips).

When the thumb is not found the side is never guessed: :func:`detect_orientation` asks the burnt-in
L/R marker (:mod:`tasks.orientation.marker`), then a learned classifier when one is given (any
:class:`OrientationClassifier`, e.g. a trained run: ``tasks.orientation.task.LearnedOrientation``), and otherwise
reports the side ``"uncertain"`` (no SHS_NET label; never mirrored by the preprocessing).

Labels follow the SHS_NET orientation set (``../shared/data/real/shs_net_orientation``): 12 classes
= ``4 * side + rotation`` with side 0 two hands, 1 left, 2 right, and rotation 0 upright, 1 needs 90
degrees clockwise, 2 needs 180, 3 needs 90 counter-clockwise. :func:`dihedral_orientation` gives the
label of a rotated or mirrored image (the label algebra of the dihedral augmentation).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np
import pandas as pd

from tasks.formats import FormatError
from tasks.formats.images import read_grey
from tasks.handmask import components, hand_mask_small, palm
from tasks.orientation.marker import find_side_marker

SIDES = ("two", "left", "right")
Side = Literal["two", "left", "right", "uncertain"]
# How the side was decided: the hands themselves (two hands, or the thumb), the burnt-in marker, the
# learned classifier, or nothing (side "uncertain").
SideSource = Literal["hands", "marker", "learned", "none"]
MIRROR_SIDE = {"two": "two", "left": "right", "right": "left", "uncertain": "uncertain"}
FINGER_RADII = (1.6, 2.0, 2.4, 2.8)
THUMB_RADII = (1.6, 1.8, 2.0, 2.2, 2.4, 2.6, 2.8)
# The first web space (thumb-index) is the widest gap between neighbouring digits by at least this factor.
THUMB_GAP_RATIO = 1.3


@dataclass(frozen=True)
class HandGeometry:
    """One hand in the working-scale mask: palm centre ``(x, y)``, palm radius, finger direction (radians,
    image frame: 0 = +x, pi/2 = +y i.e. down; None when no finger was seen), thumb side relative to the
    fingers (+1 = clockwise of the finger direction, -1 = counter-clockwise, 0 = not found) and how many
    finger arcs were seen."""

    center: tuple[float, float]
    radius: float
    finger_angle: float | None
    thumb: int
    n_fingers: int


@dataclass(frozen=True)
class Orientation:
    """Quarter turns clockwise (0-3) needed to stand the fingers up, and which hand(s) the image shows;
    ``finger_angle`` is the detected finger direction in degrees (image frame, -90 = up), ``confident``
    False when the fingers were not found or the side is uncertain, ``side_source`` how the side was
    decided."""

    rotation: int
    side: Side
    finger_angle: float | None = None
    confident: bool = True
    side_source: SideSource = "hands"

    @property
    def label(self) -> int | None:
        """SHS_NET class: ``4 * side index + rotation``; None when the side is uncertain."""
        return None if self.side == "uncertain" else 4 * SIDES.index(self.side) + self.rotation

    @classmethod
    def from_label(cls, label: int) -> "Orientation":
        label = int(label)
        if not 0 <= label < 12:
            raise ValueError(f"orientation label {label} out of range 0-11")
        return cls(rotation=label % 4, side=SIDES[label // 4])


def _circle_runs(mask: np.ndarray, center: tuple[float, float], radius: float, n: int = 720
                 ) -> list[tuple[float, float]]:
    """``(angle, arc length)`` of each run of mask pixels on a circle (points outside the image are off)."""
    theta = np.linspace(-np.pi, np.pi, n, endpoint=False)
    x = np.round(center[0] + radius * np.cos(theta)).astype(int)
    y = np.round(center[1] + radius * np.sin(theta)).astype(int)
    h, w = mask.shape
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    on = np.zeros(n, bool)
    on[inside] = mask[y[inside], x[inside]]
    if on.all():
        return [(0.0, 2 * np.pi * radius)]
    if not on.any():
        return []
    start = int(np.argmin(on))
    on, theta = np.roll(on, -start), np.roll(theta, -start)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
    runs = []
    for i, j in zip(edges[::2], edges[1::2]):
        angle = float(np.angle(np.exp(1j * theta[i:j]).mean()))
        runs.append((angle, (j - i) / n * 2 * np.pi * radius))
    return runs


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _thumb_votes(mask: np.ndarray, center: tuple[float, float], radius: float, angle: float, k: float) -> int:
    """Thumb side votes (+1 clockwise of the fingers, -1 counter-clockwise) from the digits cut by the
    circle of radius ``k * radius``: the digit far out to one side (60-125 degrees from the finger
    direction, only the thumb spreads that far), and, when the circle cuts five digits or more, the
    widest gap between neighbours when it is an outer one and clearly the widest (the first web
    space, between thumb and index).

    The radii and thresholds were chosen on the shared real sets and on phantoms together; the
    accuracies in docs/benchmarks.md come from the same images, see tools/orientation_eval.py."""
    rel = sorted(_wrap(a - angle) for a, arc in _circle_runs(mask, center, k * radius)
                 if 0.1 * radius < arc < 0.95 * radius and abs(_wrap(a - angle)) <= math.radians(125))
    votes = 0
    far = [r for r in rel if abs(r) >= math.radians(60)]
    if far:
        votes += 1 if max(far, key=abs) > 0 else -1
    if len(rel) >= 5:
        gaps = np.diff(rel)
        order = np.argsort(gaps)[::-1]
        if gaps[order[0]] >= THUMB_GAP_RATIO * gaps[order[1]] and order[0] in (0, len(gaps) - 1):
            votes += 1 if order[0] == len(gaps) - 1 else -1
    return votes


def hand_geometry(mask: np.ndarray) -> HandGeometry:
    """Palm, finger direction and thumb side of the single hand in ``mask``."""
    center, radius = palm(mask)
    if radius < 2:
        return HandGeometry(center, radius, None, 0, 0)
    fingers = [a for k in FINGER_RADII for a, arc in _circle_runs(mask, center, k * radius)
               if 0.1 * radius < arc < 0.9 * radius]
    angle = float(np.angle(np.exp(1j * np.array(fingers)).mean())) if fingers else None
    thumb = 0
    if angle is not None:
        votes = sum(_thumb_votes(mask, center, radius, angle, k) for k in THUMB_RADII)
        thumb = int(np.sign(votes))
    return HandGeometry(center, radius, angle, thumb, len(fingers))


def _split_touching(mask: np.ndarray, second_hand_ratio: float) -> list[np.ndarray]:
    """Two touching hands: the mask's thick parts (palms, forearms: deeper than half the palm radius)
    fall apart in two big blobs; each pixel goes to the nearer blob. One hand stays whole."""
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    labels, areas = components(dist > 0.5 * dist.max())
    if len(areas) < 3:
        return [mask]
    order = np.argsort(areas[1:])[::-1] + 1
    if areas[order[1]] < second_hand_ratio * areas[order[0]]:
        return [mask]
    to_a = cv2.distanceTransform((labels != order[0]).astype(np.uint8), cv2.DIST_L2, 5)
    to_b = cv2.distanceTransform((labels != order[1]).astype(np.uint8), cv2.DIST_L2, 5)
    return [mask & (to_a <= to_b), mask & (to_b < to_a)]


def hands_in_mask(mask: np.ndarray, second_hand_ratio: float = 0.35) -> list[np.ndarray]:
    """The hands in ``mask``, largest first (at most two): hand-sized components, touching hands split."""
    labels, areas = components(mask)
    if len(areas) < 2:
        return []
    order = np.argsort(areas[1:])[::-1] + 1
    keep = [order[0]] + [k for k in order[1:2] if areas[k] >= second_hand_ratio * areas[order[0]]]
    if len(keep) == 1:
        return _split_touching(labels == keep[0], second_hand_ratio)
    return [labels == k for k in keep]


def rotation_for(finger_angle: float) -> int:
    """Quarter turns clockwise that bring a finger direction (degrees, image frame) to pointing up."""
    needed = (-90.0 - finger_angle) % 360.0
    return int(round(needed / 90.0)) % 4


class OrientationClassifier(Protocol):
    """Anything that reads rotation and side off a ``(H, W)`` uint8 radiograph."""

    def __call__(self, image: np.ndarray) -> Orientation: ...


def detect_orientation(image: np.ndarray, work_size: int = 256, classifier: OrientationClassifier | None = None
                       ) -> Orientation:
    """Rotation and side of a radiograph of any size: the hands (module docstring), and when they leave
    the side open the burnt-in marker, then ``classifier``'s side, else ``"uncertain"``."""
    found = hand_orientation(image, work_size)
    if found.side != "uncertain":
        return found
    marker = find_side_marker(image)
    if marker is not None:
        return replace(found, side=marker, side_source="marker")
    if classifier is not None:
        learned = classifier(image)
        if learned.side != "uncertain":
            return replace(found, side=learned.side, side_source="learned")
    return found


def hand_orientation(image: np.ndarray, work_size: int = 256) -> Orientation:
    """Rotation and side from the hands alone; the side is ``"uncertain"`` when the thumb is not found."""
    geoms: list[HandGeometry] = []
    for soft in (0.5, 0.0):
        mask, _ = hand_mask_small(image, work_size, max_hands=2, soft=soft)
        geoms = [hand_geometry(m) for m in hands_in_mask(mask)]
        if geoms and all(g.finger_angle is not None for g in geoms):
            break
    found = [g for g in geoms if g.finger_angle is not None]
    if not found:
        return Orientation(rotation=0, side="uncertain", finger_angle=None, confident=False, side_source="none")
    vec = sum(np.exp(1j * g.finger_angle) for g in found)
    angle = math.degrees(float(np.angle(vec)))
    rotation = rotation_for(angle)
    if len(geoms) >= 2:
        side: Side = "two"
        confident = True
    else:
        thumb = found[0].thumb
        side = {1: "left", -1: "right", 0: "uncertain"}[thumb]
        confident = thumb != 0
    off = abs(((angle + 90.0) % 90.0 + 45.0) % 90.0 - 45.0)
    return Orientation(rotation=rotation, side=side, finger_angle=angle, confident=confident and off < 35.0,
                       side_source="hands" if side != "uncertain" else "none")


def rotate_quarters(image: np.ndarray, quarters: int) -> np.ndarray:
    """Rotate by ``quarters`` x 90 degrees clockwise (exact, no interpolation)."""
    k = int(quarters) % 4
    if k == 0:
        return image
    codes = {1: cv2.ROTATE_90_CLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_COUNTERCLOCKWISE}
    return cv2.rotate(np.ascontiguousarray(image), codes[k])


def dihedral_view(image: np.ndarray, quarters: int, mirror: bool) -> np.ndarray:
    """``image`` turned ``quarters`` x 90 degrees clockwise, then mirrored left-right when ``mirror``."""
    out = rotate_quarters(image, quarters)
    return np.ascontiguousarray(out[:, ::-1]) if mirror else out


def dihedral_orientation(orientation: Orientation, quarters: int, mirror: bool) -> Orientation:
    """The orientation of :func:`dihedral_view` of an image with ``orientation``.

    Turning the image ``k`` quarters clockwise leaves ``rotation - k`` to do. A mirror conjugates every
    turn into its inverse (mirror o turn(r) = turn(-r) o mirror), so a mirrored image needs ``-rotation``
    and shows the other hand (two hands stay two)."""
    rotation = (orientation.rotation - quarters) % 4
    if mirror:
        return replace(orientation, rotation=(-rotation) % 4, side=MIRROR_SIDE[orientation.side])
    return replace(orientation, rotation=rotation)


def dihedral_label(label: int, quarters: int, mirror: bool) -> int:
    """:func:`dihedral_orientation` on SHS_NET class numbers."""
    return int(dihedral_orientation(Orientation.from_label(label), quarters, mirror).label)  # type: ignore[arg-type]


DIHEDRAL = tuple((k, m) for k in range(4) for m in (False, True))
# DIHEDRAL_LABELS[v][label]: the class of view v = DIHEDRAL[v] of an image of class ``label``.
DIHEDRAL_LABELS = np.array([[dihedral_label(label, k, m) for label in range(12)] for k, m in DIHEDRAL])


def apply_orientation(image: np.ndarray, orientation: Orientation, mirror_to_left: bool = False) -> np.ndarray:
    """Stand the fingers up; with ``mirror_to_left`` a right hand is mirrored into a left one (an
    uncertain side is never mirrored)."""
    out = rotate_quarters(image, orientation.rotation)
    if mirror_to_left and orientation.side == "right":
        out = np.ascontiguousarray(out[:, ::-1])
    return out


def normalize_orientation(image: np.ndarray, mirror_to_left: bool = False, work_size: int = 256,
                          classifier: OrientationClassifier | None = None) -> tuple[np.ndarray, Orientation]:
    """Detect and apply the orientation; returns the upright image and what was detected."""
    orientation = detect_orientation(image, work_size, classifier)
    return apply_orientation(image, orientation, mirror_to_left), orientation


# --------------------------------------------------------------------------------------------------
# Labelled sets and their evaluation
# --------------------------------------------------------------------------------------------------

Item = tuple[str, np.ndarray, Orientation]


def labelled_folder(root: Path) -> Iterator[Item]:
    """``(name, image, truth)`` of a SHS_NET orientation folder: ``labels.csv`` (img_id,label) and ``images/``."""
    table = root / "labels.csv"
    if not table.is_file():
        raise FormatError(f"{table}: labels file not found (expected img_id,label)")
    df = pd.read_csv(table, dtype=str)
    if list(df.columns[:2]) != ["img_id", "label"]:
        raise FormatError(f"{table}: header must be img_id,label, got {','.join(df.columns)}")
    for line, (img_id, label) in enumerate(zip(df["img_id"], df["label"]), start=2):
        try:
            truth = Orientation.from_label(int(label))
        except ValueError:
            raise FormatError(f"{table}: line {line}: label {label!r} is not a class 0-11") from None
        path = root / "images" / img_id
        if not path.suffix:
            path = path.with_suffix(".png")
        yield img_id, read_grey(path), truth


def dihedral(items: Iterable[Item]) -> Iterator[Item]:
    """Each image in its 4 clockwise turns x {as is, mirrored}, with the implied labels."""
    for name, image, truth in items:
        for k, m in DIHEDRAL:
            yield f"{name}@{90 * k}{'m' if m else ''}", dihedral_view(image, k, m), dihedral_orientation(truth, k, m)


def evaluate(items: Iterable[Item], predict: Callable[[np.ndarray], Orientation] = detect_orientation) -> dict:
    """Rotation and side accuracy over all images (an uncertain side counts as wrong, and is counted
    on its own), the 12x12 confusion matrix of the decided ones (rows: true label, columns: predicted),
    how each side was decided, and the errors."""
    confusion = np.zeros((12, 12), np.int64)
    errors, sources = [], {}
    n = rot_ok = side_ok = uncertain = 0
    for name, image, truth in items:
        pred = predict(image)
        n += 1
        rot_ok += pred.rotation == truth.rotation
        side_ok += pred.side == truth.side
        sources[pred.side_source] = sources.get(pred.side_source, 0) + 1
        if pred.label is None:
            uncertain += 1
        else:
            confusion[truth.label, pred.label] += 1
        if pred.label != truth.label:
            errors.append({"image": name, "true": truth.label, "pred": pred.label, "side_source": pred.side_source,
                           "confident": pred.confident})
    if n == 0:
        raise FormatError("no images to evaluate")
    return {"images": n, "rotation_acc": rot_ok / n, "side_acc": side_ok / n,
            "label_acc": float(np.trace(confusion)) / n, "uncertain": uncertain, "side_sources": sources,
            "confusion": confusion.tolist(), "errors": errors}
