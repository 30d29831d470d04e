"""Which images a segmentation run trains, validates and predicts on: the hand-bone folders, folds grouped by
patient. No torch (the ensemble side reads them through here)."""
from __future__ import annotations

from tasks.formats.handbones import HandboneSample, list_samples, split_folds


def split_samples(data, split: str) -> list[HandboneSample]:
    """The images of ``split`` of a run's ``data`` section: ``test`` (``data.test_root``, unlabelled) or the
    configured fold's ``train``/``val`` images of ``data.root``."""
    if split == "test":
        if not data.test_root:
            raise ValueError("data.test_root is not set: nothing to predict for --split test")
        return list_samples(data.test_root, labels=None)
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; valid: test, val, train")
    samples = list_samples(data.root)
    train_idx, val_idx = data.fold_indices(len(samples), lambda: split_folds(samples, data.n_folds, data.fold))
    return [samples[i] for i in (train_idx if split == "train" else val_idx)]
