"""Where a model runs and in which precision: shared by the trainer and every predictor."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

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
