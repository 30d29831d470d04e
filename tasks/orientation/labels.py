"""Labelled orientation folders (``labels.csv``: ``img_id,label`` [``,patient``]; ``images/<img_id>[.png]``) and
their folds. Standard library, numpy and scikit-learn: the scorer and the ensemble side read through here."""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from tasks.formats.images import IMAGE_SUFFIXES

N_CLASSES = 12


@dataclass(frozen=True)
class OrientationSample:
    """One film: its id (the CSV row key), image, label 0-11 (None when unknown) and patient (its id when the
    labels file names none)."""

    name: str
    image_path: Path
    label: int | None
    patient: str


def _image(images: Path, img_id: str) -> Path:
    path = images / img_id
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        path = path.with_name(path.name + ".png")
    return path


def read_labels(path: str | os.PathLike, require: bool = True) -> list[tuple[str, int | None, str]]:
    """``(img_id, label, patient)`` rows of a labels file; with ``require`` every row needs a label 0-11.
    A missing or duplicate id, another header or a bad label is a :class:`FormatError` naming file and line."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as err:
        raise FormatError(f"{path}: cannot read the labels file ({err.strerror or err})") from None
    if not rows or [h.strip() for h in rows[0][:2]] != ["img_id", "label"]:
        raise FormatError(f"{path}: the header must start with img_id,label")
    has_patient = len(rows[0]) > 2 and rows[0][2].strip() == "patient"
    out, seen = [], set()
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        img_id = row[0].strip()
        if not img_id or "/" in img_id or "\\" in img_id or img_id in (".", ".."):
            raise FormatError(f"{path}: line {line}: img_id {img_id!r} is not a file name")
        if img_id in seen:
            raise FormatError(f"{path}: line {line}: img_id {img_id} appears twice")
        seen.add(img_id)
        text = row[1].strip() if len(row) > 1 else ""
        if not text and not require:
            label = None
        else:
            try:
                label = int(text)
            except ValueError:
                label = -1
            if not 0 <= label < N_CLASSES:
                raise FormatError(f"{path}: line {line}: label {text!r} is not a class 0-{N_CLASSES - 1}")
        patient = row[2].strip() if has_patient and len(row) > 2 and row[2].strip() else img_id
        out.append((img_id, label, patient))
    return out


def list_samples(root: str | os.PathLike, labels: str = "labels.csv", images: str = "images",
                 require_labels: bool = True) -> list[OrientationSample]:
    """The films of a folder: the rows of its labels file (each image must exist), or, for an unlabelled test
    folder without one, every image of ``images/`` (sorted)."""
    root = Path(root)
    table, image_dir = root / labels, root / images
    if not table.is_file():
        if require_labels:
            raise FormatError(f"{table}: labels file not found (expected img_id,label)")
        paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if image_dir.is_dir() else []
        if not paths:
            raise FormatError(f"{image_dir}: no images found")
        return [OrientationSample(p.stem, p, None, p.stem) for p in paths]
    samples = []
    for img_id, label, patient in read_labels(table, require_labels):
        path = _image(image_dir, img_id)
        if not path.is_file():
            raise FormatError(f"{table}: image {path} of {img_id} does not exist")
        samples.append(OrientationSample(img_id, path, label, patient))
    if not samples:
        raise FormatError(f"{table}: no rows")
    return samples


def split_folds(samples: Sequence[OrientationSample], n_folds: int, fold: int, seed: int = 0
                ) -> tuple[list[int], list[int]]:
    """Train/val indices of ``fold``: folds by patient, stratified by side where every side has enough patients."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = [s.patient for s in samples]
    n_groups = len(set(groups))
    if n_groups < 2:
        raise FormatError(f"need at least 2 patients to make a validation fold, found {n_groups}")
    n_folds = min(n_folds, n_groups)
    if not 0 <= fold < n_folds:
        raise ValueError(f"data.fold={fold} out of range for {n_folds} folds")
    sides = np.array([(s.label or 0) // 4 for s in samples])
    enough = min(len({g for g, side in zip(groups, sides) if side == k}) for k in set(sides.tolist())) >= n_folds
    splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed) if enough else GroupKFold(n_folds)
    train_idx, val_idx = list(splitter.split(np.zeros(len(samples)), sides, groups))[fold]
    return sorted(train_idx.tolist()), sorted(val_idx.tolist())


def split_samples(data, split: str) -> list[OrientationSample]:
    """The films of ``split`` of a run's ``data`` section: ``test`` (``data.test_root``), or the configured fold's
    ``val`` images of ``data.root`` and its ``train`` images plus every ``data.extra_train`` folder."""
    if split == "test":
        if not data.test_root:
            raise ValueError("data.test_root is not set: nothing to predict for --split test")
        return list_samples(data.test_root, data.labels, data.images, require_labels=False)
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; valid: test, val, train")
    pool = list_samples(data.root, data.labels, data.images)
    train_idx, val_idx = data.fold_indices(len(pool), lambda: split_folds(pool, data.n_folds, data.fold))
    if split == "val":
        return [pool[i] for i in val_idx]
    extra = [s for folder in data.extra_train for s in list_samples(folder, data.labels, data.images)]
    return [pool[i] for i in train_idx] + extra
