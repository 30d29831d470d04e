"""Fit ensemble weights (per member, optionally per class) and per-class thresholds on validation predictions.

Search. Weight vectors are candidates on the probability simplex: equal weights first, then every
member alone, then a grid of step ``grid_step`` (Dirichlet samples when the grid would exceed
``max_candidates``). Thresholds are a 0.01 grid. One streaming pass over the validation images
scores every candidate at every threshold for every class (per-image Dice from histograms of the
fused probability split by ground truth), so memory holds score tables, never the images, and the
search is exhaustive over the candidates (deterministic, no local optima). Dice of class ``c``
depends only on the weights and threshold of class ``c``, so per-class weights are the per-class
argmax of the same table. (An adaptive Optuna/scipy search would need a pass over the images per
trial and could not read per-class optima off one table; with 3-5 members the grid is small.)

Overfitting guard: cross-fitting. The validation images are split by patient into ``folds`` groups.
Each configuration — defaults (equal weights, configured thresholds), fitted thresholds, fitted
global weights, both, per-class weights, per-class weights + thresholds — is fitted on all groups
but one and scored on the held-out group; the configuration with the best held-out (cross-fitted)
score wins, ties going to the simpler one, and is then refitted on all images — provided its gain over
the defaults is larger than one standard error of that gain across the held-out groups (each group's
mean score with it minus without it); otherwise the defaults are kept and a note says why (Breiman's
one-standard-error rule, on paired gains). It keeps out a gain that one lucky group makes; it cannot keep out
a gain every group shares with the validation images but not with the test images (on the demo's 16 validation
hands, per-class thresholds won 0.006 held out in every group and lost 0.014 on the 20 test images). Ties inside
a fit go to the candidate nearest equal weights and the threshold nearest the configured one.

The same machinery fits weights of coordinates or ages (:func:`fit_weights`) for the keypoint and
bone-age tasks, minimising a per-sample error.
"""
from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ensembles.crossfit import patient_folds
from core.atomic import write_text

BINS = 100  # threshold resolution 1 / BINS
PENALTY = 1e-9  # tie-break toward equal weights / default thresholds; far below any real Dice difference


def simplex_grid(n_members: int, step: float) -> np.ndarray:
    """All weight vectors with entries in multiples of ``step`` summing to 1, ``(G, M)``."""
    k = round(1 / step)
    if abs(k * step - 1) > 1e-9:
        raise ValueError(f"grid_step must divide 1 (0.1, 0.125, 0.25, ...), got {step}")
    points = [c for c in itertools.product(range(k + 1), repeat=n_members - 1) if sum(c) <= k]
    return np.array([list(c) + [k - sum(c)] for c in points], np.float64) / k


def grid_size(n_members: int, step: float) -> int:
    from math import comb

    k = round(1 / step)
    return comb(k + n_members - 1, n_members - 1)


def candidate_weights(n_members: int, step: float = 0.1, max_candidates: int = 300, seed: int = 0) -> np.ndarray:
    """``(G, M)`` candidates: equal weights, each member alone, then the simplex grid (or Dirichlet samples)."""
    base = [np.full(n_members, 1 / n_members)] + list(np.eye(n_members))
    if n_members == 1:
        return np.ones((1, 1))
    if grid_size(n_members, step) <= max_candidates:
        extra = simplex_grid(n_members, step)
    else:
        extra = np.random.default_rng(seed).dirichlet(np.ones(n_members), size=max(0, max_candidates - len(base)))
    out = []
    for w in base + list(extra):
        if not any(np.allclose(w, o) for o in out):
            out.append(w)
    return np.array(out[:max(max_candidates, len(base))])


