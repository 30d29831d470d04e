"""Albumentations pipelines built from the config's ``augment`` section (shared by every task).

Each sample is augmented with a seed derived from (run seed, epoch, index), so a resumed run sees the
same augmentations as an uninterrupted one, whatever the number of loader workers. With nothing to do
(every probability and range 0, no extra transform) there is no pipeline: items skip albumentations.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import torch
from torch.utils.data import Dataset

from tasks.cache import SampleCache
from tasks.schema import image_hw


def build_augment(aug: Any, *, keypoints: bool = False) -> A.Compose | None:
    """Training pipeline: geometry (masks and keypoints follow), then intensity; None when it has no transform."""
    ops: list = []
    if aug.hflip > 0:
        ops.append(A.HorizontalFlip(p=aug.hflip))
    if aug.vflip > 0:
        ops.append(A.VerticalFlip(p=aug.vflip))
    if aug.rotate or aug.scale or aug.shift:
        ops.append(A.Affine(rotate=(-aug.rotate, aug.rotate), scale=(1 - aug.scale, 1 + aug.scale),
                            translate_percent=(-aug.shift, aug.shift), border_mode=cv2.BORDER_CONSTANT,
                            fill=0, fill_mask=0, p=0.8))
    if aug.brightness_contrast > 0:
        ops.append(A.RandomBrightnessContrast(aug.brightness_contrast, aug.brightness_contrast, p=0.5))
    if aug.gamma > 0:
        lo, hi = int(100 * (1 - aug.gamma)), int(100 * (1 + aug.gamma))
        ops.append(A.RandomGamma(gamma_limit=(lo, hi), p=0.5))
    if aug.blur > 0:
        ops.append(A.GaussianBlur(blur_limit=(3, 5), p=aug.blur))
    if aug.noise > 0:
        ops.append(A.GaussNoise(std_range=(0.01, 0.05), p=aug.noise))
    for spec in aug.extra:
        spec = dict(spec)
        name = spec.pop("name", None)
        if not name or not hasattr(A, name):
            raise ValueError(f"augment.extra: unknown albumentations transform {name!r}")
        ops.append(getattr(A, name)(**spec))
    if not ops:
        return None
    kp = A.KeypointParams(format="xy", remove_invisible=False) if keypoints else None
    return A.Compose(ops, keypoint_params=kp, seed=0)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 100_003 + index) % (2**31 - 1)


class SeededDataset(Dataset):
    """What every task's dataset shares: its samples at ``size`` (``data.image_size``: one side, or ``(height,
    width)``; ``hw`` is always ``(height, width)``), a decode cache, and an optional augmentation pipeline that
    :meth:`reseed` seeds per (run seed, epoch, index) before each item.

    The epoch lives in shared memory: loader workers that persist across epochs hold their own copy of
    the dataset, and still see every :meth:`set_epoch` of the main process.
    """

    def __init__(self, samples: Sequence, size: int | tuple[int, int], augment: A.Compose | None = None,
                 cache: SampleCache | None = None, seed: int = 0) -> None:
        self.samples = list(samples)
        self.size = size
        self.hw = image_hw(size)
        self.augment = augment
        self.cache = cache or SampleCache(enabled=False)
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Call before the loader's iterator of the epoch is made (its workers then fetch with this epoch)."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def label_notes(self, index: int) -> list[str]:
        """Warnings about item ``index``'s labels that read fine but look wrong (the dataset integrity pass,
        ``engine.run_folder.check_dataset``, prints and counts them); none by default."""
        return []

    def reseed(self, index: int) -> None:
        """Seed the augmentation of item ``index`` for the current epoch (call only with an augmentation)."""
        self.augment.set_random_seed(sample_seed(self.seed, self.epoch, index))
