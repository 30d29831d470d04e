"""Bone-age ensembles: ``inference.py --ensemble configs/ensembles/boneage_*.yaml`` and ``tools/fit_ensemble.py``.

Methods: ``mean`` and ``median`` of the members' ages (months), ``weighted`` (the weighted mean; weights
given, or ``fit``: minimising the validation MAE, cross-fitted). Each member predicts with its own TTA
views (its run's ``inference.tta``, unless the ensemble YAML gives ``tta``), and only with ``--tta``:
flips can hurt a model trained on one hand side. ``--from-cache`` reads each run's
``preds/<split>/boneage.csv`` (``inference.py --ckpt <run>/best.pt --split <split> --save-probs``).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from engine.predict_boneage import CACHE_FILE, load_cache, predict_samples
from ensembles.config import EnsembleConfig
from ensembles.registry import ENSEMBLE_FITTERS, ENSEMBLE_RUNNERS
from ensembles.runner import Member, record_ensemble, resolve_members
from ensembles.values import (ValueSource, describe_weights, ensemble_weights, fit_values, fuse_values,
                              member_predictions, timed_stats)
from tasks.boneage import BoneAgeTask
from tasks.formats import FormatError
from tasks.formats.rsna import write_predictions

CHANNELS = ("boneage",)


def _read_cache(path: Path, member: Member) -> tuple[list[str], np.ndarray]:
    try:
        return load_cache(path)
    except FormatError as err:
        raise FormatError(f"member {member.label}: {err}") from None


def _predict(loaded, split: str, views, device) -> tuple[list[str], np.ndarray]:
    samples, ages = predict_samples(loaded, split, views, device)
    return [s.id for s in samples], ages


SOURCE = ValueSource(cache_file=CACHE_FILE, read_cache=_read_cache, predict=_predict)


def describe(ens: EnsembleConfig, members: Sequence[Member], weights: np.ndarray) -> dict:
    return {"method": ens.method, "members": [m.label for m in members],
            "weights": describe_weights(weights, CHANNELS)}


@ENSEMBLE_RUNNERS.register("boneage")
def predict_ensemble(ens: EnsembleConfig, *, out_csv: str | Path, split: str = "test", tta: bool = False,
                     from_cache: bool = False, device: str = "auto", workers: int | None = None,
                     progress: bool = True) -> dict:
    """Write the ensemble's ``id,boneage`` CSV and, on the test set, its run folder; returns stats.
    ``workers`` and ``progress`` are accepted for the common interface."""
    members = resolve_members(ens)
    weights = ensemble_weights(ens, members, CHANNELS)
    t0 = time.perf_counter()
    ids, preds = member_predictions(ens, members, split, SOURCE, from_cache=from_cache, tta=tta, device=device)
    write_predictions(out_csv, pd.DataFrame({"id": ids, "boneage": fuse_values(preds, ens.method, weights)}))
    stats = timed_stats(len(ids), t0, out_csv)
    if split == "test":
        record_ensemble(ens, members, describe(ens, members, weights), tta=tta, from_cache=from_cache,
                        images_per_s=stats["images_per_s"])
    return stats


@ENSEMBLE_FITTERS.register("boneage")
def fit_ensemble(ens: EnsembleConfig, progress: bool = True) -> dict:
    """Fit member weights minimising the validation MAE (months) on the members' ``preds/val/boneage.csv``;
    writes fit.json and the run folder; returns the fit record."""
    members = resolve_members(ens)
    ids, preds, truth = validation_ages(ens, members)
    return fit_values(ens, members, preds, truth, absolute_errors, groups=ids, channels=CHANNELS,
                      metric="mae_months", describe=lambda w: describe(ens, members, w))


def absolute_errors(fused: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Absolute error (months) of every age: the MAE before the mean."""
    return np.abs(fused - truth)


def validation_ages(ens: EnsembleConfig, members: Sequence[Member]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Validation ids, the members' out-of-fold ages ``(M, N)`` from their ``preds/val/boneage.csv`` and the
    true ages ``(N,)`` (months)."""
    ids, preds = member_predictions(ens, members, "val", SOURCE, from_cache=True)
    truth = {s.id: s.age for cfg in members[0].cfgs for s in BoneAgeTask(cfg).split()[1]}
    missing = [i for i in ids if i not in truth]
    if missing:
        raise FormatError(f"member {members[0].label}: validation id {missing[0]} is not in its validation fold")
    return ids, preds, np.array([truth[i] for i in ids], np.float64)
