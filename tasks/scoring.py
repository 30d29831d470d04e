"""Local scoring of any task's submission, with a competition-style public/private split of the test images by
patient, and what a score prints and stores. Each task scores its own CSVs (its spec's ``submission.score``).

No torch here, nor in anything it imports: ``tools/score.py`` and ``tools/validate_submission.py`` start in
a fraction of a second.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import os
import re
from collections.abc import Callable, Sequence

import numpy as np

from tasks.formats import FormatError
from tasks.formats.tables import first_row
from tasks.spec import specs, task_names, task_of_header, task_spec


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


def halves(values: dict[str, float], patient_of: Callable[[str], str]) -> dict[str, float]:
    """``public`` and ``private``: the mean of ``values`` (one per image) over each half (NaN for an empty half)."""
    public, private = public_private_split(list(values), patient_of)

    def mean(names: set[str]) -> float:
        return float(np.mean([values[n] for n in names])) if names else math.nan

    return {"public": mean(public), "private": mean(private)}


def check_coverage(csv_path: str | os.PathLike, missing: Sequence[str], what: str, subset: bool) -> None:
    """Every ground-truth item needs a prediction, unless ``subset`` (a validation fold's CSV)."""
    if missing and not subset:
        raise FormatError(f"{csv_path}: {len(missing)} {what} have no prediction, e.g. {sorted(missing)[0]} "
                          "(--subset scores only the images the CSV has, e.g. a validation fold)")


def sniff_task(csv_path: str | os.PathLike) -> str:
    """Which task a submission belongs to, from its header (each task's spec knows its own layout)."""
    header = first_row(csv_path, "submission")
    task = task_of_header(header)
    if task is None:
        raise FormatError(f"{csv_path}: unrecognised submission header {header[:4]} (one of: "
                          + "; ".join(s.submission.columns for s in specs()) + ")")
    return task


def score_submission(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
                     **options) -> dict:
    """Score any task's submission with its task's scorer (the task is read from the CSV header; its keyword-only
    options are the ones tools/score.py passes: --sdr, --subset, ...). An option the task's scorer does not take
    (``sdr`` for a bone-age CSV) is a ValueError naming it as the command-line flag."""
    task = sniff_task(csv_path)
    scorer = task_spec(task).submission.scorer()
    takes = {n for n, p in inspect.signature(scorer).parameters.items() if p.kind is p.KEYWORD_ONLY}
    for name in options:
        if name not in takes:
            flags = ", ".join(f"--{t.replace('_', '-')}" for t in sorted(takes))
            raise ValueError(f"--{name.replace('_', '-')}: {csv_path} is a {task} submission, whose score takes "
                             f"{flags or 'no options'}")
    result = scorer(csv_path, gt, images, **options)
    result.setdefault("task", task)
    return result


def validate_submission(csv_path: str | os.PathLike, images: str | os.PathLike,
                        reference: str | os.PathLike | None = None) -> tuple[str, int]:
    """Check a submission of any task against the test images before it is uploaded: ``(task, images)``.

    A task with its own validator (segmentation: 29 rows per image, RLE bounds) uses it; otherwise the CSV is
    read with the task's reader (layout, numbers, duplicate ids) and must name every test image once and no
    other: those of ``images`` (or of its ``images/`` folder), by file stem, or, given ``reference`` (another
    CSV of the same test set, e.g. a member run's own test predictions, where the test images are a split of
    a folder that also holds training images), the ids ``reference`` names. Faults are :class:`FormatError`.
    """
    from pathlib import Path

    from tasks.formats.images import IMAGE_SUFFIXES

    task = sniff_task(csv_path)
    spec = task_spec(task)
    validator = spec.submission.validator()
    if validator is not None:
        return task, validator(csv_path, images)
    read = spec.ensemble_side().read_submission
    ids, _, _ = read(csv_path)
    folder = Path(images) / "images" if (Path(images) / "images").is_dir() else Path(images)
    if reference is not None:
        expected, where = set(read(reference)[0]), f"{reference} (the test set)"
    else:
        expected, where = {p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}, str(folder)
    have = {Path(i).stem if Path(i).suffix.lower() in IMAGE_SUFFIXES else i for i in ids}
    expected = {Path(i).stem if Path(i).suffix.lower() in IMAGE_SUFFIXES else i for i in expected}
    extra, missing = sorted(have - expected), sorted(expected - have)
    if extra:
        raise FormatError(f"{csv_path}: {len(extra)} rows name no image of {where}, e.g. {extra[0]}")
    if missing:
        raise FormatError(f"{csv_path}: {len(missing)} images of {where} have no row, e.g. {missing[0]}")
    return task, len(ids)


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
    "accuracy": "share of correct labels", "rotation_acc": "share of correct quarter turns",
    "side_acc": "share of correct sides (two, left, right)",
}


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
        item, what = task_spec(result["task"]).per_item if result.get("task") in task_names() else ("item", "score")
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
