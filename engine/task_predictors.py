"""The predictor of each task: ``predict_run(cfg, ckpt, *, out_csv, split, tta, save_probs_dir, device, workers,
progress)`` returning ``{"images", "seconds", "images_per_s", "csv"}``, registered in
:data:`engine.predictor.PREDICTORS` by the module that defines it; importing this module imports them all."""
from __future__ import annotations

from typing import Callable

from engine import predict_boneage, predict_keypoints, predictor  # noqa: F401  (registration side effects)
from engine.predictor import PREDICTORS


def predictor_for(task: str, where: object) -> Callable[..., dict]:
    """The ``predict_run`` of ``task``; an unknown task is a ``ValueError`` naming ``where`` (the checkpoint)."""
    try:
        return PREDICTORS.get(task)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
