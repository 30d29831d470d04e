"""Tasks: one package per task (its spec in ``__init__``, its torch side in ``task.py``), the readers of the
competition formats (``tasks.formats``) and what the tasks share (config schema, augmentation, caches,
metrics, TTA views). ``tasks`` knows nothing of ``models``; the engine joins the two.

Importing this package registers every task: each subpackage whose ``__init__`` defines ``SPEC`` (a
:class:`tasks.spec.TaskSpec`) is a task, found here without a list to edit (a new task is a new package);
:mod:`tasks.spec` imports none of them back.
"""
import importlib
import pkgutil

from tasks.spec import TaskSpec, register

for _info in pkgutil.iter_modules(__path__):
    if _info.ispkg:
        _spec = getattr(importlib.import_module(f"{__name__}.{_info.name}"), "SPEC", None)
        if isinstance(_spec, TaskSpec):
            register(_spec)