@dataclass
class ScoreTable:
    """Summed per-item scores ``S[g, f, c, t]`` (candidate, fold, channel, threshold) and items per fold."""

    sums: np.ndarray
    counts: np.ndarray
    candidates: np.ndarray  # (G, M) weight vectors, or (G, M, C) weight tables
    thresholds: np.ndarray  # (T,) threshold values (a single NaN when nothing is thresholded)
    default_t: np.ndarray  # (C,) index into thresholds of each channel's configured threshold

    def penalised(self, sums: np.ndarray) -> np.ndarray:
        """``sums`` (G, C, T) minus tiny tie-breaking penalties (distance to equal weights, to the default t)."""
        equal = 1 / self.candidates.shape[1]
        dist_w = np.abs(self.candidates - equal).reshape(len(self.candidates), -1).sum(1)
        t_idx = np.arange(len(self.thresholds))
        dist_t = np.abs(t_idx[None, :] - self.default_t[:, None]) / max(1, len(self.thresholds))
        return sums - PENALTY * (dist_w[:, None, None] + dist_t[None])


CONFIGS = ("defaults", "thresholds", "weights", "weights+thresholds", "class_weights", "class_weights+thresholds")


def solve(table: ScoreTable, sums: np.ndarray, config: str) -> tuple[np.ndarray, np.ndarray]:
    """Candidate index and threshold index per channel, ``(C,)`` each, of ``config`` fitted on ``sums`` (G, C, T)."""
    n_c = sums.shape[1]
    s = table.penalised(sums)
    t0 = table.default_t
    channels = np.arange(n_c)
    at_default = s[:, channels, t0]  # (G, C)
    if config == "defaults":
        return np.zeros(n_c, np.int64), t0.copy()
    if config == "thresholds":
        return np.zeros(n_c, np.int64), s[0].argmax(-1)
    if config == "weights":
        return np.full(n_c, at_default.sum(1).argmax()), t0.copy()
    if config == "weights+thresholds":
        g = s.max(-1).sum(1).argmax()
        return np.full(n_c, g), s[g].argmax(-1)
    if config == "class_weights":
        return at_default.argmax(0), t0.copy()
    if config == "class_weights+thresholds":
        flat = s.transpose(1, 0, 2).reshape(n_c, -1).argmax(-1)
        return flat // s.shape[2], flat % s.shape[2]
    raise ValueError(f"unknown fit configuration {config!r}; valid: {', '.join(CONFIGS)}")


