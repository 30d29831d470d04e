"""Ensembles of tasks whose prediction of an image is an array of values — keypoint coordinates ``(K, 2)``, a bone
age ``()``, class probabilities ``(C,)`` — end to end: ``inference.py --ensemble`` and ``tools/fit_ensemble.py``.

The task's ensemble side (``tasks/<task>/ensemble.py``, ``output = "values"``) says how a run's cache is read
(``read_cache``), which channels weights may name (``channels``: landmarks, classes), the truth and per-item
error of the validation images (``truth``, ``errors``), the patient of an image (``group``) and how fused values
are written (``write``). Methods (every value in the original image's frame, so members of any input size fuse):

- ``mean`` / ``median``: the value-wise mean / median of the members' predictions;
- ``weighted``: the weighted mean, weights per member or per member per channel (``weights``, ``class_weights``
  keyed by channel name, or ``fit``: fitted on validation predictions, cross-fitted over patients);
- ``hard`` (tasks with a ``radius_unit``): a vote per point — the largest group of members within ``radius`` of
  one of them wins and gives its mean when it has ``min_votes`` members (default: a strict majority), else the
  median (:func:`ensembles.hard.vote_points`);
- ``soft``: the members' activated outputs (heatmaps, probabilities) averaged before decoding, models on the
  fly. Outputs average where they share a frame (``Task.frame``: input size, resize mode); members of other
  frames form their own groups, whose decoded values are fused by the mean weighted by their members.

A member's predictions come from each of its runs, on the fly (the run's model under its TTA views,
:meth:`EnsembleConfig.member_tta`, through the one predictor) or from the run's prediction cache
(``<run>/preds/<split>/<cache_file>``, written by ``inference.py --ckpt <run>/best.pt --split <split>
--save-probs``). A member with several fold runs predicts the test set as the mean of its runs and the
validation set out of fold. Members are aligned by image name: on the test set every member must predict the
same images; on the validation set the images they all have are used (a warning gives the counts when they
differ). From caches nothing here imports torch.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import ConfigError
from ensembles.config import EnsembleConfig, weight_table
from ensembles.fit import fit_to_dict, fit_weights, write_json
from ensembles.hard import resolve_min_votes, vote_points
from ensembles.members import Member, record_ensemble, resolve_members, timed_stats, write_ensemble_summary
from ensembles.weighted import normalize_weights, weighted_mean, weighted_median
from tasks.formats import FormatError

Predictions = tuple[list[str], np.ndarray]  # image names and their values (N, ...)


def run_predictions(ens: EnsembleConfig, members: Sequence[Member], split: str, *, from_cache: bool, tta: bool,
                    device: str) -> list[list[Predictions]]:
    """Per member, per run: the run's predictions of ``split`` (from its cache, or its model on the fly); of the
    validation split, only the runs that hold one (:meth:`Member.validation_runs`)."""
    side = ens.spec.ensemble_side()
    chosen = [range(len(m.run_dirs)) if split == "test" else m.validation_runs() for m in members]
    if from_cache:
        if tta:
            raise ConfigError("--tta with --from-cache: the cache holds what the members predicted (with or without "
                              "TTA); re-run the members with --tta --save-probs instead")
        out = []
        for m, indices in zip(members, chosen):
            runs = []
            for run, cfg in ((m.run_dirs[r], m.cfgs[r]) for r in indices):
                path = run / "preds" / split / side.cache_file
                if not path.is_file():
                    raise FormatError(f"member {m.label}: {path} is missing; write it with `python inference.py "
                                      f"--ckpt {run / m.checkpoint} --split {split} --save-probs`")
                runs.append(side.read_cache(path, cfg, f"member {m.label}"))
            out.append(runs)
        return out
    from engine.device import pick_device
    from engine.predictor import Predictor, load_model
    from tasks.tta import views_from_config

    dev = pick_device(device)
    out = []
    for m, indices in zip(members, chosen):
        runs = []
        for ckpt, cfg in ((m.checkpoints[r], m.cfgs[r]) for r in indices):
            predictor = Predictor(load_model(ckpt, dev, cfg), views_from_config(ens.member_tta(cfg), enabled=tta), dev)
            runs.append(decoded(predictor.task, predictor.batches(predictor.task.samples(split))))
        out.append(runs)
    return out


def decoded(task: Any, pairs: Iterable[tuple[dict, Any]]) -> Predictions:
    """Names and decoded values of ``(batch, outputs)`` pairs through the task's writer (no CSV, no cache)."""
    writer = task.writer(None, None, views=(), workers=1)
    with writer:
        for batch, outputs in pairs:
            writer.add(batch, outputs)
    return writer.result()


