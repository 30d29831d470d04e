"""The ensemble side of segmentation (numpy and OpenCV only): what ``ensembles.runner`` needs to fuse, fit and
select segmentation runs and ``ensembles.hard`` to fuse ``image_name,class,rle`` CSVs. A member's prediction
of an image is its per-class probability maps (the ``.npz`` cache, :mod:`tasks.segmentation.cache`); members
fuse class by class (soft / weighted means, thresholded, or hard votes), masks post-processed per class."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tasks.formats.handbones import CLASSES, HandboneSample, WRIST_CLASSES, list_samples, read_masks
from tasks.formats.images import image_size, read_grey
from tasks.segmentation.cache import CacheSpec, cache_path, cache_tta, load_cached
from tasks.segmentation.masks import resolve_thresholds
from tasks.segmentation.samples import split_samples

# Named groups of classes usable as keys of an ensemble's ``class_weights``.
CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    "fingers": tuple(f"finger-{i}" for i in range(1, 20)),
    "wrist": tuple(WRIST_CLASSES),
    "forearm": ("Radius", "Ulna"),
}


class SegmentationSide:
    output = "maps"
    radius_unit = None               # the hard vote counts masks, not points within a radius
    classes = CLASSES
    class_groups = CLASS_GROUPS
    metric = "dice"
    read_image = staticmethod(read_grey)
    cache_path = staticmethod(cache_path)

    @staticmethod
    def cache_tta(run_dir, split: str, cfg) -> str | None:
        """The TTA views of the run's cached ``split`` predictions (None: no readable entry, or none recorded)."""
        return cache_tta(run_dir, split, CacheSpec.of(cfg))

    @staticmethod
    def load_cached(path, where: str, cfg) -> tuple[np.ndarray, tuple[int, int]]:
        """Probabilities and original size of one checked cache entry of the run of ``cfg``."""
        entry = load_cached(path, where, CacheSpec.of(cfg))
        return entry.probs, entry.size

    @staticmethod
    def samples(cfg, split: str) -> list[HandboneSample]:
        return split_samples(cfg.data, split)

    @staticmethod
    def test_samples(root: str | os.PathLike) -> list[HandboneSample]:
        """The images of a test folder (an ensemble's own ``test_root``)."""
        return list_samples(root, labels=None)

    @staticmethod
    def thresholds(value, classes: Sequence[str] = CLASSES) -> np.ndarray:
        return resolve_thresholds(value, classes)

    @staticmethod
    def truth(sample: HandboneSample, size: tuple[int, int]) -> np.ndarray:
        """The true masks ``(C, H, W)`` of a labelled image at its original ``size``."""
        return read_masks(sample.label_path, *size)

    @staticmethod
    def group(sample: HandboneSample) -> str:
        return sample.patient

    @staticmethod
    def image_sizes(root: str | os.PathLike) -> dict[str, tuple[int, int]]:
        """``{image name: (H, W)}`` of a test folder, in its order (CSV fusion checks every RLE against it)."""
        return {s.name: image_size(s.image_path) for s in list_samples(root, labels=None)}


SIDE = SegmentationSide()