def held_out(table: ScoreTable, sums: np.ndarray, g: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-channel summed scores of the choice ``(g, t)`` in ``sums`` (G, C, T)."""
    return sums[g, np.arange(sums.shape[1]), t]


@dataclass
class FitResult:
    """Chosen configuration, fitted weights ``(M, C)`` and thresholds ``(C,)``, and the scores behind the choice."""

    config: str
    weights: np.ndarray
    thresholds: np.ndarray
    before: float
    after: float
    cross_fitted: dict[str, float]
    per_channel_cv: np.ndarray
    n_items: int
    n_folds: int
    guard: str = "cross-fitting"
    notes: list[str] = field(default_factory=list)


def gain_error(scores: Sequence[float], baseline: Sequence[float]) -> float:
    """The standard error of the mean paired gain ``scores - baseline`` over held-out groups (sample standard
    deviation over the square root of their number); infinite with fewer than two groups."""
    gains = np.asarray(scores, np.float64) - np.asarray(baseline, np.float64)
    return float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else float("inf")


def select(table: ScoreTable, configs: Sequence[str], mode: str = "max") -> FitResult:
    """Cross-fit each configuration, keep the best held-out one (ties: the earlier, simpler), refit on all."""
    sign = 1.0 if mode == "max" else -1.0
    sums_all = table.sums.sum(1)
    n = int(table.counts.sum())
    n_folds = int((table.counts > 0).sum())
    n_c = table.sums.shape[2]
    cv: dict[str, float] = {}
    per_channel: dict[str, np.ndarray] = {}
    per_group: dict[str, list[float]] = {}   # each held-out group's mean score per item and channel
    notes = []
    if n_folds < 2:
        notes.append(f"only {n_folds} patient group(s) in the validation set: cannot cross-fit, defaults kept")
        configs = configs[:1]
    for config in configs:
        total = np.zeros(n_c)
        per_group[config] = []
        for f in range(table.sums.shape[1]):
            if table.counts[f] == 0:
                continue
            train = sign * (sums_all - table.sums[:, f]) if n_folds > 1 else sign * sums_all
            g, t = solve(table, train, config)
            scores = held_out(table, table.sums[:, f], g, t)
            total += scores
            per_group[config].append(float(scores.sum() / (table.counts[f] * n_c)))
        cv[config] = float(total.sum() / (n * n_c))
        per_channel[config] = total / n
    best = configs[0]
    for config in configs[1:]:
        if sign * cv[config] > sign * cv[best] + 1e-12:
            best = config
    if best != configs[0]:
        error = gain_error(per_group[best], per_group[configs[0]])
        if sign * (cv[best] - cv[configs[0]]) <= error:
            notes.append(f"{best} won held out by {abs(cv[best] - cv[configs[0]]):.4f}, within one standard error "
                         f"of its gain across the {len(per_group[best])} held-out groups ({error:.4f}): "
                         f"{configs[0]} kept")
            best = configs[0]
    g, t = solve(table, sign * sums_all, best)
    g0, t00 = solve(table, sign * sums_all, "defaults")
    cand = table.candidates if table.candidates.ndim == 3 else table.candidates[:, :, None]
    columns = np.arange(n_c) if cand.shape[2] == n_c else np.zeros(n_c, np.int64)
    return FitResult(
        config=best, weights=cand[g, :, columns].T.copy(),
        thresholds=table.thresholds[t].astype(np.float64),
        before=float(held_out(table, sums_all, g0, t00).sum() / (n * n_c)),
        after=float(held_out(table, sums_all, g, t).sum() / (n * n_c)),
        cross_fitted=cv, per_channel_cv=per_channel[best], n_items=n, n_folds=n_folds, notes=notes)


class DiceTable:
    """Streams validation images into a :class:`ScoreTable` of per-image Dice (segmentation / heatmaps).

    ``add(maps, gt, fold)``: ``maps`` float32 ``(M, C, P)`` member probabilities at the fit size
    (``P`` pixels), ``gt`` bool ``(C, P)``. Dice per class per image, empty/empty = 1.
    """

    def __init__(self, candidates: np.ndarray, n_channels: int, n_folds: int, default_thresholds: np.ndarray,
                 threshold_range: tuple[float, float] = (0.05, 0.95), chunk_elements: int = 1 << 22) -> None:
        lo, hi = (int(round(v * BINS)) for v in threshold_range)
        default_idx = np.clip(np.rint(np.asarray(default_thresholds, np.float64) * BINS).astype(np.int64), 1, BINS - 1)
        grid = np.array(sorted(set(range(max(1, lo), min(BINS - 1, hi) + 1)) | set(default_idx.tolist())), np.int64)
        self.grid = grid
        self.candidates = np.asarray(candidates, np.float32)
        if self.candidates.ndim == 3 and self.candidates.shape[2] not in (1, n_channels):
            raise ValueError(f"weight tables of shape {self.candidates.shape[1:]} for {n_channels} channels")
        self.sums = np.zeros((len(candidates), n_folds, n_channels, len(grid)), np.float64)
        self.counts = np.zeros(n_folds, np.int64)
        self.default_t = np.searchsorted(grid, default_idx)
        self.chunk_elements = chunk_elements

    def add(self, maps: np.ndarray, gt: np.ndarray, fold: int) -> None:
        n_m, n_c, n_p = maps.shape
        if gt.shape != (n_c, n_p) or n_m != self.candidates.shape[1]:
            raise ValueError(f"maps {maps.shape} and ground truth {gt.shape} do not match "
                             f"({self.candidates.shape[1]} members)")
        positives = gt.sum(1).astype(np.float64)  # (C,)
        step = max(1, self.chunk_elements // (n_c * n_p))
        flat = maps.reshape(n_m, -1)
        for start in range(0, len(self.candidates), step):
            w = self.candidates[start:start + step]
            g = len(w)
            if w.ndim == 3 and w.shape[2] > 1:
                fused = np.einsum("gmc,mcp->gcp", w, maps, optimize=True)
            else:
                fused = (w.reshape(g, n_m) @ flat).reshape(g, n_c, n_p)
            bins = np.ceil(fused * BINS).astype(np.int64)
            np.clip(bins, 0, BINS, out=bins)
            bins += (np.arange(g * n_c, dtype=np.int64) * (BINS + 1)).reshape(g, n_c, 1)
            size = g * n_c * (BINS + 1)
            every = np.bincount(bins.ravel(), minlength=size).reshape(g, n_c, BINS + 1)
            fg = np.bincount(bins[:, gt].ravel(), minlength=size).reshape(g, n_c, BINS + 1)
            # pixels predicted at threshold j / BINS: fused > j / BINS  <=>  bin >= j + 1
            above = np.cumsum(every[..., ::-1], -1)[..., ::-1][..., self.grid + 1]
            tp = np.cumsum(fg[..., ::-1], -1)[..., ::-1][..., self.grid + 1]
            denom = above + positives[None, :, None]
            dice = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
            self.sums[start:start + g, fold] += dice
        self.counts[fold] += 1

    def table(self) -> ScoreTable:
        return ScoreTable(self.sums, self.counts, self.candidates.astype(np.float64), self.grid / BINS, self.default_t)


def fit_maps(items: Iterable[tuple[np.ndarray, np.ndarray, str]], n_members: int, n_channels: int, *,
             method: str = "weighted", search_weights: bool = True, per_class: bool = True, fit_thresholds: bool = True,
             default_thresholds: np.ndarray | float = 0.5, folds: int = 5, grid_step: float = 0.1,
             max_candidates: int = 300, threshold_range: tuple[float, float] = (0.05, 0.95), seed: int = 0,
             groups: Sequence[str] | None = None, fixed_weights: np.ndarray | None = None) -> FitResult:
    """Fit on validation items ``(maps (M, C, P) float32, gt (C, P) bool, group)`` (group: the patient).

    ``groups`` (the group of every item, in order) must be given up front so items can be streamed
    into their cross-fitting fold; ``method="soft"`` fits thresholds only. ``fixed_weights`` (``(M, C)``,
    normalised) are the weights thresholds are fitted for when the weights themselves are not fitted.
    """
    if groups is None:
        raise ValueError("fit_maps needs the groups (patients) of all items to assign cross-fitting folds")
    fold_of = patient_folds(groups, folds, seed)
    fit_w = search_weights and method == "weighted" and n_members > 1
    if fit_w:
        candidates = candidate_weights(n_members, grid_step, max_candidates, seed)
    elif fixed_weights is not None:
        candidates = np.asarray(fixed_weights, np.float64).reshape(1, n_members, -1)
    else:
        candidates = np.full((1, n_members), 1 / n_members)
    defaults = np.broadcast_to(np.asarray(default_thresholds, np.float64), (n_channels,))
    acc = DiceTable(candidates, n_channels, int(fold_of.max()) + 1 if len(fold_of) else 1, defaults, threshold_range)
    n = 0
    for k, (maps, gt, _group) in enumerate(items):
        acc.add(maps, gt, int(fold_of[k]))
        n += 1
    if n != len(groups):
        raise ValueError(f"fit_maps: {n} items for {len(groups)} groups")
    if n == 0:
        raise ValueError("no validation images to fit on")
    configs = ["defaults"]
    if fit_thresholds:
        configs.append("thresholds")
    if fit_w:
        configs.append("weights")
        if fit_thresholds:
            configs.append("weights+thresholds")
        if per_class:
            configs.append("class_weights")
            if fit_thresholds:
                configs.append("class_weights+thresholds")
    return select(acc.table(), configs)


def fit_weights(preds: np.ndarray, target: np.ndarray, error: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                groups: Sequence[str] | None = None, per_channel: bool = False, folds: int = 5, grid_step: float = 0.1,
                max_candidates: int = 300, seed: int = 0) -> FitResult:
    """Weights minimising a per-sample error of the weighted mean (keypoint coordinates, ages), cross-fitted.

    ``preds``: ``(M, N, ...)`` member predictions of ``N`` samples; ``target``: ``(N, ...)``;
    ``error(fused, target)`` returns ``(N,)`` or, with ``per_channel``, ``(N, C)`` errors (e.g. the
    radial error per keypoint). ``groups``: patient of each sample (default: each its own). The
    result's ``weights`` are ``(M, C)`` (``C = 1`` when global); ``before``/``after`` are mean errors.
    """
    preds = np.asarray(preds, np.float64)
    target = np.asarray(target, np.float64)
    n_m, n = preds.shape[:2]
    if target.shape[0] != n:
        raise ValueError(f"fit_weights: {n} predictions per member but {target.shape[0]} targets")
    if not np.isfinite(preds).all() or not np.isfinite(target).all():
        raise ValueError("fit_weights: NaN or infinite values in the predictions or targets")
    groups = list(groups) if groups is not None else [str(i) for i in range(n)]
    fold_of = patient_folds(groups, folds, seed)
    candidates = candidate_weights(n_m, grid_step, max_candidates, seed)
    first = np.asarray(error(preds[0], target))
    n_c = first.shape[1] if per_channel and first.ndim == 2 else 1
    sums = np.zeros((len(candidates), int(fold_of.max()) + 1, n_c, 1))
    for gi, w in enumerate(candidates):
        fused = np.tensordot(w, preds, axes=(0, 0))
        err = np.asarray(error(fused, target), np.float64).reshape(n, -1)
        err = err if n_c > 1 else err.mean(1, keepdims=True)
        for f in range(sums.shape[1]):
            sums[gi, f, :, 0] = err[fold_of == f].sum(0)
    counts = np.bincount(fold_of, minlength=sums.shape[1])
    table = ScoreTable(sums, counts, candidates, np.array([np.nan]), np.zeros(n_c, np.int64))
    configs = ["defaults", "weights"] + (["class_weights"] if n_c > 1 else [])
    return select(table, configs, mode="min")


def fit_to_dict(result: FitResult, members: Sequence[str], classes: Sequence[str], **extra) -> dict:
    """JSON-ready record of a fit (what fit.json and the summary hold)."""
    thresholds = result.thresholds
    return {
        "members": list(members), "classes": list(classes), "config": result.config, "guard": result.guard,
        "weights": np.round(result.weights, 6).tolist(),
        "thresholds": [round(float(t), 4) for t in thresholds] if np.isfinite(thresholds).all() else None,
        "before": round(result.before, 6), "after": round(result.after, 6),
        "cross_fitted": {k: round(v, 6) for k, v in result.cross_fitted.items()},
        "images": result.n_items, "folds": result.n_folds, "notes": result.notes,
        "val": {"score": round(result.cross_fitted[result.config], 6), "in_sample": round(result.after, 6),
                "before": round(result.before, 6),
                "per_item": {c: round(float(v), 6) for c, v in zip(classes, result.per_channel_cv)}},
        **extra,
    }


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Atomic JSON write."""
    write_text(path, json.dumps(data, indent=2))


def _resize_to(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    from ensembles.soft import as_probability

    prob = as_probability(prob)
    if prob.shape == size:
        return prob
    interp = cv2.INTER_AREA if prob.shape[0] * prob.shape[1] > size[0] * size[1] else cv2.INTER_LINEAR
    return cv2.resize(prob, (size[1], size[0]), interpolation=interp)


def validation_items(members, samples, fit_size: int | None) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
    """``(maps (M, C, P), gt (C, P), patient)`` per validation image, from the members' ``preds/val`` caches.

    Maps and masks are brought to the image's original size, where inference thresholds and the competition
    scores them, capped at ``fit_size`` on the long side. Not the cache's size: thresholds fitted on the demo's
    128 px caches against masks shrunk to 128 px came out mostly at 0.22-0.45 and lost 0.011 test Dice (3
    seeds) once applied to the maps upsampled to 256 px; fitted at 256 px they came out at 0.30-0.57.
    """
    from ensembles.runner import member_maps_from_cache

    side = members[0].cfgs[0].spec.ensemble_side()
    for s in samples:
        maps, (height, width) = member_maps_from_cache(members, s.name, "val")
        h, w = height, width
        if fit_size and max(h, w) > fit_size:
            scale = fit_size / max(h, w)
            h, w = max(1, round(h * scale)), max(1, round(w * scale))
        stack = np.stack([np.stack([_resize_to(m[c], (h, w)) for c in range(m.shape[0])]) for m in maps])
        masks = side.truth(s, (height, width))
        gt = np.stack([_resize_to(m.astype(np.float32), (h, w)) >= 0.5 for m in masks])
        yield stack.reshape(len(maps), stack.shape[1], -1), gt.reshape(gt.shape[0], -1), side.group(s)


def fit_ensemble(ens, progress: bool = True) -> dict:
    """Fit the maps ensemble ``ens`` (weights per member or class, thresholds, post-processing) on its members'
    validation caches; write ``fit.json`` and the run's summary. Returns the fit record (:func:`fit_to_dict`).
    """
    from tqdm import tqdm

    from ensembles.config import threshold_vector, weight_table
    from ensembles.members import resolve_members, write_ensemble_summary
    from ensembles.runner import Fuser, check_cache, ensemble_samples, warn_tta_mismatch
    from ensembles.weighted import normalize_weights

    classes = ens.spec.classes
    side = ens.spec.ensemble_side()
    if ens.method == "hard":
        raise ValueError(f"{ens.run_name}: method 'hard' has nothing to fit (each member keeps its thresholds; "
                         f"choose min_votes); use soft or weighted")
    members = resolve_members(ens, need_models=False)
    samples = ensemble_samples(ens, members, "val")
    missing = [s.name for s in samples if s.label_path is None]
    if missing:
        raise ValueError(f"{ens.run_name}: validation image {missing[0]} has no label file")
    check_cache(members, samples, "val")
    warn_tta_mismatch(members)
    labels = [m.label for m in members]
    defaults = np.full(len(classes), 0.5) if ens.thresholds == "fit" else \
        threshold_vector(ens, classes).astype(np.float64)
    search_weights = ens.method == "weighted" and ens.weights == "fit"
    fixed = None
    if ens.method == "weighted" and not search_weights:
        fixed = normalize_weights(weight_table(ens, classes), len(members), len(classes), members=labels,
                                  channels=classes, where=f"{ens.run_name}: weights")
        fixed = np.broadcast_to(fixed, (len(members), len(classes)))
    items = validation_items(members, tqdm(samples, desc="fit", disable=not progress, dynamic_ncols=True),
                             ens.fit.fit_size)
    result = fit_maps(items, len(members), len(classes), method=ens.method, search_weights=search_weights,
                      per_class=ens.fit.per_class, fit_thresholds=ens.thresholds == "fit",
                      default_thresholds=defaults, folds=ens.fit.folds, grid_step=ens.fit.grid_step,
                      max_candidates=ens.fit.max_candidates, threshold_range=ens.fit.threshold_range,
                      seed=ens.fit.seed, groups=[side.group(s) for s in samples], fixed_weights=fixed)
    record = fit_to_dict(result, labels, classes, fit_size=ens.fit.fit_size,
                         weights_fitted=bool(search_weights), thresholds_fitted=ens.thresholds == "fit")
    write_json(ens.fit_path, record)
    if ens.postprocess == "fit":  # on the masks the fitted weights and thresholds give (read back from fit.json)
        record.update(fit_ensemble_postprocess(ens, members, samples, progress).to_dict())
        write_json(ens.fit_path, record)
    write_ensemble_summary(ens, members, Fuser(ens, members).describe(), val=record["val"])
    return record


def fit_ensemble_postprocess(ens, members, samples, progress: bool = True):
    """Per-class post-processing (:mod:`ensembles.postprocess`) of the ensemble's validation masks at the
    original size, fused as inference fuses them (cache → weights → resize → thresholds)."""
    from tqdm import tqdm

    from ensembles.postprocess import fit_postprocess
    from ensembles.runner import Fuser, member_maps_from_cache

    side, classes = ens.spec.ensemble_side(), ens.spec.classes
    fuser = Fuser(ens, members, postprocess={})

    def items():
        for s in tqdm(samples, desc="fit post-processing", disable=not progress, dynamic_ncols=True):
            maps, size = member_maps_from_cache(members, s.name, "val")
            row_max = [m.max(axis=2) for m in maps]
            crops = [fuser.fuse_mask(maps, c, size, row_max) for c in range(len(classes))]
            yield crops, side.truth(s, size).astype(bool), side.group(s)

    return fit_postprocess(items(), classes, folds=ens.fit.folds, seed=ens.fit.seed)

