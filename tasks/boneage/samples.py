"""Which images a bone-age run trains, validates and predicts on: the RSNA CSVs' samples and age-stratified
folds. Pandas and scikit-learn, no torch (the ensemble side reads the truth through here)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from tasks.formats import FormatError
from tasks.formats.rsna import image_path, read_labels


@dataclass(frozen=True)
class BoneAgeSample:
    """One radiograph: RSNA id, image path, bone age in months (NaN when unknown) and sex."""

    id: str
    image_path: Path
    age: float
    male: bool

    @property
    def name(self) -> str:
        """The row key of the submission and the cache: the RSNA id."""
        return self.id


def _resolve(base: str | os.PathLike, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else Path(base) / p


def list_samples(csv_path: str | os.PathLike, images_dir: str | os.PathLike, require_age: bool = False) -> list[BoneAgeSample]:
    """Samples of an RSNA CSV whose images all exist (a missing one is a FormatError naming it)."""
    df = read_labels(csv_path, require_age=require_age)
    if df.empty:
        raise FormatError(f"{csv_path}: no rows")
    return [BoneAgeSample(str(r.id), image_path(images_dir, str(r.id)), float(r.boneage), bool(r.male))
            for r in df.itertuples(index=False)]


def split_folds(ages: Sequence[float], n_folds: int, fold: int, stratify: bool = True, seed: int = 0
                ) -> tuple[list[int], list[int]]:
    """Train/validation indices of ``fold``: shuffled K-fold, stratified by age quintile when possible."""
    n = len(ages)
    if n < 2:
        raise FormatError(f"need at least 2 labelled images to make a validation fold, found {n}")
    n_folds = min(n_folds, n)
    if not 0 <= fold < n_folds:
        raise ValueError(f"data.fold={fold} out of range for {n_folds} folds")
    x = np.zeros(n)
    bins = np.digitize(ages, np.quantile(ages, [0.2, 0.4, 0.6, 0.8]))
    if stratify and np.bincount(bins).min() >= n_folds:
        splits = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(x, bins))
    else:
        splits = list(KFold(n_folds, shuffle=True, random_state=seed).split(x))
    train_idx, val_idx = splits[fold]
    return sorted(train_idx.tolist()), sorted(val_idx.tolist())


def train_samples(data) -> list[BoneAgeSample]:
    """The labelled training CSV of a run's ``data`` section."""
    return list_samples(_resolve(data.root, data.train_csv), _resolve(data.root, data.train_images), require_age=True)


def test_samples(data) -> list[BoneAgeSample]:
    """The test CSV (under ``test_root``, default ``root``)."""
    base = data.test_root or data.root
    return list_samples(_resolve(base, data.test_csv), _resolve(base, data.test_images))


def fold_split(data) -> tuple[list[BoneAgeSample], list[BoneAgeSample]]:
    """The training and validation samples of the configured fold."""
    samples = train_samples(data)
    train_idx, val_idx = data.fold_indices(
        len(samples), lambda: split_folds([s.age for s in samples], data.n_folds, data.fold, data.stratify))
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx]


def split_samples(data, split: str) -> list[BoneAgeSample]:
    """The test CSV's samples, or the configured fold's ``train``/``val`` part of the training CSV."""
    if split == "test":
        return test_samples(data)
    if split in ("train", "val"):
        return fold_split(data)[0 if split == "train" else 1]
    raise ValueError(f"unknown split {split!r}; valid: test, val, train")
