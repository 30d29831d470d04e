"""The orientation prediction cache: ``<run>/preds/<split>/orientation.npz`` with the film names and their class
probabilities ``(N, 12)``, which ensembles average. Numpy only."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from core.atomic import atomic_write
from tasks.formats.tables import check_finite

CACHE_FILE = "orientation.npz"


def save_cache(directory: str | Path, names: Sequence[str], probs: np.ndarray) -> Path:
    path = Path(directory) / CACHE_FILE
    with atomic_write(path, "wb") as f:
        np.savez(f, names=np.asarray(names), probs=np.asarray(probs, np.float32))
    return path


def load_cache(path: str | Path, where: str = "") -> tuple[list[str], np.ndarray]:
    """Names and ``(N, 12)`` probabilities of a cache file, checked (shape, finite values)."""
    where = f"{where}: " if where else ""
    try:
        with np.load(path) as f:
            names, probs = [str(n) for n in f["names"]], np.asarray(f["probs"], np.float64)
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise FormatError(f"{where}{path} is not an orientation cache ({err})") from None
    if probs.shape != (len(names), 12):
        raise FormatError(f"{where}{path}: probabilities of shape {probs.shape} for {len(names)} films x 12 classes")
    try:
        check_finite(probs, f"{where}{path}")
    except ValueError as err:
        raise FormatError(str(err)) from None
    return names, probs
