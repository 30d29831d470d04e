"""Local scoring of any task's submission, with a competition-style public/private split of the test images,
and what a score prints and stores. Each task scores its own CSVs (its spec's ``submission.score``).

No torch here, nor in anything it imports: ``tools/score.py`` and ``tools/validate_submission.py`` start in
a fraction of a second.
"""
from __future__ import annotations

import math
import os
import re

import numpy as np

from tasks.formats import FormatError
from tasks.formats.submissions import read_header
from tasks.spec import specs, task_names, task_of_header, task_spec

PUBLIC_SEED = 0


def public_private_split(names: list[str], seed: int = PUBLIC_SEED) -> tuple[set[str], set[str]]:
    """A fixed random half/half split of the sorted test names (public gets the extra one if odd)."""
    ordered = sorted(names)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    half = (len(ordered) + 1) // 2
    public = {ordered[i] for i in perm[:half]}
    return public, set(ordered) - public


def sniff_task(csv_path: str | os.PathLike) -> str:
    """Which task a submission belongs to, from its header (each task's spec knows its own layout)."""
    header = read_header(csv_path)
    task = task_of_header(header)
    if task is None:
        raise FormatError(f"{csv_path}: unrecognised submission header {header[:4]} (one of: "
                          + "; ".join(s.submission.columns for s in specs()) + ")")
    return task


def score_submission(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
                     **options) -> dict:
    """Score any task's submission with its task's scorer (the task is read from the CSV header)."""
    task = sniff_task(csv_path)
    result = task_spec(task).submission.scorer()(csv_path, gt, images, **options)
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
    "mae_female": "MAE of the girls, months", "accuracy": "share of correct labels",
    "rotation_acc": "share of correct quarter turns", "side_acc": "share of correct sides (two, left, right)",
}


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
        item, what = task_spec(result["task"]).per_item if result.get("task") in task_names() else ("item", "score")
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
