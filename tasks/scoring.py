"""Local scoring of submissions, with a competition-style public/private split of the test images by patient.

No torch here, nor in anything it imports: ``tools/score.py`` and ``tools/validate_submission.py`` start in
a fraction of a second. Pandas is imported only to score a bone-age CSV.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from tasks.formats.handbones import CLASSES, list_samples, read_masks
from tasks.formats.images import image_size
from tasks.formats.submissions import sniff_task
from tasks.rle import decode, parse_runs
from tasks.keypoint_labels import KeypointSample, list_keypoint_samples, read_labels, read_spacing_file, read_wide, stem
from tasks.keypoint_sets import LandmarkSet
from tasks.metrics import WITHIN_MONTHS, age_metrics, axis_errors, dice_per_class, keypoint_metrics, radial_errors
from tasks.submission import iter_images


def public_private_split(names: Sequence[str], patient_of: Callable[[str], str]) -> tuple[set[str], set[str]]:
    """The public and private halves of the test images, split by patient as a leaderboard with hidden labels
    splits them: all images of one patient (``patient_of``, the rule of the task's data format: the
    ``IDxxx`` folder of a hand-bone image, the ``_L``/``_R`` sides of an SHS_NET film, the views of an AASCE
    patient, an RSNA or DHA id) land in the same half, so a patient seen in both halves cannot flatter the
    public-private gap. Patients are taken in the order of the SHA-256 of their id (the same on every
    machine and run, whatever order the names come in) into the public half until it holds at least half
    the images; the rest are private."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(patient_of(name), []).append(name)
    public: set[str] = set()
    for patient in sorted(groups, key=lambda p: (hashlib.sha256(p.encode()).digest(), p)):
        if 2 * len(public) >= len(names):
            break
        public.update(groups[patient])
    return public, set(names) - public


def _halves(values: dict[str, float], patient_of: Callable[[str], str]) -> dict[str, float]:
    """``public`` and ``private``: the mean of ``values`` (one per image) over each half (NaN for an empty half)."""
    public, private = public_private_split(list(values), patient_of)

    def mean(names: set[str]) -> float:
        return float(np.mean([values[n] for n in names])) if names else math.nan

    return {"public": mean(public), "private": mean(private)}


def resolve_gt(gt: str | os.PathLike, images: str | os.PathLike | None) -> tuple[Path, Path]:
    """``--gt`` may be ``test_gt`` (holding ``outputs_json``), the JSON folder itself, or a training root
    holding both ``DCM`` and ``outputs_json``; images default to that root, else ``../test``."""
    gt = Path(gt)
    labels = gt / "outputs_json" if (gt / "outputs_json").is_dir() else gt
    if images is None:
        base = gt if labels != gt else gt.parent
        images = base if (base / "DCM").is_dir() else base.parent / "test"
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


def _check_coverage(csv_path: str | os.PathLike, missing: Sequence[str], what: str, subset: bool) -> None:
    """Every ground-truth item needs a prediction, unless ``subset`` (a validation fold's CSV)."""
    if missing and not subset:
        raise FormatError(f"{csv_path}: {len(missing)} {what} have no prediction, e.g. {sorted(missing)[0]} "
                          "(--subset scores only the images the CSV has, e.g. a validation fold)")


