"""The pseudo-label side of bone age (numpy only): a member-disagreement threshold fitted on validation, the kept
test ages written as an RSNA training folder, and that folder read back.

Confidence. An image's *spread* is the members' disagreement about its age: the standard deviation of their
ages (months; it needs at least two members). A fused age is *right* when it lies within
:data:`TOLERANCE_MONTHS` of the truth (the task's within-12-months figure). The threshold ``t`` is the largest
validation spread such that of the validation images with spread ``<= t`` at least ``precision`` are right
(:func:`tasks.pseudo.fit_spread`); a test image is kept when its spread is at most ``t``.

Folder (the RSNA layout the task trains on; ``data.train_csv``/``data.train_images`` default names)::

    OUT/boneage-training-dataset.csv       id,boneage,male of the kept images (the fused age, in [0, 240])
    OUT/boneage-training-dataset/<id>.png  symbolic link to the test image
    OUT/pseudo.json                        source, threshold, kept fraction (tasks.pseudo)
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import write_text
from tasks.boneage import BoneAgeData
from tasks.formats.submissions import MAX_AGE_MONTHS
from tasks.pseudo import fit_spread, link, member_spread, pseudo_samples

TOLERANCE_MONTHS = 12.0
CSV_NAME = BoneAgeData.model_fields["train_csv"].default
IMAGES = BoneAgeData.model_fields["train_images"].default


def _needs_members(preds: np.ndarray) -> None:
    if preds.shape[0] < 2:
        raise ValueError(f"bone-age pseudo-labels keep the images the members agree on: the ensemble needs at least "
                         f"2 members, it has {preds.shape[0]}")


class BoneAgePseudo:
    output = "values"
    definition = (f"an image is kept when the standard deviation of the members' ages is at most t; t: the largest "
                  f"out-of-fold validation spread whose images at or below it are within {TOLERANCE_MONTHS:g} months "
                  f"of the truth at the precision")

    @staticmethod
    def fit(preds: np.ndarray, fused: np.ndarray, truth: np.ndarray, cfg: Any,
            precision: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The spread threshold from validation ``(M, N)`` member ages, their ``(N,)`` fusion and the truth, and
        what it keeps of the validation images and how often the kept ones are right."""
        _needs_members(preds)
        spread = member_spread(np.asarray(preds)[..., None])
        error = np.abs(np.asarray(fused, np.float64) - truth)
        right = error <= TOLERANCE_MONTHS
        t = fit_spread(spread, right, precision)
        kept = spread <= t if t is not None else np.zeros_like(right)
        return ({"spread_months": t, "tolerance_months": TOLERANCE_MONTHS},
                {"images": int(spread.size), "kept": round(float(kept.mean()), 6),
                 "right": round(float(right[kept].mean()), 6) if kept.any() else None,
                 "mae_kept": round(float(error[kept].mean()), 4) if kept.any() else None,
                 "right_all": round(float(right.mean()), 6)})

    @staticmethod
    def test_samples(cfg: Any) -> list:
        from tasks.boneage.samples import test_samples  # pandas, scikit-learn

        return test_samples(cfg.data)

    @staticmethod
    def write(folder: Path, samples: Sequence[Any], preds: np.ndarray, fused: np.ndarray, thresholds: dict,
              cfg: Any) -> dict[str, Any]:
        """Write the kept test images (``samples`` in the order of the ``(M, N)`` member ages and their ``(N,)``
        fusion); returns counts and the kept fraction."""
        _needs_members(preds)
        t = thresholds["spread_months"]
        spread = member_spread(np.asarray(preds)[..., None])
        keep = spread <= t if t is not None else np.zeros(spread.shape, bool)
        rows = np.flatnonzero(keep)
        if rows.size:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["id", "boneage", "male"])
            for i in rows:
                s = samples[i]
                link(s.image_path, folder / IMAGES / f"{s.id}{s.image_path.suffix}")
                writer.writerow([s.id, f"{float(np.clip(fused[i], 0, MAX_AGE_MONTHS)):.3f}", s.male])
            write_text(folder / CSV_NAME, out.getvalue())
        return {"images": len(samples), "written": int(rows.size), "kept": round(float(keep.mean()), 6),
                "per_image": {s.name: {"kept": bool(k), "spread_months": round(float(v), 3)}
                              for s, k, v in zip(samples, keep, spread)}}

    @staticmethod
    def read(root: Path, manifest: dict, data: Any) -> list:
        from tasks.boneage.samples import list_samples

        return list_samples(root / CSV_NAME, root / IMAGES, require_age=True)


def training_samples(data: Any) -> list:
    """The pseudo-labelled samples of ``data.pseudo_roots`` (the training images of every fold gain them)."""
    return pseudo_samples(data, "boneage", SIDE.read)


SIDE = BoneAgePseudo()
