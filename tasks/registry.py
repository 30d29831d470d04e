"""Tables filled by a decorator, one per kind of per-task thing, and the task classes themselves.

``@TASKS.register("segmentation")`` on a task class, ``@PREDICTORS.register("keypoints")`` on a predictor
(``engine``), ``@ENSEMBLE_RUNNERS.register(...)`` on an ensemble runner (``ensembles``): one way to register.
The task names are the plain constant :data:`TASK_NAMES`, so importing this module (and ``tasks``,
``tasks.formats``, ``tasks.scoring``) stays free of torch: the task classes are imported by
:func:`get_task_class` on first use, through ``tasks.plugins``.
"""
from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from tasks.base import Task

TASK_NAMES: tuple[str, ...] = ("segmentation", "keypoints", "boneage")


class Registry:
    """Per-task table of callables (or classes) filled by a decorator: ``@PREDICTORS.register("keypoints")``.

    Only the names in :data:`TASK_NAMES` register; a task registers once per table. The modules that
    register are imported explicitly by a ``plugins`` module (``tasks.plugins``, ``ensembles.plugins``), as
    ``models/__init__`` imports every model family.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Callable] = {}

    def register(self, task: str) -> Callable[[Callable], Callable]:
        if task not in TASK_NAMES:
            raise ValueError(f"{self.what}: unknown task {task!r}; valid: {', '.join(TASK_NAMES)}")

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


TASKS = Registry("task class")


def get_task_class(name: str) -> type[Task]:
    """The task class registered as ``name`` (importing every task module on first use); an unknown name is a
    ValueError that lists the valid ones and the closest."""
    if name not in TASK_NAMES:
        near = difflib.get_close_matches(str(name), TASK_NAMES, n=1)
        raise ValueError(f"unknown task {name!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                         + f" (valid: {', '.join(TASK_NAMES)})")
    importlib.import_module("tasks.plugins")
    return TASKS.get(name)
