"""The bone-age prediction cache: ``<run>/preds/<split>/boneage.csv`` (``id,boneage`` months), read by ensembles
and selection. Standard library and numpy only."""
from __future__ import annotations

import os

import numpy as np

from tasks.formats import FormatError
from tasks.formats.submissions import MAX_AGE_MONTHS, read_ages

CACHE_FILE = "boneage.csv"


def load_cache(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Ids and ages (months) of a run's ``boneage.csv``: the one reader of the bone-age cache. Checked as a
    submission (header ``id,boneage``, non-empty unique ids, finite numbers) and as months: every age within
    [-240, 480] (twice the oldest RSNA age; a model of 0-240 months predicts nothing beyond that, so a cache
    in days, or one that is no prediction at all, is refused). A fault is a :class:`FormatError` naming the file."""
    ids, ages = read_ages(path)
    bad = np.flatnonzero((ages < -MAX_AGE_MONTHS) | (ages > 2 * MAX_AGE_MONTHS))
    if bad.size:
        raise FormatError(f"{path}: id {ids[bad[0]]!r} has age {ages[bad[0]]:g}, outside "
                          f"[{-MAX_AGE_MONTHS:g}, {2 * MAX_AGE_MONTHS:g}] months: not a bone-age prediction in months")
    return ids, ages
