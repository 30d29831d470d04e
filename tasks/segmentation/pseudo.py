"""The pseudo-label side of segmentation (numpy and OpenCV): a probability band per class fitted on validation,
the kept test masks written as a hand-bone training folder with an ignore map, and that folder read back.

Band. The ensemble's fused probability ``p`` of class ``c`` at a pixel, on the cache's grid of levels
``q = round(255 p)``, labels the pixel *positive* when ``q >= hi_c``, *negative* when ``q <= lo_c`` and leaves it
*ignored* in between. On the members' out-of-fold validation maps (:mod:`ensembles.pseudo`):

- ``hi_c`` is the lowest level at which the pixels at or above it are foreground at least ``precision`` of the
  time (the most positives whose precision meets the target);
- ``lo_c`` is the highest level below ``hi_c`` at which the pixels at or below it hold at most ``1 - precision``
  of the class's foreground pixels (the most negatives that lose no more of the bone than that).

The two sides are judged against the foreground because a bone is a sliver of the image: labelling every pixel
of a class background is right for 99 % of the pixels and teaches the model the bone is not there, while a
Dice-like score counts a wrong label against the bone's own size. Either side may keep nothing: ``hi_c = 256``
(no pixel is positive) or ``lo_c = -1`` (none is negative).

Folder (the boostcamp layout the task trains on, plus one file per image)::

    OUT/DCM/<patient>/<image>.png           symbolic link to the test image
    OUT/outputs_json/<patient>/<stem>.json  the positive pixels as polygons, one or more per class
    OUT/ignore/<patient>/<stem>.npz         ``ignore``: (29, H, W) bits packed along W; 1 = the loss skips it
    OUT/pseudo.json                          source, band, kept fractions (tasks.pseudo)

A pixel the polygons cannot say (a hole inside a bone, a speck too small for a polygon) is ignored too, so
the label the dataset reads and the ignore map agree with the band exactly.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write
from tasks.formats import FormatError
from tasks.formats.handbones import CLASSES, HandboneSample, fill_polygons, list_samples, mask_to_polygons, write_polygons
from tasks.pseudo import link, pseudo_samples

LEVELS = 256          # the cache's probability grid: q = round(255 p)
IGNORE_DIR = "ignore"


@dataclass(frozen=True)
class PseudoSample(HandboneSample):
    """A pseudo-labelled image: its label file plus the ignore map of the pixels the loss skips."""

    ignore_path: Path | None = None


def fit_band(fg: np.ndarray, bg: np.ndarray, precision: float) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the levels ``(lo, hi)`` of the band (module docstring) from ``(C, 256)`` counts of validation
    pixels at each level that are foreground (``fg``) and background (``bg``)."""
    fg, bg = np.asarray(fg, np.float64), np.asarray(bg, np.float64)
    n_classes = fg.shape[0]
    hi = np.full(n_classes, LEVELS, np.int64)
    lo = np.full(n_classes, -1, np.int64)
    for c in range(n_classes):
        above_fg, above = np.cumsum(fg[c, ::-1])[::-1], np.cumsum((fg + bg)[c, ::-1])[::-1]
        ok = np.flatnonzero((above[1:] > 0) & (above_fg[1:] >= precision * above[1:])) + 1
        if ok.size:
            hi[c] = ok[0]
        lost = np.cumsum(fg[c])[:hi[c]]            # foreground at or below each level: labelled background
        ok = np.flatnonzero(lost <= (1 - precision) * fg[c].sum())
        if ok.size:
            lo[c] = ok[-1]
    return lo, hi


