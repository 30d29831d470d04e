"""Every module that registers a task class (``@TASKS.register``), imported here explicitly; imported by
``tasks.registry.get_task_class`` on first use, so ``tasks.registry`` itself stays free of torch."""
from __future__ import annotations

from tasks import boneage, keypoints, segmentation  # noqa: F401  (registration side effects)
