"""Keypoint ensembles: ``inference.py --ensemble configs/ensembles/kp_*.yaml`` and ``tools/fit_ensemble.py``.

Methods (every coordinate is ``(x, y)`` in ORIGINAL image pixels, so members of any input size fuse):

- ``mean`` / ``median``: the coordinate-wise mean / median of the members' decoded points.
- ``weighted``: the weighted mean, weights per member or per member per landmark (``weights``,
  ``class_weights`` keyed by landmark name, or ``fit``: fitted on validation predictions).
- ``hard``: a vote. For each image and landmark, member ``m``'s group is every member whose point lies
  within ``radius`` px (Euclidean, inclusive) of ``m``'s point, ``m`` included. The largest group wins
  (ties: the smaller sum of distances to its member, then the earlier member). When it has at least
  ``min_votes`` members (default: a strict majority) the result is the mean of its points, so an
  outlier member is ignored; otherwise the landmark falls back to the median of all members. The same
  vote fuses keypoint CSVs in ``tools/fuse.py`` (:func:`ensembles.hard.vote_points`).
- ``soft``: the mean of the members' activated heatmaps (each member under its TTA views), decoded once.
  Heatmaps average where they share a frame: members with the same input size and resize mode are
  averaged in heatmap space (resized to the first one's output size) and decoded; members at other
  input sizes form their own groups, and the groups' decoded points are fused by the mean weighted by
  their number of members (decode-then-fuse across frames). Needs the models: no ``--from-cache``.

The cache is each run's ``preds/<split>/keypoints.npz`` (:func:`engine.predict_keypoints.save_cache`).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.config import ConfigError
from engine.predict_keypoints import load_cache, predict_member, tta_heatmaps
from ensembles.config import EnsembleConfig
from ensembles.hard import resolve_min_votes, vote_points
from ensembles.registry import ENSEMBLE_FITTERS, ENSEMBLE_RUNNERS
from ensembles.runner import Member, record_ensemble, resolve_members
from ensembles.values import (ValueSource, describe_weights, ensemble_weights, fit_values, fuse_values,
                              member_predictions, timed_stats)
from ensembles.weighted import weighted_mean
from tasks.formats import FormatError
from tasks.keypoint_sets import LandmarkSet, get_set
from tasks.keypoints import KeypointTask, radial_errors, write_wide


def _read_cache(path: Path, member: Member) -> tuple[list[str], np.ndarray]:
    try:
        names, coords, _, _ = load_cache(path, member.cfgs[0].data.landmarks)
    except FormatError as err:
        raise FormatError(f"member {member.label}: {err}") from None
    return names, coords


def _predict(loaded, split: str, views, device) -> tuple[list[str], np.ndarray]:
    names, coords, _, _ = predict_member(loaded, split, views, device)
    return names, coords


SOURCE = ValueSource(cache_file="keypoints.npz", read_cache=_read_cache, predict=_predict)


def landmark_set(members: Sequence[Member]) -> LandmarkSet:
    """The members' common landmark set (an error names the members when they differ)."""
    sets = {m.label: c.data.landmarks for m in members for c in m.cfgs}
    if len(set(sets.values())) > 1:
        raise ConfigError(f"members predict different landmark sets: {sets}")
    return get_set(next(iter(sets.values())))


def fuse_points(preds: np.ndarray, method: str, weights: np.ndarray | None = None, *, radius: float | None = None,
                min_votes: int | None = None) -> np.ndarray:
    """``(M, N, K, 2)`` member coordinates → ``(N, K, 2)`` by ``mean``, ``median``, ``weighted`` (weights
    ``(M,)``, ``(M, 1)`` or ``(M, K)``) or ``hard`` (``radius``, ``min_votes``)."""
    if method == "hard":
        if radius is None:
            raise ValueError("hard keypoint vote needs a radius (px)")
        return vote_points(np.asarray(preds, np.float64), radius, min_votes)[0]
    return fuse_values(preds, method, weights, channel_axis=1)


