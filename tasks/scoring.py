"""Local scoring of submissions, with a competition-style public/private split of the test images.

No torch here, nor in anything it imports: ``tools/score.py`` and ``tools/validate_submission.py`` start in
a fraction of a second. Pandas is imported only to score a bone-age CSV.
"""
from __future__ import annotations

import importlib
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from tasks.formats.handbones import CLASSES, list_samples, read_masks
from tasks.formats.images import image_size
from tasks.formats.submissions import sniff_task
from tasks.rle import decode, parse_runs
from tasks.keypoint_labels import KeypointSample, list_keypoint_samples, read_labels, read_spacing_file, read_wide, stem
from tasks.keypoint_sets import LandmarkSet
from tasks.metrics import age_metrics, dice_per_class, keypoint_metrics, radial_errors
from tasks.submission import iter_images

PUBLIC_SEED = 0


def public_private_split(names: list[str], seed: int = PUBLIC_SEED) -> tuple[set[str], set[str]]:
    """A fixed random half/half split of the sorted test names (public gets the extra one if odd)."""
    ordered = sorted(names)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    half = (len(ordered) + 1) // 2
    public = {ordered[i] for i in perm[:half]}
    return public, set(ordered) - public


def resolve_gt(gt: str | os.PathLike, images: str | os.PathLike | None) -> tuple[Path, Path]:
    """``--gt`` may be ``test_gt`` (holding ``outputs_json``) or the JSON folder itself; images default to ``../test``."""
    gt = Path(gt)
    labels = gt / "outputs_json" if (gt / "outputs_json").is_dir() else gt
    if images is None:
        base = gt if labels != gt else gt.parent
        images = base.parent / "test"
    return Path(images), labels


def check_segmentation_csv(csv_path: str | os.PathLike, images_root: str | os.PathLike) -> int:
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


def score_segmentation(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None) -> dict:
    """Mean Dice (images, then classes), per class, and public/private halves. Streams image by image."""
    images_root, labels = resolve_gt(gt, images)
    samples = {s.name: s for s in list_samples(images_root, labels=labels)}
    per_image: dict[str, np.ndarray] = {}
    for name, rles in iter_images(csv_path):
        if name not in samples:
            raise FormatError(f"{csv_path}: image {name} has no ground truth in {labels}")
        s = samples[name]
        h, w = image_size(s.image_path)
        pred = np.stack([decode(r, h, w, where=f"{csv_path}: {name} {c}") for c, r in zip(CLASSES, rles)])
        per_image[name] = dice_per_class(pred, read_masks(s.label_path, h, w))
    missing = sorted(set(samples) - set(per_image))
    if missing:
        raise FormatError(f"{csv_path}: {len(missing)} test images have no rows, e.g. {missing[0]}")
    public, private = public_private_split(list(per_image))

    def mean(names) -> float:
        return float(np.mean([per_image[n] for n in names], axis=0).mean()) if names else float("nan")

    per_class = np.mean(list(per_image.values()), axis=0)
    return {"score": float(per_class.mean()), "public": mean(public), "private": mean(private),
            "per_item": {c: float(v) for c, v in zip(CLASSES, per_class)}, "images": len(per_image), "metric": "dice"}


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


