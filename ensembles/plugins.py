"""Every module that registers a predictor or an ensemble runner / fitter, imported here explicitly (as
``models/__init__`` imports every model family), and the lookups the commands use."""
from __future__ import annotations

from typing import Callable

from ensembles import boneage, fit, keypoints, runner  # noqa: F401  (registration side effects)
from ensembles.registry import ENSEMBLE_FITTERS, ENSEMBLE_RUNNERS


def ensemble_runner(task: str) -> Callable:
    """``predict_ensemble`` of ``task`` (see :mod:`ensembles.registry`)."""
    return ENSEMBLE_RUNNERS.get(task)


def ensemble_fitter(task: str) -> Callable:
    """``fit_ensemble`` of ``task`` (see :mod:`ensembles.registry`)."""
    return ENSEMBLE_FITTERS.get(task)
