"""Fit per-class post-processing (:mod:`tasks.postprocess`) on validation predictions.

Candidates per class: none, ``largest_component``, ``fill_holes``, ``min_area`` at a few areas (fractions
:data:`AREA_FRACTIONS` of the first validation image's area, in its pixels). Each validation image's
thresholded masks (at the original size, as the submission would have them) are scored under every
candidate: Dice per class per image, empty/empty = 1. A class keeps the candidate with the best mean
Dice only when it beats no post-processing by more than :data:`MARGIN`; ties go to the earlier
candidate in the order above. The same rule is cross-fitted over patients (chosen without a group,
scored on it) so the report says whether the choice holds out of sample.

Masks come as crops that hold the whole predicted mask (the fuser's regions), so scoring costs the
crop, not the image: Dice needs only the crop's intersection with the ground truth and the total
ground-truth area.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ensembles.crossfit import patient_folds
from tasks.postprocess import apply_ops

MARGIN = 1e-3  # mean Dice a class's operation must add over none
AREA_FRACTIONS = (2.5e-4, 1e-3, 4e-3)  # min_area candidates; 2048x2048: 1049, 4194, 16777 px


def candidate_ops(image_area: int) -> list[tuple[str, ...]]:
    """The candidates, in tie-break order: none, largest component, fill holes, min areas small to large."""
    areas = sorted({max(1, round(f * image_area)) for f in AREA_FRACTIONS})
    return [(), ("largest_component",), ("fill_holes",)] + [(f"min_area:{a}",) for a in areas]


# One class of one image: the predicted mask's crop, the crop's top-left corner (row, col).
MaskCrop = tuple[np.ndarray, int, int]


def crop_dice(crops: Sequence[MaskCrop], gt: np.ndarray, candidates: Sequence[tuple[str, ...]]) -> np.ndarray:
    """``(C, K)`` Dice of each class's crop under each candidate against ``gt`` (``(C, H, W)`` bool)."""
    out = np.ones((len(crops), len(candidates)))
    for c, (mask, r0, c0) in enumerate(crops):
        truth = gt[c]
        total_gt = int(np.count_nonzero(truth))
        inside = truth[r0:r0 + mask.shape[0], c0:c0 + mask.shape[1]]
        for k, ops in enumerate(candidates):
            pred = apply_ops(mask, ops) if ops else mask.astype(bool, copy=False)
            denom = int(np.count_nonzero(pred)) + total_gt
            if denom:
                out[c, k] = 2.0 * np.count_nonzero(pred & inside) / denom
    return out


def choose(mean_dice: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    """Per class (rows of ``(C, K)``) the best candidate, or 0 (none) unless it gains more than ``margin``."""
    best = mean_dice.argmax(1)
    gain = mean_dice[np.arange(len(mean_dice)), best] - mean_dice[:, 0]
    return np.where(gain > margin, best, 0)


@dataclass
class PostprocessFit:
    """Chosen operations per class (classes without any are left out) and the scores behind them."""

    ops: dict[str, list[str]]
    before: float
    after: float
    cross_fitted: float
    per_class_gain: dict[str, float]
    n_items: int
    n_folds: int

    def to_dict(self) -> dict:
        return {"postprocess": self.ops,
                "postprocess_fit": {"before": round(self.before, 6), "after": round(self.after, 6),
                                    "cross_fitted": round(self.cross_fitted, 6), "images": self.n_items,
                                    "folds": self.n_folds, "margin": MARGIN,
                                    "gain": {c: round(g, 6) for c, g in self.per_class_gain.items()}}}


def fit_postprocess(items: Iterable[tuple[Sequence[MaskCrop], np.ndarray, str]], classes: Sequence[str], *,
                    folds: int = 5, seed: int = 0, margin: float = MARGIN) -> PostprocessFit:
    """Choose each class's post-processing on validation items ``(crops, gt (C, H, W) bool, patient)``.

    The candidates are sized by the first item's image; ``before``/``after``/``cross_fitted`` are mean Dice
    over images and classes without post-processing, with the choice (in sample) and cross-fitted.
    """
    tables, groups, candidates = [], [], None
    for crops, gt, group in items:
        if candidates is None:
            candidates = candidate_ops(gt.shape[-2] * gt.shape[-1])
        tables.append(crop_dice(crops, gt, candidates))
        groups.append(group)
    if not tables:
        raise ValueError("no validation images to fit post-processing on")
    dice = np.stack(tables)  # (N, C, K)
    chosen = choose(dice.mean(0), margin)
    classes_idx = np.arange(len(classes))
    fold_of = patient_folds(groups, folds, seed)
    held_out = np.zeros(len(classes))
    n_folds = int(fold_of.max()) + 1
    for f in range(n_folds):
        train, test = dice[fold_of != f], dice[fold_of == f]
        pick = choose(train.mean(0), margin) if len(train) else np.zeros(len(classes), np.int64)
        held_out += test[:, classes_idx, pick].sum(0)
    mean = dice.mean(0)
    return PostprocessFit(
        ops={c: list(candidates[k]) for c, k in zip(classes, chosen) if k},
        before=float(mean[:, 0].mean()), after=float(mean[classes_idx, chosen].mean()),
        cross_fitted=float(held_out.sum() / (len(dice) * len(classes))),
        per_class_gain={c: float(mean[i, k] - mean[i, 0]) for i, (c, k) in enumerate(zip(classes, chosen)) if k},
        n_items=len(dice), n_folds=n_folds)