def score_keypoints(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
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


def _sex_for(gt: Path, ids: Sequence[str]) -> np.ndarray | None:
    """Sex of each id from the test CSV beside an answers file (``boneage-test-dataset.csv``), if there."""
    from tasks.formats.rsna import read_labels as read_rsna_labels  # pandas: only for bone age

    for name in ("boneage-test-dataset.csv", "labels.csv"):
        path = gt.parent / name
        if path.is_file() and path.resolve() != gt.resolve():
            df = read_rsna_labels(path)
            sex = dict(zip(df["id"], df["male"]))
            if all(i in sex for i in ids):
                return np.array([sex[i] for i in ids], bool)
    return None


def score_boneage(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
                  **_) -> dict:
    """Score an ``id,boneage`` submission against answers (``id,boneage[,male]``): MAE months and the rest
    of :func:`age_metrics`, plus the public/private halves of the leaderboard split."""
    from tasks.formats.rsna import read_submission  # pandas: only when a bone-age CSV is scored

    gt = Path(gt)
    truth = read_submission(gt, answers=True)
    sub = read_submission(csv_path)
    missing = sorted(set(truth["id"]) - set(sub["id"]))
    if missing:
        raise FormatError(f"{csv_path}: {len(missing)} ids of {gt} have no prediction, e.g. {missing[0]}")
    extra = sorted(set(sub["id"]) - set(truth["id"]))
    if extra:
        raise FormatError(f"{csv_path}: id {extra[0]} is not in the answers {gt}")
    pred = sub.set_index("id").loc[truth["id"], "boneage"].to_numpy()
    age = truth["boneage"].to_numpy()
    male = truth["male"].to_numpy(bool) if "male" in truth else _sex_for(gt, list(truth["id"]))
    result = age_metrics(pred, age, male)
    public, private = public_private_split(list(truth["id"]))
    pub = truth["id"].isin(public).to_numpy()
    err = np.abs(pred - age)
    result.update(public=float(err[pub].mean()) if pub.any() else float("nan"),
                  private=float(err[~pub].mean()) if (~pub).any() else float("nan"),
                  images=len(truth), metric="mae_months")
    return result


# Header of a submission → "module:function" scoring it as ``fn(csv_path, gt, images) -> dict`` with keys
# score, public, private, per_item (+ anything else). Tasks register theirs here.
SCORERS: dict[str, str] = {
    "segmentation": "tasks.scoring:score_segmentation",
    "keypoints": "tasks.scoring:score_keypoints",
    "boneage": "tasks.scoring:score_boneage",
}


def score_submission(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
                     **options) -> dict:
    """Score any task's submission (dispatch on the CSV header)."""
    task = sniff_task(csv_path)
    if task not in SCORERS:
        raise FormatError(f"{csv_path}: looks like a {task} submission, but no {task} scorer is installed")
    module, fn = SCORERS[task].split(":")
    result = getattr(importlib.import_module(module), fn)(csv_path, gt, images, **options)
    result.setdefault("task", task)
    return result


# --------------------------------------------------------------------------------------------------
# What a score prints and what a run's summary.json keeps
# --------------------------------------------------------------------------------------------------

#: Keys of a scorer's result that are bookkeeping, not metrics.
NOT_METRICS = ("score", "public", "private", "images", "images_without_spacing", "metric", "task", "landmarks")
DESCRIPTIONS = {
    "dice": "Dice, mean over classes (empty/empty = 1)",
    "mre_px": "mean radial error, px", "mre_mm": "mean radial error, mm",
    "sd_px": "standard deviation of the radial error, px", "sd_mm": "standard deviation of the radial error, mm",
    "mae_months": "mean absolute error, months", "rmse": "root mean squared error, months",
    "within_12m": "share of ages within 12 months", "mae_male": "MAE of the boys, months",
    "mae_female": "MAE of the girls, months",
}
#: Per-item breakdown of each task: (what an item is, what its value is).
PER_ITEM = {"segmentation": ("class", "Dice"), "keypoints": ("landmark", "MRE px"), "boneage": ("age band", "MAE months")}


def describe(name: str) -> str:
    """What a metric key means (units are in the names)."""
    sdr = re.fullmatch(r"sdr_(.+?)(px|mm)", name)
    if sdr:
        return f"share of points within {sdr[1]} {sdr[2]}"
    return DESCRIPTIONS.get(name, "")


def metrics_of(result: dict) -> dict[str, float]:
    """Every scalar metric of a scorer's result, the headline first under its own name (``dice``,
    ``mre_px``, ``mae_months``)."""
    headline = result.get("metric", "score")
    out = {headline: result.get(headline, result["score"])}
    for key, value in result.items():
        if key not in NOT_METRICS and key != headline and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


def _fmt(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4f}"


def report_lines(result: dict) -> list[str]:
    """The metrics table of a scorer's result (and its per-item breakdown), for the terminal."""
    metrics = metrics_of(result)
    width = max(len(k) for k in metrics)
    lines = [f"  {k:<{width}}  {_fmt(v):>9}  {describe(k)}".rstrip() for k, v in metrics.items()]
    missing = result.get("images_without_spacing")
    if missing:
        lines.append(f"  mm metrics unavailable: no pixel spacing for {missing} of {result['images']} images")
    items = result.get("per_item") or {}
    if items:
        item, what = PER_ITEM.get(result.get("task"), ("item", "score"))
        mm = result.get("per_item_mm") or {}
        width = max(len(item), *(len(k) for k in items))
        lines.append("")
        lines.append(f"  {item:<{width}}  {what:>9}" + (f"  {'MRE mm':>9}" if mm else ""))
        for name, value in items.items():
            lines.append(f"  {name:<{width}}  {_fmt(value):>9}" + (f"  {_fmt(mm.get(name)):>9}" if mm else ""))
    return lines


def _finite(value):
    """``value`` with NaN and infinities as None (JSON has no NaN), recursively through dicts."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def stored_scores(result: dict) -> dict:
    """What ``summary.json`` keeps under ``test``: score, public, private, every metric of
    :func:`metrics_of` and the per-item breakdowns; NaN as null."""
    keep = {"score": result["score"], "public": result.get("public"), "private": result.get("private"),
            **metrics_of(result), "images": result.get("images")}
    keep.update({k: v for k, v in result.items() if k.startswith("per_item")})
    return _finite(keep)
