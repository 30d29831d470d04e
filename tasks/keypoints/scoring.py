"""Local scoring of a keypoint submission (wide ``image_name,<lm>_x...,<lm>_y...``) in the original pixels
(and mm where the spacing is known). Numpy only, no torch."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from tasks.keypoint_labels import KeypointSample, list_keypoint_samples, read_labels, read_spacing_file, read_wide, stem
from tasks.keypoint_sets import LandmarkSet
from tasks.metrics import axis_errors, keypoint_metrics, radial_errors
from tasks.scoring import check_coverage, halves


def _ground_truth(gt: Path, lmset: LandmarkSet, images: str | os.PathLike | None,
                  test_split: bool) -> tuple[list[KeypointSample], Path]:
    """Labelled samples to score against: ``gt`` is a keypoint folder (its ``test`` split when it has a
    split file and ``test_split``) or a label file beside ``images/`` (or ``images`` given)."""
    if gt.is_dir():
        split = "test" if test_split and (gt / "split.csv").is_file() else None
        if images is not None:
            samples = list_keypoint_samples(gt, lmset, images=str(Path(images).resolve()), split=split)
        else:
            samples = list_keypoint_samples(gt, lmset, split=split)
        return samples, gt / lmset.label_file
    if not gt.is_file():
        raise FormatError(f"{gt}: ground truth not found")
    root = gt.parent
    image_dir = Path(images).resolve() if images is not None else root / "images"
    if image_dir.is_dir():
        split = "test" if test_split and (root / "split.csv").is_file() else None
        return list_keypoint_samples(root, lmset, labels=gt.name, images=str(image_dir), split=split), gt
    ids, coords = read_labels(gt, lmset)
    spacings = read_spacing_file(root / "spacing.csv") if (root / "spacing.csv").is_file() else {}
    return [KeypointSample(i, root / i, c, spacings.get(stem(i))) for i, c in zip(ids, coords)], gt


def _worst_landmarks(names: Sequence[str], err_px: np.ndarray, err_mm: np.ndarray | None,
                     n: int = 3) -> list[list]:
    """The ``n`` landmarks of one image farthest from the truth: ``[name, px, mm or None]``, worst first."""
    order = np.argsort(-err_px, kind="stable")[:n]
    return [[names[k], float(err_px[k]), float(err_mm[k]) if err_mm is not None else None] for k in order]


def score(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
                    *, sdr: Sequence[float] | None = None, sdr_mm: Sequence[float] | None = None,
                    subset: bool = False, per_image: bool = False) -> dict:
    """Score a wide keypoint CSV against ground truth, in the original pixels (and mm where every image
    has a pixel spacing; ``images_without_spacing`` counts those that have none).

    ``gt``: a keypoint folder (``coord_list.csv``/``all.csv`` + ``images/`` [+ ``spacing.csv``,
    ``split.csv`` whose ``test`` rows are scored]) or a label file. Every ground-truth image needs a
    row and every row a ground truth; ``subset`` scores only the CSV's images, against every labelled image
    (a validation fold's predictions). SDR at ``sdr`` px and ``sdr_mm`` mm (default: the landmark set's
    radii); ``median_dx_px``/``median_dy_px`` the median error along each axis. Public/private halves by
    patient (the landmark set's ``patient_of``). ``per_image``: each image's MRE and its worst landmarks.
    """
    names, pred, lmset = read_wide(csv_path)
    samples, gt_file = _ground_truth(Path(gt), lmset, images, test_split=not subset)
    by_stem = {stem(s.name): s for s in samples}
    pred_by_stem = {stem(n): p for n, p in zip(names, pred)}
    unknown = [n for n in names if stem(n) not in by_stem]
    if unknown:
        raise FormatError(f"{csv_path}: image {unknown[0]} has no ground truth in {gt_file} ({len(unknown)} such rows)")
    check_coverage(csv_path, [s.name for s in samples if stem(s.name) not in pred_by_stem],
                    "ground-truth images", subset)
    order = sorted(pred_by_stem)
    if not order:
        raise FormatError(f"{csv_path}: no images to score")
    p = np.stack([pred_by_stem[k] for k in order])
    t = np.stack([by_stem[k].coords for k in order])
    spacing = [by_stem[k].spacing_mm for k in order]
    result = keypoint_metrics(p, t, lmset.names, spacing, lmset.sdr_px if sdr is None else sdr,
                              lmset.sdr_mm if sdr_mm is None else sdr_mm)
    result.update(axis_errors(p, t))
    err = radial_errors(p, t)
    result.update(halves({k: float(e) for k, e in zip(order, err.mean(1))}, lmset.patient_of))
    result.update(metric="mre_px", images=len(order), landmarks=lmset.name,
                  images_without_spacing=sum(s is None for s in spacing))
    if per_image:
        with_mm = all(s is not None for s in spacing)
        rows = {}
        for k, e, s in zip(order, err, spacing):
            e_mm = e * s if with_mm else None
            rows[by_stem[k].name] = {"score": float(e.mean()), **({"mre_mm": float(e_mm.mean())} if with_mm else {}),
                                     "worst": _worst_landmarks(lmset.names, e, e_mm)}
        result["per_image"] = rows
    return result
