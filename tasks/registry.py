"""Task classes by name. Imported lazily so ``tasks`` stays light for readers-only users."""
from __future__ import annotations

import importlib
from typing import Callable

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


class Registry:
    """Per-task table of callables filled by a decorator: ``@PREDICTORS.register("keypoints")``.

    The predictors (``engine``) and the ensemble runners and fitters (``ensembles``) register this way;
    ``ensembles.plugins`` imports every module that registers, as ``models/__init__`` does for models.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Callable] = {}

    def register(self, task: str) -> Callable[[Callable], Callable]:
        if task not in TASK_MODULES:
            raise ValueError(f"{self.what}: unknown task {task!r}; valid: {', '.join(TASK_MODULES)}")

        def wrap(fn: Callable) -> Callable:
            if task in self._entries:
                raise ValueError(f"{self.what} for task {task!r} registered twice")
            self._entries[task] = fn
            return fn

        return wrap

    def get(self, task: str) -> Callable:
        if task not in self._entries:
            raise ValueError(f"no {self.what} for task {task!r} (have: {', '.join(sorted(self._entries)) or 'none'})")
        return self._entries[task]

    def tasks(self) -> list[str]:
        return sorted(self._entries)
