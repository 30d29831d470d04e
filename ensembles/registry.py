"""Per-task ensemble runners and fitters, registered by the module that implements them.

``@ENSEMBLE_RUNNERS.register(task)`` on ``predict_ensemble(ens, *, out_csv, split, tta, from_cache, device,
workers, progress) -> {"images", "seconds", "images_per_s", "csv"}`` (writes the CSV and the ensemble's run
folder); ``@ENSEMBLE_FITTERS.register(task)`` on ``fit_ensemble(ens, progress) -> fit record`` (writes
``fit.json`` and the run folder). :mod:`ensembles.plugins` imports every registering module.
"""
from __future__ import annotations

from tasks.registry import Registry

ENSEMBLE_RUNNERS = Registry("ensemble runner")
ENSEMBLE_FITTERS = Registry("ensemble fitter")
