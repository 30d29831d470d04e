"""Local scoring of a keypoint submission (wide ``image_name,<lm>_x...,<lm>_y...``) in the original pixels
(and mm where the spacing is known). Numpy only, no torch."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from tasks.keypoint_labels import KeypointSample, list_keypoint_samples, read_labels, read_spacing_file, read_wide, stem
from tasks.keypoint_sets import LandmarkSet
from tasks.metrics import keypoint_metrics, radial_errors
from tasks.scoring import public_private_split


def _ground_truth(gt: Path, lmset: LandmarkSet, images: str | os.PathLike | None) -> tuple[list[KeypointSample], Path]:
    """Labelled samples to score against: ``gt`` is a keypoint folder (its ``test`` split when it has a
    split file) or a label file beside ``images/`` (or ``images`` given)."""
    if gt.is_dir():
        has_split = (gt / "split.csv").is_file()
        if images is not None:
            samples = list_keypoint_samples(gt, lmset, images=str(Path(images).resolve()),
                                            split="test" if has_split else None)
        else:
            samples = list_keypoint_samples(gt, lmset, split="test" if has_split else None)
        return samples, gt / lmset.label_file
    if not gt.is_file():
        raise FormatError(f"{gt}: ground truth not found")
    root = gt.parent
    image_dir = Path(images).resolve() if images is not None else root / "images"
    if image_dir.is_dir():
        split = "test" if (root / "split.csv").is_file() else None
        return list_keypoint_samples(root, lmset, labels=gt.name, images=str(image_dir), split=split), gt
    ids, coords = read_labels(gt, lmset)
    spacings = read_spacing_file(root / "spacing.csv") if (root / "spacing.csv").is_file() else {}
    return [KeypointSample(i, root / i, c, spacings.get(stem(i))) for i, c in zip(ids, coords)], gt


def score(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
                    radii_px: Sequence[float] = (2, 4, 8), radii_mm: Sequence[float] = (2, 4, 10)) -> dict:
    """Score a wide keypoint CSV against ground truth, in the original pixels (and mm where every image
    has a pixel spacing; ``images_without_spacing`` counts those that have none).

    ``gt``: a keypoint folder (``coord_list.csv``/``all.csv`` + ``images/`` [+ ``spacing.csv``,
    ``split.csv`` whose ``test`` rows are scored]) or a label file. Every ground-truth image needs a
    row and every row a ground truth. Public/private halves as on a leaderboard.
    """
    names, pred, lmset = read_wide(csv_path)
    samples, gt_file = _ground_truth(Path(gt), lmset, images)
    by_stem = {stem(s.name): s for s in samples}
    pred_by_stem = {stem(n): p for n, p in zip(names, pred)}
    unknown = [n for n in names if stem(n) not in by_stem]
    if unknown:
        raise FormatError(f"{csv_path}: image {unknown[0]} has no ground truth in {gt_file} ({len(unknown)} such rows)")
    missing = [s.name for s in samples if stem(s.name) not in pred_by_stem]
    if missing:
        raise FormatError(f"{csv_path}: {len(missing)} ground-truth images have no row, e.g. {missing[0]}")
    order = sorted(by_stem)
    p = np.stack([pred_by_stem[k] for k in order])
    t = np.stack([by_stem[k].coords for k in order])
    spacing = [by_stem[k].spacing_mm for k in order]
    result = keypoint_metrics(p, t, lmset.names, spacing, radii_px, radii_mm)
    public, private = public_private_split(order)
    err = radial_errors(p, t).mean(1)
    half = {k: float(e) for k, e in zip(order, err)}
    result["public"] = float(np.mean([half[k] for k in public])) if public else math.nan
    result["private"] = float(np.mean([half[k] for k in private])) if private else math.nan
    result.update(metric="mre_px", images=len(order), landmarks=lmset.name,
                  images_without_spacing=sum(s is None for s in spacing))
    return result