def score_segmentation(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
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
    _check_coverage(csv_path, sorted(set(samples) - set(per_dice)), "ground-truth images", subset)
    if not per_dice:
        raise FormatError(f"{csv_path}: no images to score")
    image_dice = {n: float(d.mean()) for n, d in per_dice.items()}
    per_class = np.mean(list(per_dice.values()), axis=0)
    result = {"score": float(per_class.mean()), **_halves(image_dice, lambda n: samples[n].patient),
              "per_item": {c: float(v) for c, v in zip(CLASSES, per_class)}, "images": len(per_dice), "metric": "dice"}
    if per_image:
        result["per_image"] = {n: {"score": v} for n, v in sorted(image_dice.items())}
    return result


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


def score_keypoints(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
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
    _check_coverage(csv_path, [s.name for s in samples if stem(s.name) not in pred_by_stem],
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
    result.update(_halves({k: float(e) for k, e in zip(order, err.mean(1))}, lmset.patient_of))
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


def baseline_months(baseline: float | str | os.PathLike) -> float:
    """The constant answer of the bone-age baseline: months as given, or the mean age of an RSNA labels CSV
    (e.g. the training set's ``boneage-training-dataset.csv``)."""
    from tasks.formats.rsna import read_labels as read_rsna_labels  # pandas: only for bone age

    if isinstance(baseline, (int, float)):
        return float(baseline)
    return float(read_rsna_labels(baseline, require_age=True)["boneage"].mean())


def score_boneage(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
                  *, within: Sequence[float] = WITHIN_MONTHS, baseline_age: float | str | os.PathLike | None = None,
                  subset: bool = False, per_image: bool = False) -> dict:
    """Score an ``id,boneage`` submission against answers (``id,boneage[,male]``): MAE months and the rest
    of :func:`age_metrics` (share within each of ``within`` months, the spread of the predictions, the MAE
    of a constant answer when ``baseline_age`` is given: months, or a labels CSV whose mean age it is), plus
    the public/private halves by patient (an RSNA id). ``subset``: score only the ids the CSV has (a
    validation fold); ``per_image``: each id's error."""
    from tasks.formats.rsna import patient_of, read_submission  # pandas: only when a bone-age CSV is scored

    gt = Path(gt)
    truth = read_submission(gt, answers=True)
    sub = read_submission(csv_path)
    extra = sorted(set(sub["id"]) - set(truth["id"]))
    if extra:
        raise FormatError(f"{csv_path}: id {extra[0]} is not in the answers {gt}")
    _check_coverage(csv_path, sorted(set(truth["id"]) - set(sub["id"])), f"ids of {gt}", subset)
    truth = truth[truth["id"].isin(set(sub["id"]))].reset_index(drop=True)
    pred = sub.set_index("id").loc[truth["id"], "boneage"].to_numpy()
    age = truth["boneage"].to_numpy()
    male = truth["male"].to_numpy(bool) if "male" in truth else _sex_for(gt, list(truth["id"]))
    result = age_metrics(pred, age, male, within=within,
                         baseline_age=None if baseline_age is None else baseline_months(baseline_age))
    err = {str(i): float(e) for i, e in zip(truth["id"], np.abs(pred - age))}
    result.update(_halves(err, patient_of), images=len(truth), metric="mae_months")
    if per_image:
        result["per_image"] = {i: {"score": err[str(i)], "pred": float(p), "age": float(a)}
                               for i, p, a in zip(truth["id"], pred, age)}
    return result


# Header of a submission → "module:function" scoring it as ``fn(csv_path, gt, images, **options) -> dict`` with
# keys score, public, private, per_item (+ anything else); its keyword-only options are the ones tools/score.py
# passes (--sdr, --subset, ...). Tasks register theirs here.
SCORERS: dict[str, str] = {
    "segmentation": "tasks.scoring:score_segmentation",
    "keypoints": "tasks.scoring:score_keypoints",
    "boneage": "tasks.scoring:score_boneage",
}


def score_submission(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
                     **options) -> dict:
    """Score any task's submission (dispatch on the CSV header). An option the task's scorer does not take
    (``sdr`` for a bone-age CSV) is a ValueError naming it as the command-line flag."""
    task = sniff_task(csv_path)
    if task not in SCORERS:
        raise FormatError(f"{csv_path}: looks like a {task} submission, but no {task} scorer is installed")
    module, fn = SCORERS[task].split(":")
    scorer = getattr(importlib.import_module(module), fn)
    takes = {n for n, p in inspect.signature(scorer).parameters.items() if p.kind is p.KEYWORD_ONLY}
    for name in options:
        if name not in takes:
            flags = ", ".join(f"--{t.replace('_', '-')}" for t in sorted(takes))
            raise ValueError(f"--{name.replace('_', '-')}: {csv_path} is a {task} submission, whose score takes "
                             f"{flags or 'no options'}")
    result = scorer(csv_path, gt, images, **options)
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
    "median_dx_px": "median error across the image (x), px", "median_dy_px": "median error down the image (y), px",
    "mae_months": "mean absolute error, months", "rmse": "root mean squared error, months",
    "mae_male": "MAE of the boys, months", "mae_female": "MAE of the girls, months",
    "pred_spread": "sd of the predictions / sd of the ages (0: a constant answer)",
    "baseline_mae": "MAE of answering the baseline age for every hand, months",
}
#: Per-item breakdown of each task: (what an item is, what its value is).
PER_ITEM = {"segmentation": ("class", "Dice"), "keypoints": ("landmark", "MRE px"), "boneage": ("age band", "MAE months")}


def describe(name: str) -> str:
    """What a metric key means (units are in the names)."""
    sdr = re.fullmatch(r"sdr_(.+?)(px|mm)", name)
    if sdr:
        return f"share of points within {sdr[1]} {sdr[2]}"
    within = re.fullmatch(r"within_(.+)m", name)
    if within:
        return f"share of ages within {within[1]} months"
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
    return lines + per_image_lines(result)


def _worst_text(worst: list[list]) -> str:
    return "worst: " + ", ".join(f"{name} {px:.1f} px" + (f" ({mm:.1f} mm)" if mm is not None else "")
                                 for name, px, mm in worst)


def per_image_lines(result: dict) -> list[str]:
    """One line an image of ``result["per_image"]`` (score.py --per-image): its score, then its other values
    (MRE mm; the predicted and true age) and, for keypoints, its worst landmarks."""
    rows = result.get("per_image") or {}
    if not rows:
        return []
    width = max(len("image"), *(len(str(k)) for k in rows))
    lines = ["", f"  {'image':<{width}}  {result.get('metric', 'score'):>9}"]
    for name, row in rows.items():
        cells = [f"{k} {_fmt(v)}" for k, v in row.items() if k not in ("score", "worst")]
        if row.get("worst"):
            cells.append(_worst_text(row["worst"]))
        lines.append(f"  {str(name):<{width}}  {_fmt(row['score']):>9}  {'  '.join(cells)}".rstrip())
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
