"""Which images a keypoint run trains, validates and predicts on: the label file's samples, folds grouped by the
landmark set's patient rule. Numpy only (the ensemble side reads the truth through here)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tasks.formats.folds import group_folds
from tasks.keypoint_labels import KeypointSample, list_keypoint_samples
from tasks.keypoint_sets import LandmarkSet


def split_folds(samples: Sequence[KeypointSample], n_folds: int, fold: int, lmset: LandmarkSet
                ) -> tuple[list[int], list[int]]:
    """Train/validation indices of ``fold``, grouped by patient (``lmset.patient_of``: the two sides of an
    SHS_NET film, the views of one AASCE patient stay on one side)."""
    return group_folds([lmset.patient_of(s.name) for s in samples], n_folds, fold, "images (groups)")


def split_samples(data, lmset: LandmarkSet, split: str) -> list[KeypointSample]:
    """The images of ``split`` of a run's ``data`` section: the configured fold's ``train``/``val`` part of
    ``root``, or ``test`` (``test_root``, else the ``test`` rows of ``root``'s split file)."""
    kw = dict(labels=data.labels, label_format=data.label_format, images=data.images, spacing=data.spacing,
              split_file=data.split_file)
    if split == "test":
        if data.test_root:
            return list_keypoint_samples(data.test_root, lmset, split=None, require_labels=False, **kw)
        if not (data.split_file and (Path(data.root) / data.split_file).is_file()):
            raise ValueError(f"data.test_root is not set and {Path(data.root) / str(data.split_file)} does not exist: "
                             "no test images")
        return list_keypoint_samples(data.root, lmset, split="test", require_labels=False, **kw)
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; valid: test, val, train")
    pool = list_keypoint_samples(data.root, lmset, split="train", **kw)
    train_idx, val_idx = data.fold_indices(len(pool), lambda: split_folds(pool, data.n_folds, data.fold, lmset))
    return [pool[i] for i in (train_idx if split == "train" else val_idx)]
