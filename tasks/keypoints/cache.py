"""The keypoint prediction cache: ``<run>/preds/<split>/keypoints.npz`` with the image names, the points
``(N, K, 2)`` in original pixels, their confidences ``(N, K)`` and the landmark set. Numpy only."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.atomic import atomic_write

CACHE_FILE = "keypoints.npz"


def save_cache(directory: str | Path, names: Sequence[str], coords: np.ndarray, conf: np.ndarray, landmarks: str) -> Path:
    """Write ``keypoints.npz`` (atomic) into ``directory``."""
    path = Path(directory) / CACHE_FILE
    with atomic_write(path, "wb") as f:
        np.savez(f, names=np.asarray(names), coords=coords, confidence=conf, landmarks=np.asarray(landmarks))
    return path


def load_cache(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """Names, coordinates, confidences and landmark set of a ``keypoints.npz``."""
    with np.load(path) as f:
        return [str(n) for n in f["names"]], f["coords"], f["confidence"], str(f["landmarks"])
