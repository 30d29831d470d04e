"""Task classes by name. Imported lazily so ``tasks`` stays light for readers-only users."""
from __future__ import annotations

import importlib

from tasks.base import Task

TASK_MODULES = {
    "segmentation": ("tasks.segmentation", "SegmentationTask"),
    "keypoints": ("tasks.keypoints", "KeypointTask"),
    "boneage": ("tasks.boneage", "BoneAgeTask"),
}


def get_task_class(name: str) -> type[Task]:
    if name not in TASK_MODULES:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASK_MODULES)}")
    module, cls = TASK_MODULES[name]
    return getattr(importlib.import_module(module), cls)
