"""The keypoint prediction cache: ``<run>/preds/<split>/keypoints.npz`` with the image names, the points
``(N, K, 2)`` in original pixels, their confidences ``(N, K)`` and the landmark set. Numpy only."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.atomic import atomic_write
from tasks.formats import FormatError
from tasks.formats.names import check_name

CACHE_FILE = "keypoints.npz"


def save_cache(directory: str | Path, names: Sequence[str], coords: np.ndarray, conf: np.ndarray, landmarks: str) -> Path:
    """Write ``keypoints.npz`` (atomic) into ``directory``."""
    path = Path(directory) / CACHE_FILE
    with atomic_write(path, "wb") as f:
        np.savez(f, names=np.asarray(names), coords=coords, confidence=conf, landmarks=np.asarray(landmarks))
    return path


def load_cache(path: str | Path, landmarks: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """Names, coordinates, confidences and landmark set of a ``keypoints.npz``: the one reader of the keypoint
    cache, checked against what it says and, given ``landmarks`` (the run's ``data.landmarks``), what its run says.

    ``names`` N unique image names; ``coords`` ``(N, K, 2)`` and ``confidence`` ``(N, K)`` finite floats, K the
    size of its landmark set; that set a registered one (the run's, when given). A fault is a
    :class:`FormatError` naming the file.
    """
    from tasks.keypoint_sets import get_set  # the label readers behind the sets: only when a cache is read

    try:
        with np.load(path) as f:
            names, coords, conf, lmset = f["names"], f["coords"], f["confidence"], str(f["landmarks"][()])
    except FileNotFoundError:
        raise FormatError(f"{path}: keypoint cache is missing") from None
    except Exception as err:  # numpy and zipfile raise many types for a damaged archive
        detail = str(err) if type(err) is ValueError else f"{type(err).__name__}: {err}"
        raise FormatError(f"{path}: not a keypoint prediction cache ({detail})") from None
    if landmarks is not None and lmset != landmarks:
        raise FormatError(f"{path}: holds landmark set {lmset}, the run predicts {landmarks}")
    try:
        k = len(get_set(lmset).names)
    except ValueError as err:
        raise FormatError(f"{path}: {err}") from None
    n = len(names)
    if names.ndim != 1 or names.dtype.kind != "U" or len(set(names.tolist())) != n:
        raise FormatError(f"{path}: names must be {n} distinct image names (got {names.dtype} of shape {names.shape})")
    for key, value, shape in (("coords", coords, (n, k, 2)), ("confidence", conf, (n, k))):
        if value.shape != shape or value.dtype.kind != "f":
            raise FormatError(f"{path}: {key} of shape {value.shape} ({value.dtype}), expected {shape} floats: "
                              f"{n} images x {k} landmarks of {lmset}")
        if not np.isfinite(value).all():
            raise FormatError(f"{path}: {key} holds {int((~np.isfinite(value)).sum())} NaN/infinite values")
    return [check_name(str(v), f"{path}: names") for v in names], coords, conf, lmset
