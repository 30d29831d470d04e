"""The pseudo-label side of keypoints (numpy only): a member-disagreement threshold fitted on validation, the kept
test points written as a keypoint training folder, and that folder read back.

Confidence. A point's *spread* is the members' disagreement about it: the root mean square distance, in pixels
of the original image, of the members' points from their mean (so it needs at least two members). A fused point
is *right* when it lies within the radius ``r`` of the truth, ``r`` the first SDR radius of the run's landmark
set (``data.sdr_radii_px``, else the set's own). The threshold ``t`` (one for every landmark: a validation set
holds too few points of one landmark to fit its own) is the largest validation spread such that of the
validation points with spread ``<= t`` at least ``precision`` are right (:func:`tasks.pseudo.fit_spread`). A
test point is kept when its spread is at most ``t``; the others are written but masked out of the loss, as
training masks a point the augmentation moved off the image.

Folder (a keypoint folder the task reads)::

    OUT/images/<image>       symbolic link to the test image (only images with a kept point)
    OUT/labels.csv           wide layout: image_name,<lm>_x...,<lm>_y... (the fused points, all of them)
    OUT/keep.csv             image_name,<lm>...: 1 where the point is kept, 0 where the loss skips it
    OUT/pseudo.json          source, threshold, kept fractions (tasks.pseudo)
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import write_text
from tasks.formats import FormatError
from tasks.formats.tables import read_rows
from tasks.keypoint_labels import KeypointSample, list_keypoint_samples, write_wide
from tasks.keypoint_sets import LandmarkSet, get_set
from tasks.keypoints.samples import split_samples
from tasks.metrics import radial_errors
from tasks.pseudo import fit_spread, link, member_spread, pseudo_samples

LABELS = "labels.csv"
KEEP = "keep.csv"


@dataclass(frozen=True)
class PseudoKeypointSample(KeypointSample):
    """A pseudo-labelled image: its points and which of them the loss uses (``keep``, ``(K,)`` bool)."""

    keep: np.ndarray | None = None


def sdr_radius(cfg: Any) -> float:
    """The radius (original pixels) within which a point counts as right: the run's first SDR radius."""
    radii = cfg.data.sdr_radii_px or get_set(cfg.data.landmarks).sdr_px
    return float(radii[0])


def _needs_members(preds: np.ndarray) -> None:
    if preds.shape[0] < 2:
        raise ValueError(f"keypoint pseudo-labels keep the points the members agree on: the ensemble needs at least "
                         f"2 members, it has {preds.shape[0]}")


class KeypointPseudo:
    output = "values"
    definition = ("a point is kept when the members' spread (root mean square distance of their points from their "
                  "mean, original px) is at most t; t: the largest out-of-fold validation spread whose points at or "
                  "below it lie within the first SDR radius of the truth at the precision")

    @staticmethod
    def fit(preds: np.ndarray, fused: np.ndarray, truth: np.ndarray, cfg: Any,
            precision: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The spread threshold from validation ``(M, N, K, 2)`` member points, their ``(N, K, 2)`` fusion and the
        truth, and what it keeps of the validation points and how often the kept ones are right."""
        _needs_members(preds)
        radius = sdr_radius(cfg)
        spread = member_spread(preds)
        right = radial_errors(fused, truth) <= radius
        t = fit_spread(spread, right, precision)
        kept = spread <= t if t is not None else np.zeros_like(right)
        return ({"spread_px": t, "radius_px": radius, "landmarks": cfg.data.landmarks},
                {"images": int(spread.shape[0]), "points": int(spread.size),
                 "kept": round(float(kept.mean()), 6),
                 "right": round(float(right[kept].mean()), 6) if kept.any() else None,
                 "right_all": round(float(right.mean()), 6)})

    @staticmethod
    def test_samples(cfg: Any) -> list[KeypointSample]:
        return split_samples(cfg.data, get_set(cfg.data.landmarks), "test")

    @staticmethod
    def write(folder: Path, samples: Sequence[KeypointSample], preds: np.ndarray, fused: np.ndarray,
              thresholds: dict, cfg: Any) -> dict[str, Any]:
        """Write the test images with a kept point (``samples`` in the order of the ``(M, N, K, 2)`` member points
        and their ``(N, K, 2)`` fusion); returns counts and kept fractions."""
        _needs_members(preds)
        lmset = get_set(cfg.data.landmarks)
        t = thresholds["spread_px"]
        spread = member_spread(preds)
        keep = spread <= t if t is not None else np.zeros(spread.shape, bool)
        rows = np.flatnonzero(keep.any(1))
        if rows.size:
            for i in rows:
                link(samples[i].image_path, folder / "images" / samples[i].image_path.name)
            write_wide(folder / LABELS, [samples[i].name for i in rows], fused[rows], lmset)
            write_keep(folder / KEEP, [samples[i].name for i in rows], keep[rows], lmset)
        return {"images": len(samples), "written": int(rows.size), "kept": round(float(keep.mean()), 6),
                "kept_per_landmark": {n: round(float(v), 6) for n, v in zip(lmset.names, keep.mean(0))},
                "per_image": {s.name: {"kept": round(float(k.mean()), 6)} for s, k in zip(samples, keep)}}

    @staticmethod
    def read(root: Path, manifest: dict, data: Any) -> list[PseudoKeypointSample]:
        """The samples of a pseudo-labelled folder with the landmark set of the run, each with its kept points."""
        landmarks = manifest.get("thresholds", {}).get("landmarks")
        if landmarks != data.landmarks:
            raise FormatError(f"{root}: pseudo-labels of landmark set {landmarks!r}, the run predicts {data.landmarks}")
        lmset = get_set(data.landmarks)
        samples = list_keypoint_samples(root, lmset, labels=LABELS, label_format="wide", images="images",
                                        spacing=None, split_file=None)
        keep = read_keep(root / KEEP, lmset)
        missing = [s.name for s in samples if s.name not in keep]
        if missing:
            raise FormatError(f"{root / KEEP}: no row for image {missing[0]}")
        return [PseudoKeypointSample(s.name, s.image_path, s.coords, s.spacing_mm, keep[s.name]) for s in samples]


def write_keep(path: Path, names: Sequence[str], keep: np.ndarray, lmset: LandmarkSet) -> None:
    """``image_name,<lm>...`` rows of 0/1 (atomic)."""
    out = io.StringIO()
    out.write(",".join(["image_name", *lmset.names]) + "\n")
    for name, row in zip(names, keep):
        out.write(",".join([name, *("1" if k else "0" for k in row)]) + "\n")
    write_text(path, out.getvalue())


def read_keep(path: Path, lmset: LandmarkSet) -> dict[str, np.ndarray]:
    """``{image name: (K,) bool}`` of a ``keep.csv``; a wrong header or a value other than 0/1 names the line."""
    header, rows = read_rows(path)
    if header != ["image_name", *lmset.names]:
        raise FormatError(f"{path}: header must be image_name,{','.join(lmset.names)} (landmark set {lmset.name})")
    out = {}
    for line, row in rows:
        if len(row) != len(header) or any(v not in ("0", "1") for v in row[1:]):
            raise FormatError(f"{path}: line {line}: expected an image name and {len(lmset)} values 0 or 1")
        out[row[0]] = np.array([v == "1" for v in row[1:]])
    return out


def training_samples(data: Any) -> list[PseudoKeypointSample]:
    """The pseudo-labelled samples of ``data.pseudo_roots`` (the training images of every fold gain them)."""
    return pseudo_samples(data, "keypoints", SIDE.read)


SIDE = KeypointPseudo()
