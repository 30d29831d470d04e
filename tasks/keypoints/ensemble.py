"""The ensemble side of keypoints (numpy only): what ``ensembles.values`` needs to fuse, fit and select keypoint
runs and to fuse keypoint CSVs. A member's prediction of an image is its ``(K, 2)`` points in original pixels;
members fuse by the mean, median, weighted mean (per landmark) or a hard vote within a radius (px)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from tasks.formats.shs import read_submission as read_wide_submission
from tasks.formats.shs import write_coords
from tasks.keypoint_labels import write_wide
from tasks.keypoint_sets import get_set
from tasks.keypoints.cache import CACHE_FILE, load_cache
from tasks.keypoints.samples import split_samples
from tasks.metrics import radial_errors


class KeypointSide:
    output = "values"
    cache_file = CACHE_FILE
    channel_axis = 1                 # of the (N, K, 2) values: per-landmark weights
    radius_unit = "px"               # the hard vote: members within this many original pixels agree
    error_label = "MRE (px)"           # what fitting and selection minimise (the per-item error's mean)
    metric = "mre_px"

    @staticmethod
    def metric_of_error(error: float) -> float:
        """The task's metric of a mean error: the error itself (MRE, MAE)."""
        return error

    @staticmethod
    def channels(cfgs: Sequence) -> tuple[str, ...]:
        """The landmark names of the members' common set (an error names the runs when they differ)."""
        sets = {c.data.landmarks for c in cfgs}
        if len(sets) > 1:
            raise ValueError(f"members predict different landmark sets: {sorted(sets)}")
        return get_set(next(iter(sets))).names

    @staticmethod
    def read_cache(path: Path, cfg, where: str) -> tuple[list[str], np.ndarray]:
        """Names and ``(N, K, 2)`` points of a run's ``keypoints.npz``, checked against the run's landmark set."""
        try:
            names, coords, _, _ = load_cache(path, cfg.data.landmarks)
        except FormatError as err:
            raise FormatError(f"{where}: {err}") from None
        return names, coords

    @staticmethod
    def truth(cfg) -> dict[str, np.ndarray]:
        """The labelled points of the run's validation fold, by image name."""
        lmset = get_set(cfg.data.landmarks)
        return {s.name: s.coords for s in split_samples(cfg.data, lmset, "val")}

    @staticmethod
    def errors(fused: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """Radial error (px) of every point ``(N, K)``: the MRE before the mean."""
        return radial_errors(fused, truth)

    @staticmethod
    def group(name: str, cfg) -> str:
        """The patient of an image (the landmark set's rule): cross-fitting folds keep a patient together."""
        return get_set(cfg.data.landmarks).patient_of(name)

    @staticmethod
    def write(out_csv: str | os.PathLike, names: Sequence[str], values: np.ndarray, cfg) -> None:
        write_wide(out_csv, names, values, get_set(cfg.data.landmarks))

    @staticmethod
    def read_submission(path: str | os.PathLike) -> tuple[list[str], np.ndarray, tuple[str, tuple[str, ...]]]:
        """Ids, ``(N, K, 2)`` points and the layout (id column, landmark names) of a keypoint CSV."""
        id_column, names, ids, coords = read_wide_submission(path)
        return ids, coords, (id_column, tuple(names))

    @staticmethod
    def align_layout(path: str | os.PathLike, values: np.ndarray, layout: tuple, first: tuple,
                     first_path: str | os.PathLike) -> np.ndarray:
        """``values`` of a CSV whose layout is ``layout`` in the order of the ``first`` CSV's landmarks."""
        have, names = list(layout[1]), list(first[1])
        if have == names:
            return values
        if set(have) != set(names):
            missing, extra = sorted(set(names) - set(have)), sorted(set(have) - set(names))
            raise FormatError(f"{path}: landmarks differ from {first_path}'s: "
                              + "; ".join(f"{what} {', '.join(n)}" for what, n in (("missing", missing), ("extra", extra)) if n))
        return values[:, [have.index(n) for n in names]]

    @staticmethod
    def write_submission(out: str | os.PathLike, ids: Sequence[str], values: np.ndarray, layout: tuple,
                         decimals: int) -> None:
        id_column, names = layout
        write_coords(out, ids, values, names, id_column=id_column, decimals=decimals)


SIDE = KeypointSide()