def soft_fusion(ens: EnsembleConfig, members: Sequence[Member], split: str, tta: bool,
                device: str, progress: bool) -> tuple[list[str], np.ndarray]:
    """Names and ``(N, K, 2)`` points of the ``soft`` method (see the module docstring), models on the fly.

    A member with several fold runs contributes the mean of their heatmaps on the test set (each run
    weighs ``1 / runs`` of the member); on the validation set it has no single model per image, an error.
    """
    import torch

    from engine.predict_keypoints import split_dataset
    from engine.predictor import load_model
    from engine.device import pick_device
    from engine.tta import views_from_config

    if split == "val" and any(len(m.run_dirs) > 1 for m in members):
        raise ConfigError("soft: a member with several fold runs has no single model per validation image; "
                          "fuse validation coordinates (mean/median/weighted/hard) instead")
    dev = pick_device(device)
    entries = []  # (frame, run folder, checkpoint, config, task, views, weight)
    for m in members:
        for run, ckpt, cfg in zip(m.run_dirs, m.checkpoints, m.cfgs):
            entries.append(((cfg.data.image_size, cfg.data.resize), run, ckpt, cfg, KeypointTask(cfg),
                            views_from_config(ens.member_tta(cfg), enabled=tta), 1 / (len(members) * len(m.run_dirs))))
    names = [s.name for s in entries[0][4].samples(split)]
    for _, run, _, _, task, _, _ in entries[1:]:
        if [s.name for s in task.samples(split)] != names:
            raise FormatError(f"{run}: predicts other {split} images than {entries[0][1]} (different data or fold)")
    points, frame_weights = [], []
    for frame in dict.fromkeys(e[0] for e in entries):
        models = [(load_model(ckpt, dev, cfg), task, views, w)
                  for f, run, ckpt, cfg, task, views, w in entries if f == frame]
        total_w = sum(w for *_, w in models)

        @torch.no_grad()
        def fused(images: torch.Tensor, models=models, total_w=total_w) -> torch.Tensor:
            total = None
            for loaded, task, views, w in models:
                hm = tta_heatmaps(loaded.model, images, views, task.activate, task.lmset.flip_perm)
                if total is not None and hm.shape[-2:] != total.shape[-2:]:
                    hm = torch.nn.functional.interpolate(hm, size=total.shape[-2:], mode="bilinear",
                                                         align_corners=False)
                total = hm * w if total is None else total + hm * w
            return total / total_w

        loaded0, task0 = models[0][0], models[0][1]
        dataset = split_dataset(task0, split)
        coords, _, _ = task0.predict(loaded0.model, dataset, dev, None, loaded0.cfg.inference.batch_size,
                                     heatmap_fn=fused, progress=progress)
        points.append(coords)
        frame_weights.append(total_w)
    return names, weighted_mean(points, frame_weights)


def describe(ens: EnsembleConfig, members: Sequence[Member], weights: np.ndarray, lmset: LandmarkSet) -> dict:
    out: dict = {"method": ens.method, "members": [m.label for m in members],
                 "weights": describe_weights(weights, lmset.names)}
    if ens.method == "hard":
        out.update(min_votes=resolve_min_votes(ens.min_votes, len(members)), radius_px=ens.radius)
    return out


@ENSEMBLE_RUNNERS.register("keypoints")
def predict_ensemble(ens: EnsembleConfig, *, out_csv: str | Path, split: str = "test", tta: bool = False,
                     from_cache: bool = False, device: str = "auto", workers: int | None = None,
                     progress: bool = True) -> dict:
    """Write the ensemble's wide CSV (original pixels) and, on the test set, its run folder; returns stats.
    ``workers`` is accepted for the common interface (decoding is vectorised)."""
    members = resolve_members(ens)
    lmset = landmark_set(members)
    weights = ensemble_weights(ens, members, lmset.names)
    t0 = time.perf_counter()
    if ens.method == "soft":
        if from_cache:
            raise ConfigError(f"{ens.run_name}: method 'soft' averages heatmaps, the cache holds coordinates; "
                              "predict on the fly (no --from-cache) or use mean/median/weighted/hard")
        names, coords = soft_fusion(ens, members, split, tta, device, progress)
    else:
        names, preds = member_predictions(ens, members, split, SOURCE, from_cache=from_cache, tta=tta, device=device)
        coords = fuse_points(preds, ens.method, weights, radius=ens.radius, min_votes=ens.min_votes)
    write_wide(out_csv, names, coords, lmset)
    stats = timed_stats(len(names), t0, out_csv)
    if split == "test":
        record_ensemble(ens, members, describe(ens, members, weights, lmset), tta=tta, from_cache=from_cache,
                        images_per_s=stats["images_per_s"])
    return stats


@ENSEMBLE_FITTERS.register("keypoints")
def fit_ensemble(ens: EnsembleConfig, progress: bool = True) -> dict:
    """Fit member (or per-landmark) weights minimising the validation radial error (original pixels) on the
    members' ``preds/val/keypoints.npz``; writes fit.json and the run folder; returns the fit record."""
    members = resolve_members(ens)
    lmset = landmark_set(members)
    names, preds, truth = validation_points(ens, members)
    return fit_values(ens, members, preds, truth, radial_errors, groups=[lmset.patient_of(n) for n in names],
                      channels=lmset.names, metric="mre_px", describe=lambda w: describe(ens, members, w, lmset))


def validation_points(ens: EnsembleConfig, members: Sequence[Member]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Validation image names, the members' out-of-fold coordinates ``(M, N, K, 2)`` from their
    ``preds/val/keypoints.npz`` and the true coordinates ``(N, K, 2)`` (original pixels)."""
    names, preds = member_predictions(ens, members, "val", SOURCE, from_cache=True)
    truth = {s.name: s.coords for cfg in members[0].cfgs for s in KeypointTask(cfg).samples("val")}
    missing = [n for n in names if n not in truth]
    if missing:
        raise FormatError(f"member {members[0].label}: validation image {missing[0]} has no label")
    return names, preds, np.stack([truth[n] for n in names]).astype(np.float64)
