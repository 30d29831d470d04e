"""Every module that registers a predictor or an ensemble runner / fitter, imported here explicitly (as
``models/__init__`` imports every model family), and the lookups the commands use.

The lookups hand out each runner and fitter wrapped in the claim of the ensemble's run folder
(:mod:`tasks.formats.run_lock`), taken before the runner or fitter checks anything: a fitter writes
``fit.json`` and ``summary.json``; a runner writes ``summary.json`` after a test-set prediction (a
validation prediction writes nothing into the folder and takes no claim).
"""
from __future__ import annotations

from functools import wraps
from typing import Callable

from ensembles import boneage, fit, keypoints, runner  # noqa: F401  (registration side effects)
from ensembles.registry import ENSEMBLE_FITTERS, ENSEMBLE_RUNNERS
from tasks.formats.run_lock import claim


def ensemble_runner(task: str) -> Callable:
    """``predict_ensemble`` of ``task`` (see :mod:`ensembles.registry`), under the ensemble folder's claim."""
    run = ENSEMBLE_RUNNERS.get(task)

    @wraps(run)
    def claimed(ens, *, split: str = "test", **kwargs) -> dict:
        if split != "test":
            return run(ens, split=split, **kwargs)
        with claim(ens.run_dir):
            return run(ens, split=split, **kwargs)

    return claimed


def ensemble_fitter(task: str) -> Callable:
    """``fit_ensemble`` of ``task`` (see :mod:`ensembles.registry`), under the ensemble folder's claim."""
    fit_one = ENSEMBLE_FITTERS.get(task)

    @wraps(fit_one)
    def claimed(ens, *args, **kwargs) -> dict:
        with claim(ens.run_dir):
            return fit_one(ens, *args, **kwargs)

    return claimed
