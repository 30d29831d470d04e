"""Which module predicts a run of each task: ``predict_run(cfg, ckpt, *, out_csv, split, tta, save_probs_dir,
device, workers, progress)`` returning ``{"images", "seconds", "images_per_s", "csv"}``."""
from __future__ import annotations

import importlib
from typing import Callable

# Task → module holding its ``predict_run`` (imported on use: each pulls in its task's readers and models).
PREDICTORS = {
    "segmentation": "engine.predictor",
    "keypoints": "engine.predict_keypoints",
    "boneage": "engine.predict_boneage",
}


def predictor_for(task: str, where: object) -> Callable[..., dict]:
    """The ``predict_run`` of ``task``; an unknown task is a ``ValueError`` naming ``where`` (the checkpoint)."""
    if task not in PREDICTORS:
        raise ValueError(f"{where}: no predictor for task {task!r}")
    return importlib.import_module(PREDICTORS[task]).predict_run