def level_counts(levels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(C, 2, 256)`` pixel counts per class of ``(C, P)`` levels split by ``(C, P)`` truth (0: background)."""
    n_classes = levels.shape[0]
    index = levels.astype(np.int64) + LEVELS * truth.astype(np.int64) + 2 * LEVELS * np.arange(n_classes)[:, None]
    return np.bincount(index.ravel(), minlength=n_classes * 2 * LEVELS).reshape(n_classes, 2, LEVELS)


def band_masks(levels: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative pixels ``(C, ...)`` of ``(C, ...)`` levels under the band."""
    shape = (-1,) + (1,) * (levels.ndim - 1)
    return levels >= hi.reshape(shape), levels <= lo.reshape(shape)


def _summary(counts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict[str, Any]:
    """What the band keeps of the validation pixels: the share kept, how often the kept ones are right, the
    positives' precision and the share of the foreground labelled background."""
    fg, bg = counts[:, 1].astype(np.float64), counts[:, 0].astype(np.float64)
    total = fg.sum(1) + bg.sum(1)
    levels = np.arange(LEVELS)
    pos, neg = levels[None] >= hi[:, None], levels[None] <= lo[:, None]
    kept = ((fg + bg) * (pos | neg)).sum(1)
    right = (fg * pos).sum(1) + (bg * neg).sum(1)
    positives, lost = ((fg + bg) * pos).sum(), (fg * neg).sum()
    return {"pixels": int(total.sum()), "kept": round(float(kept.sum() / max(total.sum(), 1)), 6),
            "right": round(float(right.sum() / max(kept.sum(), 1)), 6),
            "positive_precision": round(float((fg * pos).sum() / positives), 6) if positives else None,
            "foreground_kept_positive": round(float((fg * pos).sum() / max(fg.sum(), 1)), 6),
            "foreground_lost": round(float(lost / max(fg.sum(), 1)), 6),
            "kept_per_class": {c: round(float(k / max(t, 1)), 6) for c, k, t in zip(CLASSES, kept, total)}}


class SegmentationPseudo:
    output = "maps"
    definition = ("per class, fused probability p on the levels q = round(255 p): positive when q >= hi, negative "
                  "when q <= lo, ignored in between; hi: the lowest level whose pixels at or above it are "
                  "foreground at the precision on out-of-fold validation maps, lo: the highest level below hi whose "
                  "pixels at or below it hold at most 1 - precision of the class's foreground")

    @staticmethod
    def fit(items: Iterable[tuple[np.ndarray, np.ndarray]], precision: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The band (levels, and as probabilities) from validation items ``(levels (C, P) uint8, truth (C, P)
        bool)``, and what it keeps of them and how often the kept pixels are right."""
        counts = np.zeros((len(CLASSES), 2, LEVELS), np.int64)
        images = 0
        for levels, truth in items:
            counts += level_counts(levels, truth)
            images += 1
        if not images:
            raise ValueError("no validation images to fit the band on")
        lo, hi = fit_band(counts[:, 1], counts[:, 0], precision)
        thresholds = {"lo": lo.tolist(), "hi": hi.tolist(),
                      "lo_p": {c: round(v / 255, 4) if v >= 0 else None for c, v in zip(CLASSES, lo.tolist())},
                      "hi_p": {c: round(v / 255, 4) if v < LEVELS else None for c, v in zip(CLASSES, hi.tolist())}}
        return thresholds, {"images": images, **_summary(counts, lo, hi)}

    @staticmethod
    def write(folder: Path, items: Iterable[tuple[HandboneSample, np.ndarray]], thresholds: dict) -> dict[str, Any]:
        """Write every test image ``(sample, levels (C, H, W) uint8 at its original size)`` with a labelled pixel
        into ``folder``; returns ``{"images", "written", "kept", "kept_per_class", "per_image": {name: {"kept",
        "classes"}}}`` (kept: the share of the test pixels labelled, not ignored)."""
        lo, hi = np.asarray(thresholds["lo"]), np.asarray(thresholds["hi"])
        per_image: dict[str, dict] = {}
        class_sum = np.zeros(len(CLASSES))
        written = 0
        for sample, levels in items:
            polygons, packed, kept = _image_labels(levels, lo, hi)
            class_sum += kept
            per_image[sample.name] = {"kept": round(float(kept.mean()), 6),
                                      "classes": [round(float(k), 4) for k in kept]}
            if not kept.any():
                continue
            stem = Path(sample.name).stem
            link(sample.image_path, folder / "DCM" / sample.patient / sample.name)
            write_polygons(folder / "outputs_json" / sample.patient / f"{stem}.json", polygons)
            write_ignore(folder / IGNORE_DIR / sample.patient / f"{stem}.npz", packed, levels.shape)
            written += 1
        n = max(len(per_image), 1)
        return {"images": len(per_image), "written": written,
                "kept": round(float(class_sum.sum() / (n * len(CLASSES))), 6),
                "kept_per_class": {c: round(float(v / n), 6) for c, v in zip(CLASSES, class_sum)},
                "per_image": per_image}

    @staticmethod
    def read(root: Path, manifest: dict, data: Any) -> list[PseudoSample]:
        """The samples of a pseudo-labelled folder, each with its ignore map (a missing one is a FormatError)."""
        out = []
        for s in list_samples(root):
            rel = s.image_path.relative_to(root / "DCM").with_suffix(".npz")
            ignore = root / IGNORE_DIR / rel
            if not ignore.is_file():
                raise FormatError(f"{s.image_path}: no ignore map at {ignore}")
            out.append(PseudoSample(s.image_path, s.label_path, s.patient, ignore))
        return out


def _image_labels(levels: np.ndarray, lo: np.ndarray, hi: np.ndarray
                  ) -> tuple[dict[str, list[np.ndarray]], np.ndarray, np.ndarray]:
    """One test image's ``(C, H, W)`` levels → the positive pixels as polygons per class, the ignore map with its
    bits packed along the width ``(C, H, ceil(W / 8))`` and the share of each class's pixels kept; one class's
    ``(H, W)`` masks at a time (a 2048² image's 29 boolean planes would be 120 MB each)."""
    height, width = levels.shape[1:]
    polygons: dict[str, list[np.ndarray]] = {}
    packed = np.empty((len(CLASSES), height, -(-width // 8)), np.uint8)
    kept = np.empty(len(CLASSES))
    for c, name in enumerate(CLASSES):
        positive, negative = band_masks(levels[c:c + 1], lo[c:c + 1], hi[c:c + 1])
        polys = mask_to_polygons(positive[0])
        if polys:
            polygons[name] = polys
        label = fill_polygons(np.zeros((height, width), np.uint8), polys).astype(bool)
        ignore = ~(positive[0] | negative[0]) | (label != positive[0])
        packed[c] = np.packbits(ignore, axis=-1)
        kept[c] = 1 - ignore.mean()
    return polygons, packed, kept


def write_ignore(path: Path, packed: np.ndarray, shape: tuple[int, int, int]) -> None:
    """One ignore map of ``shape`` ``(C, H, W)``, its bits packed along the width, compressed (atomic)."""
    with atomic_write(path, "wb") as f:
        np.savez_compressed(f, ignore=packed, shape=np.asarray(shape, np.int64))


def read_ignore(path: Path, height: int, width: int) -> np.ndarray:
    """The ``(29, height, width)`` bool ignore map of one pseudo-labelled image; a map of another size or a damaged
    file is a FormatError naming it."""
    try:
        with np.load(path) as f:
            packed, shape = f["ignore"], tuple(int(v) for v in f["shape"])
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise FormatError(f"{path}: not an ignore map ({err})") from None
    if shape != (len(CLASSES), height, width) or packed.shape != (shape[0], shape[1], -(-shape[2] // 8)):
        raise FormatError(f"{path}: ignore map of shape {shape}, the image needs {(len(CLASSES), height, width)}")
    return np.unpackbits(packed, axis=-1, count=width).astype(bool)


def training_samples(data: Any) -> list[PseudoSample]:
    """The pseudo-labelled samples of ``data.pseudo_roots`` (the training images of every fold gain them)."""
    return pseudo_samples(data, "segmentation", SIDE.read)


SIDE = SegmentationPseudo()