def _reorder(names: Sequence[str], values: np.ndarray, order: Sequence[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    return np.asarray(values)[[index[n] for n in order]]


def member_values(member: Member, runs: Sequence[Predictions], split: str) -> Predictions:
    """One member's predictions: the mean of its runs (test), or each image from the run that held it out (val:
    ``runs`` are those of :meth:`Member.validation_runs`)."""
    if split == "test":
        names = list(runs[0][0])
        for (other, _), run in zip(runs[1:], member.run_dirs[1:]):
            if set(other) != set(names) or len(other) != len(names):
                raise FormatError(f"member {member.label}: {run} predicts other test images than {member.run_dirs[0]}")
        return names, np.mean([_reorder(n, v, names) for n, v in runs], axis=0)
    names, values, seen = [], [], {}
    for (run_names, run_values), run in zip(runs, [member.run_dirs[r] for r in member.validation_runs()]):
        for name, value in zip(run_names, run_values):
            if name in seen:
                raise ConfigError(f"member {member.label}: image {name} is in the validation fold of both "
                                  f"{seen[name]} and {run} (same fold twice?)")
            seen[name] = run
            names.append(name)
            values.append(value)
    return names, np.stack(values)


def align(members: Sequence[Member], preds: Sequence[Predictions], split: str) -> tuple[list[str], np.ndarray]:
    """Image names and the ``(M, N, ...)`` stack of the members' values for them (see the module docstring)."""
    sets = [set(n) for n, _ in preds]
    if split == "test":
        for m, have in zip(members[1:], sets[1:]):
            if have != sets[0]:
                example = sorted(have ^ sets[0])[0]
                raise FormatError(f"member {m.label}: predicts other test images than member {members[0].label} "
                                  f"(e.g. {example}); members must predict the same images")
        names = list(preds[0][0])
    else:
        common = set.intersection(*sets)
        if not common:
            raise ConfigError("the members' validation folds share no image; members trained on different folds "
                              "need all their folds ('runs: [...-f0, ...-f1, ...]') for out-of-fold predictions")
        if any(len(s) != len(common) for s in sets):
            sizes = ", ".join(f"{m.label}: {len(s)}" for m, s in zip(members, sets))
            warnings.warn(f"validation images differ between members ({sizes}); using the {len(common)} they share",
                          stacklevel=2)
        names = [n for n in preds[0][0] if n in common]
    return names, np.stack([_reorder(n, v, names) for n, v in preds]).astype(np.float64)


def member_predictions(ens: EnsembleConfig, members: Sequence[Member], split: str, *, from_cache: bool,
                       tta: bool = False, device: str = "auto") -> tuple[list[str], np.ndarray]:
    """Aligned image names and ``(M, N, ...)`` member values of ``split``."""
    per_run = run_predictions(ens, members, split, from_cache=from_cache, tta=tta, device=device)
    return align(members, [member_values(m, runs, split) for m, runs in zip(members, per_run)], split)


def channels_of(ens: EnsembleConfig, members: Sequence[Member]) -> tuple[str, ...]:
    """The channels weights may name (landmarks, classes): the members' common ones."""
    try:
        return tuple(ens.spec.ensemble_side().channels([c for m in members for c in m.cfgs]))
    except ValueError as err:
        raise ConfigError(f"ensemble {ens.run_name}: {err}") from None


def ensemble_weights(ens: EnsembleConfig, members: Sequence[Member], channels: Sequence[str]) -> np.ndarray:
    """Normalised ``(M, C)`` weights of a ``weighted`` ensemble (``(M, 1)`` when every channel has the same),
    equal ``(M, 1)`` weights for any other method."""
    labels = [m.label for m in members]
    if ens.method != "weighted":
        return normalize_weights(None, len(members))
    w = normalize_weights(weight_table(ens, channels), len(members), len(channels), members=labels,
                          channels=channels, where=f"{ens.run_name}: weights")
    return w[:, :1] if np.allclose(w, w[:, :1]) else w


def fuse_values(preds: np.ndarray, method: str, weights: np.ndarray | None = None, channel_axis: int = 0, *,
                radius: float | None = None, min_votes: int | None = None) -> np.ndarray:
    """``(M, N, ...)`` member values → ``(N, ...)`` by ``mean``, ``median``, ``weighted`` (the weighted mean;
    weights ``(M,)``, ``(M, 1)`` or ``(M, C)`` with the channel at axis ``channel_axis`` of each member's values)
    or ``hard`` (points within ``radius`` vote, :func:`ensembles.hard.vote_points`)."""
    if method == "hard":
        if radius is None:
            raise ValueError("a hard vote of points needs a radius")
        return vote_points(np.asarray(preds, np.float64), radius, min_votes)[0]
    members = list(np.asarray(preds, np.float64))
    if method == "mean":
        return weighted_mean(members)
    if method == "median":
        return weighted_median(members)
    if method == "weighted":
        return weighted_mean(members, weights, channel_axis=channel_axis)
    raise ValueError(f"unknown fusion {method!r}; valid: mean, median, weighted, hard")


def describe_weights(weights: np.ndarray, channels: Sequence[str]) -> list[float] | dict[str, list[float]]:
    """Weights for summary.json: one per member, or per channel when they differ between channels."""
    if weights.shape[1] == 1:
        return weights[:, 0].round(4).tolist()
    return {c: weights[:, k].round(4).tolist() for k, c in enumerate(channels)}


def describe(ens: EnsembleConfig, members: Sequence[Member], weights: np.ndarray, channels: Sequence[str]) -> dict:
    """The ensemble's ``ensemble`` entry in summary.json: method, members, weights (and the hard vote's rule)."""
    out: dict = {"method": ens.method, "members": [m.label for m in members],
                 "weights": describe_weights(weights, channels)}
    unit = getattr(ens.spec.ensemble_side(), "radius_unit", None)
    if ens.method == "hard":
        out["min_votes"] = resolve_min_votes(ens.min_votes, len(members))
        if unit is not None:
            out[f"radius_{unit}"] = ens.radius
    return out


def soft_fusion(ens: EnsembleConfig, members: Sequence[Member], split: str, tta: bool, device: str,
                progress: bool) -> Predictions:
    """Names and values of the ``soft`` method (see the module docstring), models on the fly.

    A member with several fold runs contributes the mean of their outputs on the test set (each run weighs
    ``1 / runs`` of the member); on the validation set it has no single model per image, an error.
    """
    from engine.device import pick_device
    from engine.predictor import Predictor, load_model
    from tasks.tta import views_from_config

    if split == "val":
        for m in members:
            m.validation_runs()
    if split == "val" and any(len(m.run_dirs) > 1 for m in members):
        raise ConfigError("soft: a member with several fold runs has no single model per validation image; "
                          "fuse validation predictions (mean/median/weighted) instead")
    dev = pick_device(device)
    entries = []  # (frame, predictor, weight)
    for m in members:
        for ckpt, cfg in zip(m.checkpoints, m.cfgs):
            predictor = Predictor(load_model(ckpt, dev, cfg), views_from_config(ens.member_tta(cfg), enabled=tta), dev)
            entries.append((predictor.task.frame, predictor, 1 / (len(members) * len(m.run_dirs))))
    first = entries[0][1]
    samples = first.task.samples(split)
    names = [s.name for s in samples]
    for _, predictor, _ in entries[1:]:
        if [s.name for s in predictor.task.samples(split)] != names:
            raise FormatError(f"{predictor.member.source}: predicts other {split} images than {first.member.source} "
                              "(different data or fold)")
    values, frame_weights = [], []
    for frame in dict.fromkeys(e[0] for e in entries):
        group = [(p, w) for f, p, w in entries if f == frame]
        total_w = sum(w for _, w in group)

        def fused(batch: dict, group=group, total_w=total_w):
            import torch

            total = None
            for predictor, w in group:
                out = predictor.forward(batch)
                if total is not None and out.shape[-2:] != total.shape[-2:] and out.ndim == 4:
                    out = torch.nn.functional.interpolate(out, size=total.shape[-2:], mode="bilinear",
                                                          align_corners=False)
                total = out * w if total is None else total + out * w
            return total / total_w

        lead = group[0][0]
        _, group_values = decoded(lead.task, ((batch, fused(batch)) for batch in lead.inputs(samples, progress)))
        values.append(group_values)
        frame_weights.append(total_w)
    return names, weighted_mean(values, frame_weights)


def predict_ensemble(ens: EnsembleConfig, *, out_csv: str | Path, split: str = "test", tta: bool = False,
                     from_cache: bool = False, device: str = "auto", workers: int | None = None,
                     progress: bool = True) -> dict:
    """Write the ensemble's submission CSV and, on the test set, its run folder; returns stats. ``workers`` is
    accepted for the common interface (values decode vectorised)."""
    side = ens.spec.ensemble_side()
    members = resolve_members(ens, need_models=not from_cache)
    channels = channels_of(ens, members)
    weights = ensemble_weights(ens, members, channels)
    t0 = time.perf_counter()
    if ens.method == "soft":
        if from_cache:
            raise ConfigError(f"{ens.run_name}: method 'soft' averages the models' outputs before decoding, the "
                              "cache holds decoded values; predict on the fly (no --from-cache) or use "
                              f"{'/'.join(m for m in ens.spec.fusion if m != 'soft')}")
        names, fused = soft_fusion(ens, members, split, tta, device, progress)
    else:
        names, preds = member_predictions(ens, members, split, from_cache=from_cache, tta=tta, device=device)
        fused = fuse_values(preds, ens.method, weights, side.channel_axis, radius=ens.radius, min_votes=ens.min_votes)
    side.write(out_csv, names, fused, members[0].cfgs[0])
    stats = timed_stats(len(names), time.perf_counter() - t0, out_csv)
    if split == "test":
        record_ensemble(ens, list(members), describe(ens, members, weights, channels), tta=tta, from_cache=from_cache,
                        images_per_s=stats["images_per_s"])
    return stats


def validation_values(ens: EnsembleConfig, members: Sequence[Member]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Validation image names, the members' out-of-fold values ``(M, N, ...)`` from their caches and the truth
    ``(N, ...)``."""
    side = ens.spec.ensemble_side()
    names, preds = member_predictions(ens, members, "val", from_cache=True)
    truth: dict = {}
    for cfg in members[0].cfgs:
        truth.update(side.truth(cfg))
    missing = [n for n in names if n not in truth]
    if missing:
        raise FormatError(f"member {members[0].label}: validation image {missing[0]} has no label in its fold")
    return names, preds, np.stack([np.asarray(truth[n], np.float64) for n in names])


def fit_ensemble(ens: EnsembleConfig, progress: bool = True) -> dict:
    """Fit member (or per-channel) weights of a ``weighted`` + ``weights: fit`` ensemble minimising the task's
    validation error on the members' caches (cross-fitted over patients); writes ``fit.json`` and the run
    folder; returns the fit record."""
    if ens.method != "weighted" or ens.weights != "fit":
        raise ConfigError(f"{ens.run_name}: nothing to fit; a {ens.task} ensemble fits member weights: give "
                          f"method: weighted and weights: fit")
    side = ens.spec.ensemble_side()
    members = resolve_members(ens, need_models=False)
    channels = channels_of(ens, members)
    names, preds, truth = validation_values(ens, members)
    per_channel = ens.fit.per_class and len(channels) > 1
    result = fit_weights(preds, truth, side.errors, groups=[side.group(n, members[0].cfgs[0]) for n in names], per_channel=per_channel,
                         folds=ens.fit.folds, grid_step=ens.fit.grid_step, max_candidates=ens.fit.max_candidates,
                         seed=ens.fit.seed)
    labels = [m.label for m in members]
    items = list(channels) if result.per_channel_cv.size == len(channels) else [side.metric]
    record = fit_to_dict(result, labels, items, metric=side.metric, weights_fitted=True, thresholds_fitted=False)
    record["weights"] = np.round(np.broadcast_to(result.weights, (len(members), len(channels))), 6).tolist()
    record["classes"] = list(channels)
    record["val"] = {k: round(side.metric_of_error(v), 6) if k in ("score", "in_sample", "before") else v
                     for k, v in record["val"].items()}
    write_json(ens.fit_path, record)
    weights = ensemble_weights(ens, members, channels)
    write_ensemble_summary(ens, list(members), describe(ens, members, weights, channels), val=record["val"])
    return record
