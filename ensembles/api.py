"""The two entry points of the ensembles, whatever the task: predict an ensemble YAML (``inference.py
--ensemble``) and fit its weights and thresholds (``tools/fit_ensemble.py``). The task's ensemble side says what
a member's prediction of an image is — per-class probability maps (:mod:`ensembles.runner`) or an array of
values (:mod:`ensembles.values`) — and so which machinery fuses it.

Both hold the claim of the ensemble's run folder (:mod:`tasks.formats.run_lock`), taken before anything is
checked: a fit writes ``fit.json`` and ``summary.json``; a test-set prediction writes ``summary.json`` (a
validation prediction writes nothing into the folder and takes no claim)."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from ensembles import runner, values
from ensembles.config import EnsembleConfig
from ensembles.fit import fit_ensemble as fit_maps_ensemble
from tasks.formats.run_lock import claim

_KINDS = {"maps": (runner.predict_ensemble, fit_maps_ensemble), "values": (values.predict_ensemble, values.fit_ensemble)}


def predict_ensemble(ens: EnsembleConfig, *, out_csv: str | Path, split: str = "test", tta: bool = False,
                     from_cache: bool = False, device: str = "auto", workers: int | None = None,
                     progress: bool = True) -> dict:
    """Write the ensemble's submission CSV (and, for the test set, its run folder); returns images, seconds,
    images/s and the CSV."""
    with claim(ens.run_dir) if split == "test" else nullcontext():
        predict, _ = _KINDS[ens.spec.ensemble_side().output]
        return predict(ens, out_csv=out_csv, split=split, tta=tta, from_cache=from_cache, device=device,
                       workers=workers, progress=progress)


def fit_ensemble(ens: EnsembleConfig, progress: bool = True) -> dict:
    """Fit what the ensemble YAML asks to fit (``fit``) on its members' validation caches; writes ``fit.json``."""
    with claim(ens.run_dir):
        _, fit = _KINDS[ens.spec.ensemble_side().output]
        return fit(ens, progress=progress)
