"""Local scoring of a segmentation submission (``image_name,class,rle``) and its validation against the test
images. Numpy and OpenCV only, no torch: ``tools/score.py`` and ``tools/validate_submission.py`` start fast."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from tasks.formats.handbones import CLASSES, list_samples, read_masks
from tasks.formats.images import image_size
from tasks.metrics import dice_per_class
from tasks.rle import decode, parse_runs
from tasks.scoring import check_coverage, halves
from tasks.submission import iter_images


def resolve_gt(gt: str | os.PathLike, images: str | os.PathLike | None) -> tuple[Path, Path]:
    """``--gt`` may be ``test_gt`` (holding ``outputs_json``), the JSON folder itself, or a training root
    holding both ``DCM`` and ``outputs_json``; images default to that root, else ``../test``."""
    gt = Path(gt)
    labels = gt / "outputs_json" if (gt / "outputs_json").is_dir() else gt
    if images is None:
        base = gt if labels != gt else gt.parent
        images = base if (base / "DCM").is_dir() else base.parent / "test"
    return Path(images), labels


def validate(csv_path: str | os.PathLike, images_root: str | os.PathLike) -> int:
    """Validate a submission against the test images: coverage, order, RLE bounds and sortedness.

    Returns the number of images; raises :class:`FormatError` naming the file, line and reason.
    """
    samples = {s.name: s for s in list_samples(images_root, labels=None)}
    seen = set()
    for name, rles in iter_images(csv_path):
        if name not in samples:
            raise FormatError(f"{csv_path}: image {name} is not in {images_root}")
        h, w = image_size(samples[name].image_path)
        for cls, rle in zip(CLASSES, rles):
            parse_runs(rle, h * w, where=f"{csv_path}: {name} {cls} ({w}x{h} image)")
        seen.add(name)
    missing = sorted(set(samples) - seen)
    if missing:
        raise FormatError(f"{csv_path}: {len(missing)} test images have no rows, e.g. {missing[0]}")
    return len(seen)


def score(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
                       *, subset: bool = False, per_image: bool = False) -> dict:
    """Mean Dice (images, then classes), per class, and public/private halves by patient (``IDxxx``).
    Streams image by image. ``subset``: score only the images the CSV has (each needs its ground truth)."""
    images_root, labels = resolve_gt(gt, images)
    samples = {s.name: s for s in list_samples(images_root, labels=labels)}
    per_dice: dict[str, np.ndarray] = {}
    for name, rles in iter_images(csv_path):
        if name not in samples:
            raise FormatError(f"{csv_path}: image {name} has no ground truth in {labels}")
        s = samples[name]
        h, w = image_size(s.image_path)
        pred = np.stack([decode(r, h, w, where=f"{csv_path}: {name} {c}") for c, r in zip(CLASSES, rles)])
        per_dice[name] = dice_per_class(pred, read_masks(s.label_path, h, w))
    check_coverage(csv_path, sorted(set(samples) - set(per_dice)), "ground-truth images", subset)
    if not per_dice:
        raise FormatError(f"{csv_path}: no images to score")
    image_dice = {n: float(d.mean()) for n, d in per_dice.items()}
    per_class = np.mean(list(per_dice.values()), axis=0)
    result = {"score": float(per_class.mean()), **halves(image_dice, lambda n: samples[n].patient),
              "per_item": {c: float(v) for c, v in zip(CLASSES, per_class)}, "images": len(per_dice), "metric": "dice"}
    if per_image:
        result["per_image"] = {n: {"score": v} for n, v in sorted(image_dice.items())}
    return result
