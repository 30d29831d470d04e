"""Ensembles of per-image values — keypoint coordinates ``(K, 2)``, bone ages ``()`` — shared by
:mod:`ensembles.keypoints` and :mod:`ensembles.boneage`.

A member's predictions of a split come from each of its runs, on the fly (the run's model under its TTA
views, :meth:`EnsembleConfig.member_tta`) or from the run's prediction cache
(``<run>/preds/<split>/<file>``, written by ``inference.py --ckpt <run>/best.pt --split <split>
--save-probs``). A member with several fold runs (``runs: [...]``) predicts the test set as the mean of
its runs and the validation set out of fold: each image from the one run whose validation fold holds it.
Members are aligned by image name: on the test set every member must predict the same images; on the
validation set the images they all have are used (a warning gives the counts when they differ).

Fitting (:func:`fit_values`) is :func:`ensembles.fit.fit_weights` on the members' validation predictions:
member (or member-per-channel) weights of the weighted mean minimising a per-image error, chosen against
the equal-weight defaults by cross-fitting over patient groups.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config import ConfigError
from ensembles.config import EnsembleConfig, weight_table
from ensembles.fit import fit_to_dict, fit_weights, write_json
from ensembles.runner import Member, write_ensemble_summary
from ensembles.weighted import normalize_weights, weighted_mean, weighted_median
from tasks.formats import FormatError

Predictions = tuple[list[str], np.ndarray]  # image names and their values (N, ...)


@dataclass(frozen=True)
class ValueSource:
    """How a task's runs give values: the cache file name, how to read one, and how a loaded model
    predicts a split (``predict(loaded_model, split, views, device) -> (names, values)``)."""

    cache_file: str
    read_cache: Callable[[Path, Member], Predictions]
    predict: Callable[..., Predictions]


def run_predictions(ens: EnsembleConfig, members: Sequence[Member], split: str, source: ValueSource, *,
                    from_cache: bool, tta: bool, device: str) -> list[list[Predictions]]:
    """Per member, per run: the run's predictions of ``split`` (from its cache, or its model on the fly)."""
    if from_cache:
        if tta:
            raise ConfigError("--tta with --from-cache: the cache holds what the members predicted (with or without "
                              "TTA); re-run the members with --tta --save-probs instead")
        out = []
        for m in members:
            runs = []
            for run in m.run_dirs:
                path = run / "preds" / split / source.cache_file
                if not path.is_file():
                    raise FormatError(f"member {m.label}: {path} is missing; write it with `python inference.py "
                                      f"--ckpt {run / m.checkpoint} --split {split} --save-probs`")
                runs.append(source.read_cache(path, m))
            out.append(runs)
        return out
    from engine.predictor import load_model
    from engine.device import pick_device
    from engine.tta import views_from_config

    dev = pick_device(device)
    out = []
    for m in members:
        runs = []
        for ckpt, cfg in zip(m.checkpoints, m.cfgs):
            loaded = load_model(ckpt, dev, cfg)
            runs.append(source.predict(loaded, split, views_from_config(ens.member_tta(cfg), enabled=tta), dev))
            del loaded
        out.append(runs)
    return out


