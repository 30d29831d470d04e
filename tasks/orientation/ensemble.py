"""The ensemble side of orientation (numpy only): what ``ensembles.values`` needs to fuse, fit and select
orientation runs and to fuse ``img_id,label`` CSVs. A member's prediction of a film is its 12 class
probabilities; members fuse by their mean, median or weighted mean, and the most probable class is written.
A submission CSV holds only labels: fused as one-hot probabilities, its mean is a majority vote."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.orientation import CLASS_NAMES
from tasks.orientation.cache import CACHE_FILE, load_cache
from tasks.orientation.labels import split_samples
from tasks.orientation.scoring import read_submission as read_label_submission
from tasks.orientation.scoring import write_labels


class OrientationSide:
    output = "values"
    cache_file = CACHE_FILE
    channel_axis = 1                 # of the (N, 12) values: per-class weights
    radius_unit = None
    metric = "accuracy"
    error_label = "error rate"

    @staticmethod
    def metric_of_error(error: float) -> float:
        """Accuracy from the error rate."""
        return 1.0 - error

    @staticmethod
    def channels(cfgs: Sequence) -> tuple[str, ...]:
        return CLASS_NAMES

    @staticmethod
    def read_cache(path: Path, cfg, where: str) -> tuple[list[str], np.ndarray]:
        return load_cache(path, where)

    @staticmethod
    def truth(cfg) -> dict[str, int]:
        """The labels of the run's validation fold, by film."""
        return {s.name: s.label for s in split_samples(cfg.data, "val")}

    @staticmethod
    def errors(fused: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """1 for every film whose most probable class is wrong: the error rate before the mean."""
        return (np.asarray(fused).argmax(-1) != np.asarray(truth).astype(int)).astype(np.float64)

    @staticmethod
    def group(name: str, cfg) -> str:
        """A film is its own cross-fitting group (its patient is in its labels file, not its name)."""
        return name

    @staticmethod
    def write(out_csv: str | os.PathLike, names: Sequence[str], values: np.ndarray, cfg) -> None:
        write_labels(out_csv, names, np.asarray(values).argmax(-1))

    @staticmethod
    def read_submission(path: str | os.PathLike) -> tuple[list[str], np.ndarray, tuple]:
        ids, labels = read_label_submission(path)
        return ids, np.eye(len(CLASS_NAMES))[labels], ()

    @staticmethod
    def align_layout(path: str | os.PathLike, values: np.ndarray, layout: tuple, first: tuple,
                     first_path: str | os.PathLike) -> np.ndarray:
        return values

    @staticmethod
    def write_submission(out: str | os.PathLike, ids: Sequence[str], values: np.ndarray, layout: tuple,
                         decimals: int) -> None:
        write_labels(out, ids, np.asarray(values).argmax(-1))


SIDE = OrientationSide()
