"""Where a model runs and in which precision: shared by the trainer and every predictor."""
from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: the local rank's GPU when there is one, else the CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: full precision; AMP runs on CUDA only)."""
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if setting == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """The one precision context of the harness: ``torch.autocast`` in ``dtype`` on ``device`` (from
    :func:`amp_dtype`), or full precision (nothing) when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], AbstractContextManager] | None:
    """What a task's ``evaluate``/``predict`` takes as ``autocast``: a factory of :func:`autocast`, None in full
    precision."""
    return (lambda: autocast(device, dtype)) if dtype is not None else None
def cpu_count() -> int:
    """CPUs this process may run on (its affinity: a container's or a scheduler's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity call on this platform
        return max(1, os.cpu_count() or 1)


def post_workers(setting: int | Literal["auto"], device: torch.device) -> int:
    """Threads that upsample, threshold and encode predictions beside the forward pass (``inference.post_workers``;
    0: in the prediction loop itself).

    ``auto``: on a GPU, half the CPUs (2 to 8), since the forward pass leaves them idle; on the CPU, where the
    forward pass already uses every core, none up to 4 CPUs (a thread would only take cores from the model) and
    one above. A number is taken as given.
    """
    if setting != "auto":
        return int(setting)
    cpus = cpu_count()
    if device.type == "cpu":
        return 0 if cpus <= 4 else 1
    return max(2, min(8, cpus // 2))
