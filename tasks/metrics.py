"""Metrics on numpy arrays, without torch: the trainer's validation and the local scorer share them.

Segmentation: Dice per class (empty/empty = 1). Keypoints: radial error, MRE and SDR, median error along
each axis. Bone age: MAE, RMSE, share within N months, MAE by sex and by age band, spread of the
predictions, MAE of a constant answer.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Age bands (years) of the per-item breakdown; the upper edge of the last band is inclusive.
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("0-5 y", 0, 60), ("5-10 y", 60, 120), ("10-13 y", 120, 156), ("13-16 y", 156, 192), ("16-19 y", 192, 241))


def dice_per_class(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Dice per class for ``(C, H, W)`` binary masks (or ``(N, C, H, W)``); empty/empty = 1. Any nonzero
    value counts as foreground; one class at a time, so no full-size temporary of every class exists."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}")
    if pred.ndim < 2:
        raise ValueError(f"masks need at least 2 dimensions (H, W), got shape {pred.shape}")
    lead = pred.shape[:-2]
    flat_pred = pred.reshape(-1, *pred.shape[-2:])
    flat_target = target.reshape(-1, *target.shape[-2:])
    dice = np.ones(len(flat_pred), np.float64)
    for i, (p, t) in enumerate(zip(flat_pred, flat_target)):
        p, t = p.astype(bool, copy=False), t.astype(bool, copy=False)
        total = np.count_nonzero(p) + np.count_nonzero(t)
        if total:
            dice[i] = 2.0 * np.count_nonzero(p & t) / total
    return dice.reshape(lead)


def radial_errors(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Euclidean error of every point: ``(N, K, 2)`` x2 → ``(N, K)``."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"predicted coordinates {pred.shape} != true coordinates {true.shape}")
    return np.linalg.norm(pred - true, axis=-1)


def sdr(errors: np.ndarray, radius: float) -> float:
    """Successful detection rate: the fraction of points within ``radius`` (inclusive)."""
    return float((np.asarray(errors) <= radius).mean())


def _radius_key(radius: float, unit: str) -> str:
    return f"sdr_{radius:g}{unit}"


def keypoint_metrics(pred: np.ndarray, true: np.ndarray, names: Sequence[str], spacing_mm: Sequence[float | None] | None,
                     radii_px: Sequence[float], radii_mm: Sequence[float]) -> dict:
    """MRE and SD of the radial error and SDR at each radius, in px and, when every image has a spacing,
    in mm; per-landmark MRE (px, and mm). The radii are the caller's (default: the landmark set's,
    ``tasks.keypoint_sets``).

    ``score`` is the MRE in pixels of the original images (lower is better). SD is the population
    standard deviation (ddof 0) of all the points' radial errors.
    """
    err = radial_errors(pred, true)
    out: dict = {"score": float(err.mean()), "mre_px": float(err.mean()), "sd_px": float(err.std())}
    for r in radii_px:
        out[_radius_key(r, "px")] = sdr(err, r)
    out["per_item"] = {n: float(v) for n, v in zip(names, err.mean(0))}
    if spacing_mm is not None and len(spacing_mm) and all(s is not None for s in spacing_mm):
        err_mm = err * np.asarray(spacing_mm, np.float64)[:, None]
        out["mre_mm"] = float(err_mm.mean())
        out["sd_mm"] = float(err_mm.std())
        for r in radii_mm:
            out[_radius_key(r, "mm")] = sdr(err_mm, r)
        out["per_item_mm"] = {n: float(v) for n, v in zip(names, err_mm.mean(0))}
    return out


def axis_errors(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Median absolute error along x (across the image) and along y (down it), px: where a detector that
    finds the right column slides along it (a spine's corners on the neighbouring vertebra) shows."""
    diff = np.abs(np.asarray(pred, np.float64) - np.asarray(true, np.float64))
    return {"median_dx_px": float(np.median(diff[..., 0])), "median_dy_px": float(np.median(diff[..., 1]))}


#: Default ``within`` thresholds of the bone-age scores, months.
WITHIN_MONTHS: tuple[float, ...] = (12.0,)


def within_key(months: float) -> str:
    """``within_12m``: the share of ages predicted within 12 months."""
    return f"within_{months:g}m"


def age_metrics(pred: np.ndarray, age: np.ndarray, male: np.ndarray | None = None,
                within: Sequence[float] = WITHIN_MONTHS, baseline_age: float | None = None) -> dict:
    """MAE (``score``), RMSE, the share within each of ``within`` months, MAE by sex and per age band
    (``per_item``), months. ``pred_spread``: sd of the predictions over sd of the ages (0: a constant
    answer; NaN when the ages do not vary). ``baseline_mae`` (with ``baseline_age``): the MAE of answering
    ``baseline_age`` for every hand, the bar a model must clear."""
    pred = np.asarray(pred, np.float64).reshape(-1)
    age = np.asarray(age, np.float64).reshape(-1)
    if pred.shape != age.shape or pred.size == 0:
        raise ValueError(f"age_metrics: {pred.size} predictions for {age.size} ages")
    if not (np.isfinite(pred).all() and np.isfinite(age).all()):
        raise ValueError("age_metrics: NaN or infinite predictions or ages")
    err = np.abs(pred - age)
    out = {"score": float(err.mean()), "rmse": float(np.sqrt(np.mean((pred - age) ** 2)))}
    out.update({within_key(m): float(np.mean(err <= m)) for m in within})
    out["pred_spread"] = float(pred.std() / age.std()) if age.std() > 0 else float("nan")
    if baseline_age is not None:
        out["baseline_mae"] = float(np.abs(age - baseline_age).mean())
    if male is not None:
        male = np.asarray(male, bool).reshape(-1)
        out["mae_male"] = float(err[male].mean()) if male.any() else float("nan")
        out["mae_female"] = float(err[~male].mean()) if (~male).any() else float("nan")
    out["per_item"] = {name: float(err[(age >= lo) & (age < hi)].mean())
                       for name, lo, hi in AGE_BANDS if ((age >= lo) & (age < hi)).any()}
    return out