def _reorder(names: Sequence[str], values: np.ndarray, order: Sequence[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    return np.asarray(values)[[index[n] for n in order]]


def member_values(member: Member, runs: Sequence[Predictions], split: str) -> Predictions:
    """One member's predictions: the mean of its runs (test), or each image from the run that held it out (val)."""
    if split == "test":
        names = list(runs[0][0])
        for (other, _), run in zip(runs[1:], member.run_dirs[1:]):
            if set(other) != set(names) or len(other) != len(names):
                raise FormatError(f"member {member.label}: {run} predicts other test images than {member.run_dirs[0]}")
        return names, np.mean([_reorder(n, v, names) for n, v in runs], axis=0)
    names, values, seen = [], [], {}
    for (run_names, run_values), run in zip(runs, member.run_dirs):
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


def member_predictions(ens: EnsembleConfig, members: Sequence[Member], split: str, source: ValueSource, *,
                       from_cache: bool, tta: bool = False, device: str = "auto") -> tuple[list[str], np.ndarray]:
    """Aligned image names and ``(M, N, ...)`` member values of ``split``."""
    per_run = run_predictions(ens, members, split, source, from_cache=from_cache, tta=tta, device=device)
    return align(members, [member_values(m, runs, split) for m, runs in zip(members, per_run)], split)


def ensemble_weights(ens: EnsembleConfig, members: Sequence[Member], channels: Sequence[str]) -> np.ndarray:
    """Normalised ``(M, C)`` weights of a ``weighted`` ensemble (``(M, 1)`` when every channel has the same),
    equal ``(M, 1)`` weights for any other method."""
    labels = [m.label for m in members]
    if ens.method != "weighted":
        return normalize_weights(None, len(members))
    w = normalize_weights(weight_table(ens, channels), len(members), len(channels), members=labels,
                          channels=channels, where=f"{ens.run_name}: weights")
    return w[:, :1] if np.allclose(w, w[:, :1]) else w


def fuse_values(preds: np.ndarray, method: str, weights: np.ndarray | None = None, channel_axis: int = 0) -> np.ndarray:
    """``(M, N, ...)`` member values → ``(N, ...)`` by ``mean``, ``median`` or ``weighted`` (the weighted mean;
    weights ``(M,)``, ``(M, 1)`` or ``(M, C)`` with the channel at axis ``channel_axis`` of each member's values)."""
    members = list(np.asarray(preds, np.float64))
    if method == "mean":
        return weighted_mean(members)
    if method == "median":
        return weighted_median(members)
    if method == "weighted":
        return weighted_mean(members, weights, channel_axis=channel_axis)
    raise ValueError(f"unknown fusion {method!r}; valid: mean, median, weighted")


def describe_weights(weights: np.ndarray, channels: Sequence[str]) -> list[float] | dict[str, list[float]]:
    """Weights for summary.json: one per member, or per channel when they differ between channels."""
    if weights.shape[1] == 1:
        return weights[:, 0].round(4).tolist()
    return {c: weights[:, k].round(4).tolist() for k, c in enumerate(channels)}


def timed_stats(n: int, t0: float, out_csv: str | Path) -> dict:
    seconds = time.perf_counter() - t0
    return {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / max(seconds, 1e-9), 3),
            "csv": str(out_csv)}


def fit_values(ens: EnsembleConfig, members: Sequence[Member], preds: np.ndarray, truth: np.ndarray,
               error: Callable[[np.ndarray, np.ndarray], np.ndarray], *, groups: Sequence[str],
               channels: Sequence[str], metric: str, describe: Callable[[np.ndarray], dict]) -> dict:
    """Fit the weights of a ``weighted`` + ``weights: fit`` ensemble on validation values ``preds``
    ``(M, N, ...)`` against ``truth``; write ``fit.json`` and the run folder; return the fit record.

    ``error(fused, truth)`` is ``(N,)`` or ``(N, C)`` (per channel: one weight per member per channel when
    ``fit.per_class``); the stored weights are ``(M, C)`` for :func:`ensembles.config.weight_table`.
    ``describe(weights)`` is the ensemble's ``ensemble`` entry in summary.json.
    """
    if ens.method != "weighted" or ens.weights != "fit":
        raise ConfigError(f"{ens.run_name}: nothing to fit; a {ens.task} ensemble fits member weights: give "
                          f"method: weighted and weights: fit")
    per_channel = ens.fit.per_class and len(channels) > 1
    result = fit_weights(preds, truth, error, groups=groups, per_channel=per_channel, folds=ens.fit.folds,
                         grid_step=ens.fit.grid_step, max_candidates=ens.fit.max_candidates, seed=ens.fit.seed)
    labels = [m.label for m in members]
    items = list(channels) if result.per_channel_cv.size == len(channels) else [metric]
    record = fit_to_dict(result, labels, items, metric=metric, weights_fitted=True, thresholds_fitted=False)
    weights = np.broadcast_to(result.weights, (len(members), len(channels)))
    record["weights"] = np.round(weights, 6).tolist()
    record["classes"] = list(channels)
    write_json(ens.fit_path, record)
    weights = ensemble_weights(ens, members, channels)
    write_ensemble_summary(ens, list(members), describe(weights), val=record["val"])
    return record

