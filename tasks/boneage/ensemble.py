"""The ensemble side of bone age (numpy only): what ``ensembles.values`` needs to fuse, fit and select bone-age
runs and to fuse ``id,boneage`` CSVs. A member's prediction of an image is its age in months; members fuse by
the mean, median or weighted mean."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.boneage.cache import CACHE_FILE, load_cache
from tasks.formats import FormatError
from tasks.formats.submissions import read_ages, write_ages


class BoneAgeSide:
    output = "values"
    cache_file = CACHE_FILE
    channel_axis = 0
    radius_unit = None               # no hard vote
    error_label = "MAE (months)"           # what fitting and selection minimise (the per-item error's mean)
    metric = "mae_months"

    @staticmethod
    def metric_of_error(error: float) -> float:
        """The task's metric of a mean error: the error itself (MRE, MAE)."""
        return error

    @staticmethod
    def channels(cfgs: Sequence) -> tuple[str, ...]:
        return ("boneage",)

    @staticmethod
    def read_cache(path: Path, cfg, where: str) -> tuple[list[str], np.ndarray]:
        """Ids and ages of a run's checked ``boneage.csv`` (:func:`tasks.boneage.cache.load_cache`)."""
        try:
            return load_cache(path)
        except FormatError as err:
            raise FormatError(f"{where}: {err}") from None

    @staticmethod
    def truth(cfg) -> dict[str, float]:
        """The ages (months) of the run's validation fold, by id."""
        from tasks.boneage.samples import split_samples  # pandas, scikit-learn: not for fusing CSVs

        return {s.id: s.age for s in split_samples(cfg.data, "val")}

    @staticmethod
    def errors(fused: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """Absolute error (months) of every age: the MAE before the mean."""
        return np.abs(fused - truth)

    @staticmethod
    def group(name: str, cfg) -> str:
        """The patient of an image: an RSNA id is one patient."""
        return name

    @staticmethod
    def write(out_csv: str | os.PathLike, names: Sequence[str], values: np.ndarray, cfg) -> None:
        write_ages(out_csv, names, values)

    @staticmethod
    def read_submission(path: str | os.PathLike) -> tuple[list[str], np.ndarray, tuple]:
        ids, ages = read_ages(path)
        return ids, ages, ()

    @staticmethod
    def align_layout(path: str | os.PathLike, values: np.ndarray, layout: tuple, first: tuple,
                     first_path: str | os.PathLike) -> np.ndarray:
        return values

    @staticmethod
    def write_submission(out: str | os.PathLike, ids: Sequence[str], values: np.ndarray, layout: tuple,
                         decimals: int) -> None:
        write_ages(out, ids, values, decimals=decimals)


SIDE = BoneAgeSide()
